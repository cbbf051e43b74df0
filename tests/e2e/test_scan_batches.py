"""Courier scans from Kafka are applied a batch per transaction. A scan whose handling fails must fail
alone: the rest of its batch is applied, and it goes to the dead-letter topic with the reason (nothing is
lost, nothing skipped). COI tracking runs in this process here, on the real broker and SQLite, so that
one scan's handling can be made to fail."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cgt_contracts.events import CourierScanData, CourierScanSubmitted, ScanType
from sqlmodel import Session, select

from deploy.stack import DEV_TOKENS_FILE
from services.coi_tracking import commands
from services.coi_tracking.models import ScanRecord
from services.common.db import make_engine
from services.common.topics import COURIER_SCANS, dlq, ensure_topics
from tests.integration.test_write_paths import planned_shipments
from tests.support.infra import kafka_broker

pytestmark = pytest.mark.e2e
POISON = "poison lane"


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


async def eventually(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await asyncio.to_thread(condition):
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not met in time")


async def test_a_scan_that_fails_is_dead_lettered_and_the_rest_of_its_batch_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_record_scan = commands.record_scan

    def record_scan(session: Session, shipment: Any, scan_input: commands.ScanInput, *args: Any) -> Any:
        if scan_input.location == POISON:
            raise RuntimeError("injected failure")
        return real_record_scan(session, shipment, scan_input, *args)

    monkeypatch.setattr(commands, "record_scan", record_scan)
    database_url = f"sqlite:///{tmp_path / 'tracking.db'}"
    # The module builds its app from the environment when imported.
    monkeypatch.setenv("CGT_API_TOKENS_FILE", str(DEV_TOKENS_FILE))
    monkeypatch.setenv("DATABASE_URL", database_url)
    from services.coi_tracking.app import TrackingSettings, create_app

    broker_context = kafka_broker(tmp_path / "kafka")
    bootstrap = await asyncio.to_thread(broker_context.__enter__)
    try:
        await ensure_topics(bootstrap)
        app = create_app(
            TrackingSettings(
                database_url=database_url,
                kafka_bootstrap_servers=bootstrap,
                cgt_api_tokens_file=DEV_TOKENS_FILE,
                log_level="WARNING",
            )
        )
        engine = make_engine(database_url)
        async with app.router.lifespan_context(app):  # creates the tables
            shipment = planned_shipments(engine, 1)[0]
            locations = ["first lane", POISON, "third lane"]
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
            await producer.start()
            try:
                batch = producer.create_batch()  # one record batch: the consumer gets them together
                for location in locations:
                    event = scan(shipment.id, shipment.coi, location)
                    assert batch.append(
                        key=shipment.coi.encode(), value=event.model_dump_json().encode(), timestamp=None
                    )
                partitions = sorted(await producer.partitions_for(COURIER_SCANS))
                await (await producer.send_batch(batch, COURIER_SCANS, partition=partitions[0]))
            finally:
                await producer.stop()

            def applied() -> list[str]:
                with Session(engine) as session:
                    rows = session.exec(
                        select(ScanRecord.location).where(ScanRecord.shipment_id == shipment.id)
                    )
                    found = sorted(rows)
                return found if len(found) == 2 else []

            assert await eventually(applied) == ["first lane", "third lane"]
            dead = AIOKafkaConsumer(
                dlq(COURIER_SCANS),
                bootstrap_servers=bootstrap,
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
            assert headers["dlq-source-topic"] == COURIER_SCANS
        engine.dispose()
    finally:
        await asyncio.to_thread(broker_context.__exit__, None, None, None)
