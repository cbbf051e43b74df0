"""Changes to one case's appointment at the same moment (SQLite and PostgreSQL, no broker) — two bookings, a
booking and a quarantine, a cancellation and a delivery: the second is judged on what the first committed,
never on what it read before waiting for the case's lock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.events import (
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentQuarantined,
    ShipmentQuarantinedData,
    SlotReasonCode,
)
from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.auth import Principal, Role
from services.common.identifiers import SEQUENCE_CAPACITY, coi_identifier
from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import api, commands, domain
from services.scheduling.domain import AppointmentState
from services.scheduling.handlers import make_handlers
from services.scheduling.models import TABLES, Appointment, Case, Site
from tests.support.infra import database
from tests.support.races import Contender

SITE = "TC-LOCK"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


def a_case_ready_to_book(engine: Engine) -> tuple[str, domain.SlotOption]:
    coi = coi_identifier("W4321", 2026, uuid.uuid4().int % SEQUENCE_CAPACITY)
    eta = datetime.now(UTC) + timedelta(days=1)
    with session_factory(engine)() as session:
        session.add(
            Site(
                id=SITE,
                timezone="UTC",
                infusions_per_day=10,
                admissions_capacity=10,
                working_weekdays="1,2,3,4,5,6,7",
            )
        )
        session.add(
            Case(
                coi=coi,
                order_id=uuid.uuid4(),
                patient_ref="ref-lock",
                therapy_code="ETA-CEL",
                treatment_center_id=SITE,
                conditioning_days=2,
                shipment_id=uuid.uuid4(),
                eta_at=eta,
            )
        )
        session.commit()
    start = domain.earliest_conditioning_day(eta, 24, "UTC")
    return coi, domain.SlotOption(start, start + timedelta(days=2))


def book(session: Session, coi: str, option: domain.SlotOption, coordinator: str) -> Appointment:
    case = session.get(Case, coi)
    assert case is not None
    return commands.book(
        session, case, option, booked_by=coordinator, default_buffer_hours=24, correlation_id=coordinator
    )


def test_a_case_booked_twice_at_once_gets_one_appointment(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    coi, option = a_case_ready_to_book(engine)
    second: dict[str, Any] = {}

    def second_coordinator() -> None:
        with session_factory(engine)() as session:
            try:
                second["appointment"] = book(session, coi, option, "coordinator-b")
                session.commit()
            except commands.Refused as refused:
                session.rollback()
                second["refused"] = refused.reasons

    contender = Contender(monkeypatch, commands, "lock_site", second_coordinator)
    with session_factory(engine)() as first:
        book(first, coi, option, "coordinator-a")  # holds the site's lock until it commits
        contender.arrive()
        first.commit()
    contender.finish()

    assert "appointment" not in second, "the case was booked twice"
    assert second["refused"] == ["this case already has an appointment: reschedule or cancel it"]
    with session_factory(engine)() as session:
        booked = session.exec(
            select(func.count()).select_from(Appointment).where(col(Appointment.coi) == coi)
        )
        assert booked.one() == 1


def test_a_booking_waits_for_a_quarantine_being_recorded_and_is_put_on_hold(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    coi, option = a_case_ready_to_book(engine)
    booking: dict[str, Appointment] = {}

    def coordinator() -> None:
        with session_factory(engine)() as session:
            booking["appointment"] = book(session, coi, option, "coordinator-a")
            session.commit()
            session.refresh(booking["appointment"])

    contender = Contender(monkeypatch, commands, "lock_site", coordinator)
    quarantined = ShipmentQuarantined(
        source="cgt/coi-tracking",
        subject=coi,
        correlationid="quarantine-while-booking",
        data=ShipmentQuarantinedData(
            shipment_id=uuid.uuid4(),
            coi=coi,
            treatment_center_id=SITE,
            reason="temperature excursion: -120.0 °C above the -150.0 °C limit",
            quarantined_at=datetime.now(UTC),
        ),
    )
    with session_factory(engine)() as consumer:
        make_handlers(default_buffer_hours=24)[ShipmentQuarantined](consumer, quarantined)
        contender.arrive()
        consumer.commit()
    contender.finish()

    appointment = booking["appointment"]
    assert appointment.state is AppointmentState.ON_HOLD, "booked as if the shipment were not quarantined"
    assert appointment.hold_reason == "the shipment is quarantined"


def test_a_cancellation_is_not_overwritten_by_a_delivery_confirming_the_appointment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (on SQLite the cancellation's write lock already keeps the event out): the delivery
    event either waits for the cancellation before reading the appointment, or — without the case's lock
    — reads it as still tentative and confirms it over the cancellation."""
    with database("postgresql", tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        cancellation_then_delivery(engine, monkeypatch)


def cancellation_then_delivery(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    coi, option = a_case_ready_to_book(engine)
    with session_factory(engine)() as session:
        appointment_id = book(session, coi, option, "coordinator-a").id
        session.commit()
    with session_factory(engine)() as session:
        case = session.get(Case, coi)
        assert case is not None and case.shipment_id is not None
        shipment_id = case.shipment_id
    delivered = ShipmentDelivered(
        source="cgt/coi-tracking",
        subject=coi,
        correlationid="delivered-while-cancelling",
        data=ShipmentDeliveredData(
            shipment_id=shipment_id,
            coi=coi,
            treatment_center_id=SITE,
            delivered_at=datetime.now(UTC),
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=-180.0,
        ),
    )

    def delivery_event() -> None:
        with session_factory(engine)() as session:
            make_handlers(default_buffer_hours=24)[ShipmentDelivered](session, delivered)
            session.commit()

    def a_session_waits_on_a_lock() -> bool:
        with engine.connect() as connection:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        return bool(waiting)

    contender = Contender(monkeypatch, commands, "confirm", delivery_event)
    coordinator = Principal(subject="coordinator-a", role=Role.COORDINATOR)
    with session_factory(engine)() as session:
        appointment, _ = api._appointment_to_change(session, appointment_id, coordinator)
        commands.cancel_by_coordinator(
            session, appointment, SlotReasonCode.PATIENT_CONDITION, "patient unwell", correlation_id="cancel"
        )
        session.flush()  # the cancellation is written (its row locked) before the delivery comes
        contender.arrive(or_waiting=a_session_waits_on_a_lock)
        session.commit()
    contender.finish()

    with session_factory(engine)() as session:
        stored = session.get(Appointment, appointment_id)
        assert stored is not None and stored.state is AppointmentState.CANCELLED, "the cancellation was lost"
        confirmations = session.exec(
            select(func.count())
            .select_from(OutboxMessage)
            .where(col(OutboxMessage.event_type) == "slot.confirmed.v1")
        ).one()
        assert confirmations == 0, "a cancelled appointment was confirmed to the site"
