"""Idempotent consumers with dead letters.

Invariant: an event's effect and its id in the inbox commit in one transaction, and the Kafka offset is
committed only after that (manual acknowledgement), so redelivery after a crash or rebalance is harmless.
A message that is not a valid event, or whose handling keeps failing after bounded retries, goes to
`<topic>.dlq` with the reason, its original headers and its source position; the partition keeps flowing.
An unreachable database is not the message's fault: the consumer waits for it instead of dead-lettering.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import AnyEvent, parse_event
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import ValidationError
from sqlalchemy import String
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Field, Session, SQLModel, col, select

from services.common.asyncapi import Consumed, documented_consumer
from services.common.db import UtcDateTime, one_of, tables_of
from services.common.logging import log_context
from services.common.topics import dlq, source_refusal
from services.common.unit_of_work import AppendRow, session_factory, unit_of_work

log = structlog.get_logger()
T = TypeVar("T")
E = TypeVar("E", bound=EventEnvelope)
DATABASE_RETRY_SECONDS = 1.0
IGNORED_COMMIT_SECONDS = 1.0
MAX_BATCH = 2000
BATCH_WAIT_MS = 25
"""How long an idle batch consumer waits for records per poll (FastStream sleeps as long again after an
empty poll): the most an event waits before its batch starts."""

EventHandler = Callable[[Session, AnyEvent], None]
"""Applies one event inside the given session; must not commit (the consumer commits)."""


class ProcessedEvent(SQLModel, table=True):
    """The inbox: ids of events this service has applied, per consumer."""

    __tablename__ = "processed_event"

    consumer: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=36)
    event_type: str = Field(max_length=64)
    processed_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


INBOX_TABLE = tables_of(ProcessedEvent)[0]


class InboxRow(AppendRow, table=INBOX_TABLE):
    consumer: str
    event_id: str
    event_type: str
    processed_at: datetime


def take_fresh(session: Session, consumer: str, events: Sequence[E]) -> list[E]:
    """The events `consumer` has not applied yet, in order (an id repeated within `events` counts once),
    each entered in its inbox in the caller's transaction: applied exactly when that transaction commits."""
    event_ids = [str(event.id) for event in events]
    done = already_processed(session, consumer, event_ids)
    processed_at = utc_now()
    uow = unit_of_work(session)
    fresh: list[E] = []
    for event, event_id in zip(events, event_ids, strict=True):
        if event_id in done:
            continue
        done.add(event_id)
        fresh.append(event)
        uow.append(
            InboxRow(consumer=consumer, event_id=event_id, event_type=event.type, processed_at=processed_at)
        )
    return fresh


def event_log_context(event: EventEnvelope) -> AbstractContextManager[None]:
    """The event's correlation id, id and type on every log line written while it is handled."""
    return log_context(correlation_id=event.correlationid, event_id=str(event.id), event_type=event.type)


async def run_with_retries(work: Callable[[], T], max_attempts: int) -> T:
    """Run `work` on a thread until it succeeds. An unreachable database is not the work's fault: it is
    waited out, uncounted (good events are not dead-lettered during an outage). Any other error is retried
    with backoff; after `max_attempts` failures the last error is raised (the caller dead-letters)."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(work)
        except (OperationalError, InterfaceError) as error:
            log.warning("consumer.database_unavailable", error=repr(error)[:300])
            await asyncio.sleep(DATABASE_RETRY_SECONDS)
        except Exception as error:
            attempt += 1
            log.warning("consumer.attempt_failed", attempt=attempt, error=repr(error)[:300])
            if attempt >= max_attempts:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


def already_processed(session: Session, consumer: str, event_ids: list[str]) -> set[str]:
    """Which of these events the consumer has applied."""
    query = (
        select(ProcessedEvent.event_id)
        .where(ProcessedEvent.consumer == consumer)
        .where(one_of(session, col(ProcessedEvent.event_id), event_ids, String()))
    )
    return set(session.exec(query))


async def publish_dead_letter(broker: KafkaBroker, record: Any, reason: str, group_id: str) -> None:
    """Put a record on `<topic>.dlq` with the reason, its headers and its source position. Retried until
    the broker takes it: a dead letter must not be lost either."""
    headers = {key: value.decode(errors="replace") for key, value in (record.headers or [])}
    headers.update(
        {
            "dlq-reason": reason[:2000],
            "dlq-source-topic": record.topic,
            "dlq-source-partition": str(record.partition),
            "dlq-source-offset": str(record.offset),
            "dlq-consumer-group": group_id,
        }
    )
    delay = 0.2
    while True:
        try:
            await broker.publish(record.value, topic=dlq(record.topic), key=record.key, headers=headers)
            break
        except Exception as error:
            log.warning("consumer.dead_letter_publish_failed", error=repr(error)[:300])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    log.warning("consumer.dead_lettered", topic=record.topic, offset=record.offset, reason=reason[:300])


def describe_validation_error(error: ValidationError, limit: int = 10) -> str:
    """`field.path: message` for each problem, so a dead letter names what was wrong."""
    problems = [
        f"{'.'.join(str(part) for part in detail['loc']) or '<message>'}: {detail['msg']}"
        for detail in error.errors(include_url=False)[:limit]
    ]
    return "; ".join(problems)


def _raw_bodies(message: KafkaMessage) -> Any:
    """Batch subscribers get the records' bodies as they are; parsing is the consumer's (errors to DLQ)."""
    return message.body


BatchApply = Callable[[Session, list[E]], list[str | None]]
"""Applies a batch's fresh events, in order, inside the session (it must not commit). Returns, for each event,
None when it was applied, or why it is refused: a refused event goes to the dead-letter topic with that reason.
"""


def apply_each(handlers: dict[type[EventEnvelope], EventHandler]) -> BatchApply[AnyEvent]:
    """A batch applied event by event, each by the handler of its type."""

    def apply(session: Session, events: list[AnyEvent]) -> list[str | None]:
        for event in events:
            with event_log_context(event):
                handlers[type(event)](session, event)
                log.info("consumer.applied")
        return [None] * len(events)

    return apply


@dataclass(frozen=True)
class BatchConsumer(Generic[E]):
    """What one consumer group takes from its topics and how it applies it."""

    group_id: str
    topics: tuple[str, ...]
    event_types: tuple[type[E], ...]
    apply: BatchApply[E]
    dead_letter_other_types: bool = False
    """False: events of other types are skipped (a topic carries other services' traffic). True: they are
    refused, with the reason (a topic that should only carry these types)."""
    pipelined: bool = False
    """True: the next batch is fetched and parsed while this one is applied (a batch that waits on the
    database then no longer stalls the fetch); offsets are committed in batch order, each after its batch
    is applied. For a high-volume topic (`couriers.scans`)."""
    max_records: int = MAX_BATCH
    vouch: Callable[[Any, E], str | None] | None = None
    """Why a record's own credentials (a courier company's signature) do not vouch for its event, or None;
    a record it refuses is dead-lettered with that reason before any rule sees it."""


@dataclass(frozen=True)
class _Work(Generic[E]):
    record: Any
    event: E


def _positions(records: Sequence[Any]) -> dict[TopicPartition, int]:
    """The offsets to commit once these records are settled: one past the last of each partition."""
    positions: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        positions[partition] = max(positions.get(partition, 0), record.offset + 1)
    return positions


def apply_batch(
    sessions: sessionmaker[Session], spec: BatchConsumer[E], events: list[E]
) -> tuple[int, list[tuple[E, str]]]:
    """What a consumer does with one batch, in one transaction (one commit): the events not applied yet
    entered in the inbox and applied by `spec.apply`. Returns how many were new, and those refused, with why."""
    with sessions() as session:
        fresh = take_fresh(session, spec.group_id, events)
        outcomes = spec.apply(session, fresh) if fresh else []
        session.commit()
    refused = [(e, reason) for e, reason in zip(fresh, outcomes, strict=True) if reason is not None]
    return len(fresh), refused


class _BatchSubscriber(Generic[E]):
    """One consumer group's batches: parse, skip or dead-letter, apply in one transaction (or each event
    alone if the batch fails), dead-letter the refused and the failing, then commit the batch's offsets.

    Offsets are committed explicitly per batch (`consumer.commit(positions)`), not by FastStream's
    `message.ack()`: that commits the consumer's fetch position, which in pipelined mode is already past
    the next batch, not yet applied. A commit lost to a rebalance or shutdown only means a redelivery,
    which the inbox drops."""

    def __init__(
        self,
        spec: BatchConsumer[E],
        broker: KafkaBroker,
        sessions: sessionmaker[Session],
        max_attempts: int,
    ) -> None:
        self.spec = spec
        self.broker = broker
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.type_names = {t.model_fields["type"].default for t in spec.event_types}
        self.applying: asyncio.Task[None] | None = None
        self.committing: asyncio.Task[None] | None = None
        self.last_commit = time.monotonic()

    async def consume(self, bodies: list[bytes], message: KafkaMessage) -> None:
        records = message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
        work = await self.parse(records, bodies)
        positions, caught_up = _positions(records), len(records) < self.spec.max_records
        if not self.spec.pipelined:
            await self.settle(work, positions, message.consumer, caught_up)
            return
        # One batch is applied at a time, in order: this one starts once the previous one is done.
        if self.applying is not None:
            await asyncio.wait([self.applying])
        self.applying = asyncio.create_task(self.settle(work, positions, message.consumer, caught_up))

    def skippable(self, record: Any) -> bool:
        """An event whose CloudEvents type header names a type this consumer does not take is skipped
        without being parsed (most of a topic's traffic is for other services)."""
        if self.spec.dead_letter_other_types:
            return False
        for key, value in record.headers or ():
            if key == "ce_type":
                return value.decode(errors="replace") not in self.type_names
        return False

    async def parse(self, records: Sequence[Any], bodies: list[bytes]) -> list[_Work[E]]:
        work: list[_Work[E]] = []
        for record, body in zip(records, bodies, strict=True):
            if self.skippable(record):
                continue
            try:
                event = parse_event(body)
            except ValidationError as error:
                await self.dead_letter(record, f"invalid event: {describe_validation_error(error)}")
                continue
            if (refusal := source_refusal(record.topic, event.source)) is not None:
                await self.dead_letter(record, f"refused: {refusal}")
            elif isinstance(event, self.spec.event_types):
                if self.spec.vouch is not None and (refusal := self.spec.vouch(record, event)) is not None:
                    await self.dead_letter(record, f"refused: {refusal}")
                    continue
                work.append(_Work(record, event))
            elif self.spec.dead_letter_other_types:
                await self.dead_letter(record, f"refused: {event.type} is not taken on this topic")
        return work

    async def settle(
        self, work: list[_Work[E]], positions: dict[TopicPartition, int], consumer: Any, caught_up: bool
    ) -> None:
        if work:
            for item, reason in await self.apply_or_isolate(work):
                await self.dead_letter(item.record, reason)
        # Under load (full batches), a batch of events only for other services commits at most every second;
        # a batch that empties the backlog always commits, so that lag reads zero once caught up.
        if work or caught_up or time.monotonic() - self.last_commit > IGNORED_COMMIT_SECONDS:
            self.last_commit = time.monotonic()
            self.committing = asyncio.create_task(self.commit_after(self.committing, positions, consumer))
            if not self.spec.pipelined:
                await self.committing

    async def commit_after(
        self, previous: asyncio.Task[None] | None, positions: dict[TopicPartition, int], consumer: Any
    ) -> None:
        """Commits follow each other in batch order; in pipelined mode the round trip to the broker goes on
        while the next batch is applied."""
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await consumer.commit(positions)
        except KafkaError as error:
            log.warning("consumer.commit_failed", group=self.spec.group_id, error=repr(error)[:300])

    def apply_group(self, events: list[E]) -> tuple[int, list[tuple[E, str]]]:
        return apply_batch(self.sessions, self.spec, events)

    async def apply_or_isolate(self, work: list[_Work[E]]) -> list[tuple[_Work[E], str]]:
        """The batch in one transaction; if it fails as a whole, each event in its own transaction with
        bounded retries, so that only an event that keeps failing is dead-lettered. Returns what to
        dead-letter, with the reason."""
        by_id = {str(item.event.id): item for item in work}
        try:
            _, refused = await run_with_retries(
                partial(self.apply_group, [item.event for item in work]), max_attempts=1
            )
        except Exception as error:
            log.warning("consumer.group_failed", events=len(work), error=repr(error)[:300])
        else:
            return [(by_id[str(event.id)], f"refused: {reason}") for event, reason in refused]
        dead: list[tuple[_Work[E], str]] = []
        for item in work:
            with event_log_context(item.event):
                try:
                    applied, refused = await run_with_retries(
                        partial(self.apply_group, [item.event]), self.max_attempts
                    )
                except Exception as error:
                    dead.append((item, f"failed after {self.max_attempts} attempts: {error!r}"))
                    continue
                if not applied:
                    log.info("consumer.duplicate_ignored")
            dead.extend((item, f"refused: {reason}") for _, reason in refused)
        return dead

    async def dead_letter(self, record: Any, reason: str) -> None:
        await publish_dead_letter(self.broker, record, reason, self.spec.group_id)

    async def drain(self) -> None:
        """At shutdown, once consuming has stopped: let the batch being applied finish, and its commit."""
        if self.applying is not None:
            await asyncio.wait([self.applying])
        if self.committing is not None:
            await asyncio.wait([self.committing])


def subscribe_batches(
    broker: KafkaBroker,
    spec: BatchConsumer[E],
    *,
    engine: Engine,
    max_attempts: int = 5,
    drains: list[Callable[[], Awaitable[None]]] | None = None,
) -> None:
    """Subscribe `spec.group_id` to its topics, in batches, with manual offset commits (see
    `_BatchSubscriber`). `drains` receives what shutdown must await (a pipelined batch being applied)."""
    subscriber = _BatchSubscriber(spec, broker, session_factory(engine), max_attempts)
    broker.subscriber(
        *spec.topics,
        group_id=spec.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        batch=True,
        batch_timeout_ms=BATCH_WAIT_MS,
        max_records=spec.max_records,
        decoder=_raw_bodies,
        title=spec.group_id,
    )(documented_consumer(broker, Consumed(spec.group_id, spec.topics, spec.event_types), subscriber.consume))
    if drains is not None:
        drains.append(subscriber.drain)


def register_consumer(
    broker: KafkaBroker,
    *,
    topics: list[str],
    group_id: str,
    engine: Engine,
    handlers: dict[type[EventEnvelope], EventHandler],
    max_attempts: int = 5,
) -> None:
    """Subscribe `group_id` to `topics`, each event applied by the handler of its type; events of other
    types are skipped."""
    spec: BatchConsumer[AnyEvent] = BatchConsumer(
        group_id=group_id,
        topics=tuple(topics),
        event_types=tuple(handlers),  # type: ignore[arg-type]
        apply=apply_each(handlers),
    )
    subscribe_batches(broker, spec, engine=engine, max_attempts=max_attempts)
