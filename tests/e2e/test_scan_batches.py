"""Courier scans from Kafka are applied a batch per transaction, one batch at a time while the next is
fetched. A scan whose handling keeps failing must fail alone: the rest of its batch is applied, and it
goes to the dead-letter topic with the reason after the consumers' bounded retries. A graceful shutdown in
the middle of a stream finishes the batch being applied before the outbox relay stops, and a restart goes
on from there: nothing lost, nothing applied twice. COI tracking runs in this
process here, on the real broker and SQLite, so that one scan's handling can be made to fail and the
service can be stopped and started again."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cgt_contracts.events import CourierScanData, CourierScanSubmitted, ScanType
from sqlmodel import Session, col, func, select

from deploy.bench import scan_payloads
from deploy.stack import DEV_TOKENS_FILE, KafkaAccounts, courier_signature
from services.coi_tracking import commands
from services.coi_tracking.ledger import verify_shipment_ledger
from services.coi_tracking.models import ScanRecord, Shipment
from services.common.db import make_engine
from services.common.outbox import OutboxMessage, OutboxRelay
from services.common.topics import COURIER_SCANS, dlq, ensure_topics
from services.common.unit_of_work import session_factory
from tests.support.infra import kafka_broker, service_kafka_settings, wait_committed
from tests.support.shipments import planned_shipments

pytestmark = pytest.mark.e2e
POISON = "poison lane"
GATE = "gate lane"


def scan(shipment_id: uuid.UUID, coi: str, location: str) -> CourierScanSubmitted:
    return CourierScanSubmitted(
        source="courier/cryo-express",
        subject=coi,
        correlationid=f"batch-{location}",
        data=CourierScanData(
            shipment_id=shipment_id,
            scan_type=ScanType.CHECKPOINT,
            bag_cois=[coi],
            location=location,
            device_time=datetime.now(UTC),
            temperature_celsius=-181.0,
            courier_id="courier-ben",
            courier_company="CRYO-EXPRESS",
        ),
    )


def tracking_app(database_url: str, broker: KafkaAccounts) -> Any:
    from services.coi_tracking.app import TrackingSettings, create_app

    return create_app(
        TrackingSettings.model_validate(
            {
                "database_url": database_url,
                **service_kafka_settings(broker.access("coi-tracking")),
                "cgt_api_tokens_file": DEV_TOKENS_FILE,
                "log_level": "WARNING",
            }
        )
    )


@pytest.fixture
async def tracking_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, KafkaAccounts]]:
    """A real broker with the project's topics and a SQLite URL for COI tracking: (database URL, broker)."""
    database_url = f"sqlite:///{tmp_path / 'tracking.db'}"
    # The module builds its app from the environment when imported.
    monkeypatch.setenv("CGT_API_TOKENS_FILE", str(DEV_TOKENS_FILE))
    monkeypatch.setenv("DATABASE_URL", database_url)
    broker_context = kafka_broker(tmp_path / "kafka")
    broker = await asyncio.to_thread(broker_context.__enter__)
    try:
        await ensure_topics(broker.access())
        yield database_url, broker
    finally:
        await asyncio.to_thread(broker_context.__exit__, None, None, None)


def before_scans_at(monkeypatch: pytest.MonkeyPatch, location: str, action: Callable[[], None]) -> None:
    """Run `action` in the database thread before each scan at `location` is recorded."""
    real_record_scan = commands.record_scan

    def record_scan(session: Session, shipment: Any, scan_input: commands.ScanInput, *args: Any) -> Any:
        if scan_input.location == location:
            action()
        return real_record_scan(session, shipment, scan_input, *args)

    monkeypatch.setattr(commands, "record_scan", record_scan)


async def eventually(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await asyncio.to_thread(condition):
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not met in time")


async def test_a_scan_that_fails_is_dead_lettered_and_the_rest_of_its_batch_applied(
    tracking_env: tuple[str, KafkaAccounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail() -> None:
        raise RuntimeError("injected failure")

    before_scans_at(monkeypatch, POISON, fail)
    database_url, broker = tracking_env
    app = tracking_app(database_url, broker)
    engine = make_engine(database_url)
    async with app.router.lifespan_context(app):  # creates the tables
        shipment = planned_shipments(engine, 1)[0]
        locations = ["first lane", POISON, "third lane"]
        producer = AIOKafkaProducer(**broker.access().client_options(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            batch = producer.create_batch()  # one record batch: the consumer gets them together
            for location in locations:
                event = scan(shipment.id, shipment.coi, location)
                value = event.model_dump_json().encode()
                assert batch.append(
                    key=shipment.coi.encode(), value=value, timestamp=None, headers=courier_signature(value)
                )
            partitions = sorted(await producer.partitions_for(COURIER_SCANS))
            await (await producer.send_batch(batch, COURIER_SCANS, partition=partitions[0]))
        finally:
            await producer.stop()

        def applied() -> list[str]:
            with session_factory(engine)() as session:
                rows = session.exec(select(ScanRecord.location).where(ScanRecord.shipment_id == shipment.id))
                found = sorted(rows)
            return found if len(found) == 2 else []

        assert await eventually(applied) == ["first lane", "third lane"]
        dead = AIOKafkaConsumer(
            dlq(COURIER_SCANS),
            **broker.access().client_options(),
            auto_offset_reset="earliest",
            group_id="dlq-reader",
        )
        await dead.start()
        try:
            record = await asyncio.wait_for(dead.getone(), timeout=60)
        finally:
            await dead.stop()
        headers = {key: value.decode() for key, value in record.headers}
        assert CourierScanSubmitted.model_validate_json(record.value).data.location == POISON
        assert "injected failure" in headers["dlq-reason"]
        assert headers["dlq-reason"].startswith("failed after 5 attempts")  # bounded retries first
        assert headers["dlq-source-topic"] == COURIER_SCANS
    engine.dispose()


async def test_a_graceful_shutdown_finishes_the_batch_in_flight_and_a_restart_applies_none_twice(
    tracking_env: tuple[str, KafkaAccounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch is held inside the database thread until consuming has stopped: shutdown must wait
    for it (and relay what it caused) before the outbox relay stops. The batch fetched behind it was never
    applied, so the restart gets it again: nothing is lost or dead-lettered, every scan is stored once
    and every ledger verifies."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        if not release.is_set():
            held.set()
            release.wait(timeout=60)

    before_scans_at(monkeypatch, GATE, hold)
    database_url, broker = tracking_env
    engine = make_engine(database_url)

    def count(query: Any) -> int:
        with session_factory(engine)() as session:
            return int(session.exec(query).one())

    def stored_scans() -> int:
        return count(select(func.count()).select_from(ScanRecord))

    def gate_scan_stored() -> bool:
        return count(select(func.count()).select_from(ScanRecord).where(ScanRecord.location == GATE)) == 1

    seen_at_relay_stop: list[bool] = []
    real_relay_stop = OutboxRelay.stop

    async def relay_stop(relay: OutboxRelay) -> None:
        seen_at_relay_stop.append(await asyncio.to_thread(gate_scan_stored))
        await real_relay_stop(relay)

    monkeypatch.setattr(OutboxRelay, "stop", relay_stop)
    # Offset commits of the first run take 5 s, longer than the rest of shutdown, so that a commit shutdown
    # does not wait for is never made (checked: the test fails when the drain skips the last commit).
    real_commit = AIOKafkaConsumer.commit
    slow_commits = [True]

    async def slow_commit(consumer: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> None:
        if slow_commits[0]:
            await asyncio.sleep(5.0)
        await real_commit(consumer, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", slow_commit)
    try:
        first = tracking_app(database_url, broker)
        lifespan = first.router.lifespan_context(first)
        await lifespan.__aenter__()
        subscribers = first.state.runtime.broker.subscribers
        stopped: list[object] = []
        for subscriber in subscribers:  # release the held batch only once consuming has stopped
            real_stop = subscriber.stop

            async def stop(real_stop: Any = real_stop) -> None:
                await real_stop()
                stopped.append(real_stop)
                if len(stopped) == len(subscribers):
                    release.set()

            monkeypatch.setattr(subscriber, "stop", stop)
        shipments = planned_shipments(engine, 20)
        custodians = {str(s.id): s.custodian for s in shipments}
        gate = scan(shipments[0].id, shipments[0].coi, GATE)
        # The held scan first, then hand-offs (each a ledger entry) alternating with checkpoints.
        payloads = [(shipments[0].coi.encode(), gate.model_dump_json().encode())]
        payloads += scan_payloads([(s.coi, str(s.id)) for s in shipments], 150, custodians)
        producer = AIOKafkaProducer(**broker.access().client_options(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            sent = [
                await producer.send(COURIER_SCANS, value, key=key, headers=courier_signature(value))
                for key, value in payloads
            ]
            placed = await asyncio.gather(*sent)
            ends: dict[int, int] = {}
            for metadata in placed:
                ends[metadata.partition] = max(ends.get(metadata.partition, -1), metadata.offset)
        finally:
            await producer.stop()
        assert await asyncio.to_thread(held.wait, 60)
        await lifespan.__aexit__(None, None, None)
        assert seen_at_relay_stop == [True]  # the held batch was applied before the relay stopped
        # ... and its offsets committed before shutdown closed the consumer (no later batch was applied)
        await wait_committed(
            broker.access(),
            "coi-tracking-scans",
            COURIER_SCANS,
            placed[0].partition,
            placed[0].offset,
            timeout=5,
        )
        slow_commits[0] = False
        assert (
            count(
                select(func.count())
                .select_from(OutboxMessage)
                .where(col(OutboxMessage.published_at).is_(None))
            )
            == 0
        )

        second = tracking_app(database_url, broker)
        async with second.router.lifespan_context(second):
            await eventually(lambda: stored_scans() == len(payloads), timeout=120)
            for partition, offset in ends.items():
                await wait_committed(broker.access(), "coi-tracking-scans", COURIER_SCANS, partition, offset)
        assert stored_scans() == len(payloads)  # none twice
        dead = AIOKafkaConsumer(dlq(COURIER_SCANS), **broker.access().client_options())
        await dead.start()
        try:
            partitions = [
                TopicPartition(dlq(COURIER_SCANS), p)
                for p in dead.partitions_for_topic(dlq(COURIER_SCANS)) or ()
            ]
            assert (
                partitions and sum((await dead.end_offsets(partitions)).values()) == 0
            )  # nothing dead-lettered
        finally:
            await dead.stop()
        with session_factory(engine)() as session:
            refused = session.exec(
                select(func.count()).select_from(ScanRecord).where(col(ScanRecord.accepted).is_(False))
            ).one()
            assert refused == 0
            for shipment in shipments:
                reloaded = session.get(Shipment, shipment.id)
                assert reloaded is not None
                chain = verify_shipment_ledger(session, reloaded)
                assert chain.valid and chain.entries == 75, (shipment.id, chain)
    finally:
        release.set()
        engine.dispose()
