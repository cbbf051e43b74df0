"""Transactional outbox: events are rows written in the same transaction as the state change.

Invariant: an event is published iff its state change committed. A relay publishes pending rows in id
order (so in order per COI key) with acks=all and the idempotent producer, then marks them published.
Failure modes: a crash after publish and before marking republishes the row (same event id): consumers
drop it through their inbox. On PostgreSQL several relays (several instances of a service) take turns:
one at a time holds the outbox's advisory lock from claim to mark, so rows still go out in id order (two
relays publishing batches side by side could put a patient's later event before an earlier one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from cgt_contracts.envelope import EventEnvelope, utc_now
from sqlalchemy import Column, Index, Integer, Text, func, text
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select
from sqlmodel import Field, Session, SQLModel

from services.common.db import UtcDateTime, is_postgres, one_of, tables_of
from services.common.kafka_access import KafkaAccess
from services.common.unit_of_work import AppendRow, session_factory, unit_of_work

log = structlog.get_logger()
_PARTITIONER = DefaultPartitioner()
RELAY_LOCK = 0x0C67_0B0C
"""PostgreSQL advisory lock (per database: each service has its own) held by the relay that is publishing."""
TAKE_TURN = sa_select(
    func.pg_try_advisory_xact_lock(RELAY_LOCK),
    func.set_config("enable_bitmapscan", "off", True),
    func.set_config("enable_seqscan", "off", True),
)
"""PostgreSQL: the relay's turn (true if this transaction holds `RELAY_LOCK`), and for this transaction
only a plain walk of the pending index. A published row leaves a dead version behind until VACUUM; a plain
index scan flags such entries in the index as it passes them, so the next claims skip them, whereas a
bitmap scan (the planner's choice once the table grows) visits every one again: claims then grew with
every row published since the last VACUUM (figures: docs/performance.md)."""


@functools.lru_cache(maxsize=65_536)
def _partition_of(key: str, partitions: tuple[int, ...]) -> int:
    """The partition the producer's own partitioner picks for a key (murmur2 in pure Python: one patient's
    many events hash once)."""
    return int(_PARTITIONER(key.encode(), list(partitions), list(partitions)))


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        # The relay's way to its work: only pending rows, in id order (a row leaves the index when it is
        # marked published). An index on `published_at` itself kept an entry for every row ever written.
        Index(
            "ix_outbox_pending",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True, max_length=36)
    event_type: str = Field(max_length=64)
    topic: str = Field(max_length=128)
    key: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    correlation_id: str = Field(max_length=128)
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    published_at: datetime | None = Field(sa_type=UtcDateTime, default=None)


OUTBOX_TABLE = tables_of(OutboxMessage)[0]


class OutboxRow(AppendRow, table=OUTBOX_TABLE):
    event_id: str
    event_type: str
    topic: str
    key: str
    payload: str
    correlation_id: str
    created_at: datetime
    published_at: datetime | None = None


def enqueue(session: Session, topic: str, event: EventEnvelope) -> None:
    """Add an event to the session's transaction; it is published only if the transaction commits.
    The session's events are written together, in the order they were enqueued, when it commits."""
    unit_of_work(session).append(
        OutboxRow(
            event_id=str(event.id),
            event_type=event.type,
            topic=topic,
            key=event.subject,
            payload=event.model_dump_json(),
            correlation_id=event.correlationid,
            created_at=utc_now(),
        )
    )


def pending_rows(limit: int) -> Select[tuple[int, str, str, str, str, str]]:
    """The first `limit` pending rows in id order, as the relay claims them (through `ix_outbox_pending`)."""
    columns = OUTBOX_TABLE.c
    return (
        sa_select(
            columns.id,
            columns.topic,
            columns.key,
            columns.payload,
            columns.event_type,
            columns.correlation_id,
        )
        .where(columns.published_at.is_(None))
        .order_by(columns.id)
        .limit(limit)
    )


@dataclass(frozen=True)
class PendingMessage:
    id: int
    topic: str
    key: str
    payload: str
    event_type: str
    correlation_id: str


class OutboxRelay:
    """Publishes committed outbox rows. Woken at once after a commit, and polls as a fallback."""

    def __init__(
        self,
        engine: Engine,
        kafka: KafkaAccess,
        *,
        client_id: str = "outbox-relay",
        poll_seconds: float = 0.5,
        batch: int = 4000,
    ):
        self._engine = engine
        self._kafka = kafka
        self._client_id = f"{client_id}-outbox"
        self._producer: AIOKafkaProducer | None = None
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-relay")

    def notify(self) -> None:
        """Wake the relay, from the event loop's thread or any other. The service's session factory calls
        it after each commit that wrote outbox rows (`unit_of_work.wake_after_commit`)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def connect(self) -> None:
        """Start the relay's producer (its own, so publishing does not go through a framework per row)."""
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self._kafka.client_options(),
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                max_batch_size=256 * 1024,  # a relay batch of rows goes out in few, large produce requests
            )
            await producer.start()
            self._producer = producer

    async def start(self) -> None:
        await self.connect()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Publish what is pending, then stop (graceful shutdown drains the outbox once more)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._loop = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a notice that arrives while publishing is not lost.
            self._wake.clear()
            try:
                while await self.publish_pending() == self._batch:
                    pass
            except Exception:
                log.exception("outbox.publish_failed")
                await asyncio.sleep(self._poll_seconds)
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_seconds)

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows in id order; returns how many were published.

        The database work runs on the relay's own thread (the event loop never waits on the database);
        on PostgreSQL the relay holds the outbox's advisory lock from claim to mark."""
        loop = asyncio.get_running_loop()
        session = session_factory(self._engine)()
        try:
            rows = await loop.run_in_executor(self._db_thread, self._claim, session)
            if not rows:
                return 0
            if self._producer is None:
                raise RuntimeError("the relay is not connected: call connect() or start() first")
            producer = self._producer
            pending = await self._send_in_batches(producer, rows)
            await asyncio.gather(*pending)
            await loop.run_in_executor(
                self._db_thread, self._mark_published, session, [row.id for row in rows]
            )
            log.debug("outbox.published", count=len(rows))
            return len(rows)
        finally:
            await loop.run_in_executor(self._db_thread, session.close)

    @staticmethod
    async def _send_in_batches(
        producer: AIOKafkaProducer, rows: list[PendingMessage]
    ) -> list[asyncio.Future[Any]]:
        """Hand rows to the producer as record batches, one partition at a time, in id order within each
        partition (the key's partition, as the producer's own partitioner picks it). Appending to a batch
        costs far less than a `send()` per row."""
        partitions_of: dict[str, tuple[int, ...]] = {}
        per_partition: dict[tuple[str, int], list[PendingMessage]] = {}
        for row in rows:
            if row.topic not in partitions_of:
                partitions_of[row.topic] = tuple(sorted(await producer.partitions_for(row.topic)))
            partition = _partition_of(row.key, partitions_of[row.topic])
            per_partition.setdefault((row.topic, partition), []).append(row)
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), partition_rows in per_partition.items():
            batch = producer.create_batch()
            for row in partition_rows:
                record = {
                    "key": row.key.encode(),
                    "value": row.payload.encode(),
                    "timestamp": None,
                    "headers": [
                        ("content-type", b"application/json"),
                        ("ce_type", row.event_type.encode()),
                        ("correlation_id", row.correlation_id.encode()),
                    ],
                }
                if batch.append(**record) is None:  # full: send it, start the next
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(**record) is None:
                        raise ValueError(f"outbox row {row.id} is larger than a record batch")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    def _claim(self, session: Session) -> list[PendingMessage]:
        """The next pending rows, in id order; none while another relay publishes (PostgreSQL: it holds
        the advisory lock until its transaction ends). Only the relay holding the lock touches pending
        rows, so they need no row locks of their own."""
        if is_postgres(self._engine) and not session.execute(TAKE_TURN).scalar():
            return []
        return [PendingMessage(*row) for row in session.execute(pending_rows(self._batch))]

    @staticmethod
    def _mark_published(session: Session, ids: list[int]) -> None:
        chosen = one_of(session, OUTBOX_TABLE.c.id, ids, Integer())
        session.execute(sa_update(OUTBOX_TABLE).where(chosen).values(published_at=utc_now()))
        session.commit()
