"""Two scans of one shipment at the same moment (SQLite and PostgreSQL, no broker): the second waits for the
shipment while the first holds it, and is judged on what the first left — here a group of courier scans
(HTTP, Kafka) and an EPCIS capture, which finds its shipment before it locks it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cgt_contracts.events import ScanType
from sqlalchemy.engine import Engine

from services.coi_tracking import commands, epcis
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import TABLES, Shipment
from services.coi_tracking.scan_writer import ScanSubmission, apply_submissions
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from tests.support.infra import database
from tests.support.races import Contender
from tests.support.shipments import planned_shipments

COURIER = commands.Actor(subject="courier-ben", printed_name="Ben")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


def scan(shipment: Shipment, scan_type: ScanType, **extra: object) -> commands.ScanInput:
    return commands.ScanInput(
        scan_type=scan_type,
        bag_cois=(shipment.coi,),
        location="TC-BOSTON dock",
        device_time=datetime.now(UTC),
        temperature_celsius=-180.0,
        **extra,  # type: ignore[arg-type]
    )


def test_a_scan_arriving_while_a_delivery_is_recorded_is_judged_on_the_delivered_shipment(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (shipment,) = planned_shipments(engine, 1)
    captured: list[commands.CaptureResult] = []
    delay = epcis.CapturedEvent(
        event_index=0,
        event_id=f"urn:uuid:{uuid.uuid4()}",
        event_hash="ni:///sha-256;0?ver=CBV2.0",
        kind=epcis.EventKind.SCAN,
        scan_type=ScanType.DELAY,
        cois=(shipment.coi,),
        location="hub",
        event_time=datetime.now(UTC),
        temperatures=(),
        container_id=None,
        shipment_ref=str(shipment.id),
    )

    def courier_system_captures_a_delay() -> None:
        with session_factory(engine)() as session:
            captured.extend(
                commands.capture(
                    session,
                    [delay],
                    COURIER,
                    "CRYO-EXPRESS",
                    rollback_on_error=True,
                    correlation_id="epcis-delay",
                )
            )
            session.commit()

    contender = Contender(monkeypatch, commands, "locked_with_facts", courier_system_captures_a_delay)
    with session_factory(engine)() as courier_app:
        (delivered,) = apply_submissions(
            courier_app,
            [
                ScanSubmission(
                    shipment_id=shipment.id,
                    scan=scan(shipment, ScanType.DELIVERY),
                    actor=COURIER,
                    courier_company="CRYO-EXPRESS",
                    correlation_id="delivery",
                )
            ],
        )
        assert isinstance(delivered, commands.ScanOutcome) and delivered.accepted, delivered
        contender.arrive()  # the delay scan has reached the shipment the delivery holds
        courier_app.commit()
    contender.finish()

    (result,) = captured
    assert result.outcome == "applied" and result.scan is not None
    assert not result.scan.accepted, "a delay was accepted for a shipment being delivered"
    assert result.scan.refusal_reason == "a delay scan cannot follow a shipment that is delivered"
    with session_factory(engine)() as session:
        stored = session.get(Shipment, shipment.id)
        assert stored is not None and stored.status is ShipmentStatus.DELIVERED
