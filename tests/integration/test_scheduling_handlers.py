"""Scheduling's handlers and commands without the broker, on SQLite and PostgreSQL: each event is handed to
`handlers.handle` as the consumer would hand it, each coordinator step to its command, and the effects are
read back from the database — the appointment, the outbox, the webhook deliveries, the worklist.

Days passing (conditioning that has started, an infusion long ago) are written as the rows would read
then: the appointment's and the case's dates moved back (`days_pass`), never a wait."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.envelope import EventEnvelope
from cgt_contracts.events import (
    CancellationReasonCode,
    CoiBreak,
    CoiBreakData,
    ManufacturingFailed,
    ManufacturingFailedData,
    ManufacturingFailureCode,
    OrderAccepted,
    OrderAcceptedData,
    OrderCancelled,
    OrderCancelledData,
    OrderCancelledDataV2,
    OrderCancelledV2,
    QaDispositionData,
    QaDispositionDataV2,
    QaReasonCode,
    QuarantineReasonCode,
    ShipmentDelayed,
    ShipmentDelayedData,
    ShipmentDelayedDataV2,
    ShipmentDelayedV2,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentLeg,
    ShipmentQuarantined,
    ShipmentQuarantinedData,
    ShipmentQuarantinedDataV2,
    ShipmentQuarantinedV2,
    ShipmentRejected,
    ShipmentRejectedV2,
    ShipmentReleased,
    ShipmentReleasedV2,
    SlotReasonCode,
    TemperatureExcursion,
    TemperatureExcursionData,
)
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.auth import Principal, Role
from services.common.identifiers import SEQUENCE_CAPACITY, coi_identifier
from services.common.outbox import OutboxMessage
from services.common.problems import ProblemError
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import api, commands, fhir, fhir_api, handlers
from services.scheduling.domain import AppointmentState, SlotOption
from services.scheduling.models import (
    TABLES,
    Appointment,
    Case,
    FollowUpVisit,
    OfferedOption,
    Site,
    SlotAlert,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.support.infra import database

SITE = "TC-HANDLERS"
CONFIG = handlers.Config(receipt_buffer_hours=24)
COORDINATOR = Principal(subject="coord-ana", role=Role.COORDINATOR)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
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
                WebhookEndpoint(treatment_center_id=SITE, url="http://127.0.0.1:9/site", secret="s" * 32)
            )
            session.commit()
        yield engine


def in_days(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


class Patient:
    """One case's events, as order intake and COI tracking publish them (`*_v1`: as they published them
    before reason codes; such records are still on the topics)."""

    def __init__(self) -> None:
        self.coi = coi_identifier("W4321", 2026, uuid.uuid4().int % SEQUENCE_CAPACITY)
        self.order_id = uuid.uuid4()
        self.shipment_id = uuid.uuid4()

    def _head(self) -> dict[str, Any]:
        return {"source": "cgt/test", "subject": self.coi, "correlationid": f"test-{self.coi}"}

    def _about(self) -> dict[str, Any]:
        return {"shipment_id": self.shipment_id, "coi": self.coi, "treatment_center_id": SITE}

    def accepted(self) -> OrderAccepted:
        data = OrderAcceptedData(
            order_id=self.order_id,
            coi=self.coi,
            patient_ref="PSN-HANDLERS",
            therapy_code="WASKYRA",
            treatment_center_id=SITE,
            storage_limit_celsius=-150.0,
            conditioning_days=4,
            accepted_at=datetime.now(UTC),
            long_term_follow_up=True,
        )
        return OrderAccepted(**self._head(), data=data)

    def dispatched(self, eta: datetime) -> ShipmentDispatched:
        data = ShipmentDispatchedData(**self._about(), dispatched_at=datetime.now(UTC), eta_at=eta)
        return ShipmentDispatched(**self._head(), data=data)

    def delayed(self, eta: datetime) -> ShipmentDelayedV2:
        data = ShipmentDelayedDataV2(
            **self._about(), scan_id=uuid.uuid4(), leg=ShipmentLeg.RETURN, previous_eta_at=None, eta_at=eta
        )
        return ShipmentDelayedV2(**self._head(), data=data)

    def delayed_v1(self, eta: datetime, location: str = "Customs") -> ShipmentDelayed:
        data = ShipmentDelayedData(
            **self._about(), leg=ShipmentLeg.RETURN, previous_eta_at=None, eta_at=eta, location=location
        )
        return ShipmentDelayed(**self._head(), data=data)

    def delivered(self) -> ShipmentDelivered:
        data = ShipmentDeliveredData(
            **self._about(),
            delivered_at=datetime.now(UTC),
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=-180.0,
        )
        return ShipmentDelivered(**self._head(), data=data)

    def quarantined(self, *codes: QuarantineReasonCode) -> ShipmentQuarantinedV2:
        data = ShipmentQuarantinedDataV2(
            **self._about(),
            leg=ShipmentLeg.RETURN,
            reason_codes=list(codes or [QuarantineReasonCode.TEMPERATURE_EXCURSION]),
            quarantined_at=datetime.now(UTC),
        )
        return ShipmentQuarantinedV2(**self._head(), data=data)

    def quarantined_v1(self, reason: str = "temperature excursion at receipt") -> ShipmentQuarantined:
        data = ShipmentQuarantinedData(**self._about(), reason=reason, quarantined_at=datetime.now(UTC))
        return ShipmentQuarantined(**self._head(), data=data)

    def excursion(self) -> TemperatureExcursion:
        data = TemperatureExcursionData(
            shipment_id=self.shipment_id,
            coi=self.coi,
            reading_celsius=-120.0,
            limit_celsius=-150.0,
            read_at=datetime.now(UTC),
        )
        return TemperatureExcursion(**self._head(), data=data)

    def coi_break(self, shipment_id: uuid.UUID | None = None) -> CoiBreak:
        data = CoiBreakData(
            shipment_id=shipment_id or self.shipment_id,
            scan_id=uuid.uuid4(),
            expected_coi=self.coi,
            read_cois=["CHW4321269ZZZZZQ"],
            detected_at=datetime.now(UTC),
        )
        return CoiBreak(**self._head(), data=data)

    def _signature(self) -> dict[str, Any]:
        return {
            **self._about(),
            "leg": ShipmentLeg.RETURN,
            "disposition_id": uuid.uuid4(),
            "signer_id": "qa-jr",
            "signer_printed_name": "J. Rivera (QA)",
            "signed_at": datetime.now(UTC),
            "meaning": "approval",
            "ledger_sequence": 3,
        }

    def released(self, code: QaReasonCode = QaReasonCode.PRODUCT_WITHIN_LIMITS) -> ShipmentReleasedV2:
        return ShipmentReleasedV2(
            **self._head(), data=QaDispositionDataV2(**self._signature(), reason_code=code)
        )

    def rejected(self, code: QaReasonCode = QaReasonCode.CONTAINER_COMPROMISED) -> ShipmentRejectedV2:
        return ShipmentRejectedV2(
            **self._head(), data=QaDispositionDataV2(**self._signature(), reason_code=code)
        )

    def released_v1(self, reason: str = "probe stayed below -150 °C") -> ShipmentReleased:
        return ShipmentReleased(**self._head(), data=QaDispositionData(**self._signature(), reason=reason))

    def rejected_v1(self, reason: str = "bag seal broken") -> ShipmentRejected:
        return ShipmentRejected(**self._head(), data=QaDispositionData(**self._signature(), reason=reason))

    def cancelled(
        self, code: CancellationReasonCode = CancellationReasonCode.PATIENT_INELIGIBLE
    ) -> OrderCancelledV2:
        data = OrderCancelledDataV2(
            order_id=self.order_id,
            coi=self.coi,
            reason_code=code,
            cancelled_by="coord-ana",
            cancelled_at=datetime.now(UTC),
        )
        return OrderCancelledV2(**self._head(), data=data)

    def lot_failed(
        self, code: ManufacturingFailureCode = ManufacturingFailureCode.STERILITY_FAILURE
    ) -> ManufacturingFailed:
        data = ManufacturingFailedData(
            order_id=self.order_id,
            coi=self.coi,
            collection_number=1,
            reason_code=code,
            failed_at=datetime.now(UTC),
            recorded_by="coord-ana",
        )
        return ManufacturingFailed(**self._head(), data=data)

    def cancelled_v1(self, reason: str = "patient unwell") -> OrderCancelled:
        data = OrderCancelledData(
            order_id=self.order_id,
            coi=self.coi,
            reason=reason,
            cancelled_by="coord-ana",
            cancelled_at=datetime.now(UTC),
        )
        return OrderCancelled(**self._head(), data=data)


def apply(engine: Engine, *events: EventEnvelope) -> None:
    """Each event in a transaction of its own, as the consumer applies it."""
    for event in events:
        with session_factory(engine)() as session:
            handlers.handle(session, event, CONFIG)  # type: ignore[arg-type]
            session.commit()


def options_of(engine: Engine, coi: str) -> list[SlotOption]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(OfferedOption)
            .where(OfferedOption.coi == coi)
            .where(col(OfferedOption.current).is_(True))
            .order_by(col(OfferedOption.conditioning_start_on))
        ).all()
        return [SlotOption(r.conditioning_start_on, r.infusion_on) for r in rows]


def book(engine: Engine, coi: str, option: SlotOption | None = None) -> uuid.UUID:
    with session_factory(engine)() as session:
        case = session.get(Case, coi)
        assert case is not None
        appointment = commands.book(
            session,
            case,
            option or options_of(engine, coi)[0],
            booked_by="coord-ana",
            default_buffer_hours=24,
            correlation_id="book",
        )
        session.commit()
        return appointment.id


def appointment_of(engine: Engine, appointment_id: uuid.UUID) -> Appointment:
    with session_factory(engine)() as session:
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None
        return appointment


def confirmed_appointment(engine: Engine, patient: Patient) -> uuid.UUID:
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)
    apply(engine, patient.delivered())
    assert appointment_of(engine, appointment_id).state is AppointmentState.CONFIRMED
    return appointment_id


def published(engine: Engine, coi: str, event_type: str) -> list[dict[str, Any]]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(OutboxMessage)
            .where(OutboxMessage.key == coi)
            .where(OutboxMessage.event_type == event_type)
            .order_by(col(OutboxMessage.id))
        ).all()
        return [json.loads(row.payload)["data"] for row in rows]


def webhook_kinds(engine: Engine, coi: str) -> list[str]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.coi == coi)
            .order_by(col(WebhookDelivery.created_at))
        ).all()
        return [row.kind for row in rows]


def worklist(engine: Engine, coi: str) -> list[api.WorkItem]:
    with session_factory(engine)() as session:
        items = sorted(
            api.work_items(session), key=lambda item: item.since
        )  # the route's order, oldest first
        return [item for item in items if item.coi == coi]


def days_pass(engine: Engine, coi: str, days: int) -> None:
    """The case's rows as they read `days` later: every date of the case and its appointment moved back."""
    shift = timedelta(days=days)
    with session_factory(engine)() as session:
        case = session.get(Case, coi)
        assert case is not None
        for appointment in session.exec(select(Appointment).where(Appointment.coi == coi)):
            appointment.conditioning_start_on -= shift
            appointment.infusion_on -= shift
            if appointment.confirmed_at is not None:
                appointment.confirmed_at -= shift
            session.add(appointment)
        if case.eta_at is not None:
            case.eta_at -= shift
        if case.product_delivered_at is not None:
            case.product_delivered_at -= shift
        session.add(case)
        for option in session.exec(select(OfferedOption).where(OfferedOption.coi == coi)):
            option.conditioning_start_on -= shift
            option.infusion_on -= shift
            session.add(option)
        session.commit()


# ---------------------------------------------------------------- a threat to the product (I4)


def test_a_quarantine_after_confirmation_holds_alerts_the_site_and_stays_on_the_worklist(
    engine: Engine,
) -> None:
    patient = Patient()
    appointment_id = confirmed_appointment(engine, patient)

    apply(
        engine,
        patient.quarantined(QuarantineReasonCode.TEMPERATURE_EXCURSION, QuarantineReasonCode.LOGGER_GAP),
    )

    held = appointment_of(engine, appointment_id)
    assert held.state is AppointmentState.ON_HOLD, "a confirmed appointment stayed confirmed"
    assert held.hold_cause == "quarantine"
    assert held.hold_reason == "shipment quarantined (temperature_excursion, logger_gap)"
    [at_risk] = published(engine, patient.coi, "slot.at_risk.v2")
    assert at_risk["cause"] == "quarantine" and at_risk["appointment_state"] == "on_hold"
    assert at_risk["conditioning_may_have_started"] is False
    assert len(published(engine, patient.coi, "slot.held.v2")) == 1
    assert webhook_kinds(engine, patient.coi)[-2:] == ["slot.held", "slot.at_risk"]
    kinds = {item.kind: item for item in worklist(engine, patient.coi)}
    assert set(kinds) == {"at_risk", "on_hold"}
    assert kinds["at_risk"].alert_id == uuid.UUID(at_risk["alert_id"])
    assert "the site must not start conditioning" in kinds["at_risk"].detail

    # QA releases it and the delivery is confirmed again: the alert stays until a coordinator acts.
    apply(engine, patient.released(), patient.delivered())
    assert appointment_of(engine, appointment_id).state is AppointmentState.CONFIRMED
    assert [item.kind for item in worklist(engine, patient.coi)] == ["at_risk"]
    with session_factory(engine)() as session:
        alert = session.get(SlotAlert, kinds["at_risk"].alert_id)
        assert alert is not None
        resolved = api.resolve_alert(
            alert.id,
            api.ResolveRequest(resolution="called the site: conditioning waits"),
            session,
            COORDINATOR,
        )
    assert resolved.resolved_by == "coord-ana" and resolved.resolved_at is not None
    assert worklist(engine, patient.coi) == []
    with session_factory(engine)() as session, pytest.raises(ProblemError) as again:
        api.resolve_alert(alert.id, api.ResolveRequest(resolution="twice"), session, COORDINATOR)
    assert again.value.status == 409


def test_an_excursion_holds_a_tentative_appointment_once_and_raises_no_alert(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)

    apply(engine, patient.excursion(), patient.quarantined())  # COI tracking publishes both, in this order

    held = appointment_of(engine, appointment_id)
    assert held.state is AppointmentState.ON_HOLD and held.hold_cause == "temperature_excursion"
    assert held.hold_reason == "temperature excursion: -120.0 °C above the -150.0 °C limit"
    assert len(published(engine, patient.coi, "slot.held.v2")) == 1
    assert published(engine, patient.coi, "slot.at_risk.v2") == []
    assert [item.kind for item in worklist(engine, patient.coi)] == ["on_hold"]


def test_a_coi_break_holds_the_return_legs_appointment_and_not_for_another_shipment(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)

    apply(engine, patient.coi_break(shipment_id=uuid.uuid4()))  # the outbound leg: not the product
    assert appointment_of(engine, appointment_id).state is AppointmentState.TENTATIVE

    apply(engine, patient.coi_break())
    held = appointment_of(engine, appointment_id)
    assert held.state is AppointmentState.ON_HOLD and held.hold_cause == "coi_break"
    assert held.hold_reason is not None and "CHW4321269ZZZZZQ" not in held.hold_reason, (
        "another patient's COI"
    )


def test_once_conditioning_may_have_started_a_quarantine_alerts_and_moves_nothing(engine: Engine) -> None:
    patient = Patient()
    appointment_id = confirmed_appointment(engine, patient)
    days_pass(engine, patient.coi, 5)  # conditioning started two days ago
    before = appointment_of(engine, appointment_id)

    apply(engine, patient.quarantined())

    after = appointment_of(engine, appointment_id)
    assert after.state is AppointmentState.CONFIRMED
    assert (after.conditioning_start_on, after.infusion_on) == (
        before.conditioning_start_on,
        before.infusion_on,
    )
    [at_risk] = published(engine, patient.coi, "slot.at_risk.v2")
    assert at_risk["conditioning_may_have_started"] is True and at_risk["appointment_state"] == "confirmed"
    assert "reason" not in at_risk
    [item] = [item for item in worklist(engine, patient.coi) if item.kind == "at_risk"]
    assert "clinical decision needed" in item.detail, "the sentence is the coordinators', not the event's"
    assert published(engine, patient.coi, "slot.held.v2") == []
    assert webhook_kinds(engine, patient.coi)[-1] == "slot.at_risk"
    with session_factory(engine)() as session:
        appointment, case = api._appointment_to_change(session, appointment_id, COORDINATOR)
        with pytest.raises(commands.Refused, match="the product is in quarantine"):
            commands.record_infusion(session, appointment, case, date.today(), correlation_id="infuse")


@pytest.mark.parametrize("ending", ["rejected", "cancelled"])
def test_a_rejection_or_a_cancelled_order_cancels_a_confirmed_appointment_and_alerts(
    engine: Engine, ending: str
) -> None:
    patient = Patient()
    appointment_id = confirmed_appointment(engine, patient)

    apply(engine, patient.rejected() if ending == "rejected" else patient.cancelled())

    assert appointment_of(engine, appointment_id).state is AppointmentState.CANCELLED
    [cancelled] = published(engine, patient.coi, "slot.cancelled.v2")
    [at_risk] = published(engine, patient.coi, "slot.at_risk.v2")
    assert at_risk["cause"] == ("qa_rejection" if ending == "rejected" else "order_cancelled")
    assert at_risk["appointment_state"] == "cancelled" and cancelled["reason_code"] == at_risk["cause"]
    assert webhook_kinds(engine, patient.coi)[-2:] == ["slot.cancelled", "slot.at_risk"]


def test_a_rejection_cancels_a_tentative_appointment_without_an_alert(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)
    apply(engine, patient.rejected())
    assert appointment_of(engine, appointment_id).state is AppointmentState.CANCELLED
    assert published(engine, patient.coi, "slot.at_risk.v2") == []
    assert [(i.kind, i.detail) for i in worklist(engine, patient.coi)] == [
        ("attention", "product rejected by QA: plan with the manufacturer")
    ]


def test_a_failed_lot_releases_its_tentative_appointment_and_the_next_lot_is_booked_again(
    engine: Engine,
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    first = book(engine, patient.coi)

    apply(engine, patient.lot_failed())

    assert appointment_of(engine, first).state is AppointmentState.CANCELLED
    [cancelled] = published(engine, patient.coi, "slot.cancelled.v2")
    assert cancelled["reason_code"] == "manufacturing_failure"
    assert published(engine, patient.coi, "slot.at_risk.v2") == [], "a tentative one raises no alert"
    assert webhook_kinds(engine, patient.coi)[-1] == "slot.cancelled"
    assert options_of(engine, patient.coi) == []
    [item] = worklist(engine, patient.coi)
    assert item.detail.startswith("manufacturing failed")
    with session_factory(engine)() as session:
        case = session.get(Case, patient.coi)
        assert case is not None and not case.cancelled and case.shipment_id is None and case.eta_at is None

    # The next lot travels on a new return leg: its pick-up offers options again, its delivery confirms.
    patient.shipment_id = uuid.uuid4()
    apply(engine, patient.dispatched(in_days(3)))
    second = book(engine, patient.coi)
    apply(engine, patient.delivered())
    assert appointment_of(engine, second).state is AppointmentState.CONFIRMED
    assert appointment_of(engine, first).state is AppointmentState.CANCELLED


def test_a_failed_lot_cancels_a_confirmed_appointment_and_alerts(engine: Engine) -> None:
    patient = Patient()
    appointment_id = confirmed_appointment(engine, patient)
    apply(engine, patient.lot_failed(ManufacturingFailureCode.OUT_OF_SPECIFICATION_POTENCY))
    assert appointment_of(engine, appointment_id).state is AppointmentState.CANCELLED
    [at_risk] = published(engine, patient.coi, "slot.at_risk.v2")
    assert at_risk["cause"] == "manufacturing_failure"
    assert webhook_kinds(engine, patient.coi)[-2:] == ["slot.cancelled", "slot.at_risk"]


# ---------------------------------------------------------------- ETAs


def test_a_delay_after_conditioning_started_is_an_alert_not_a_silent_move(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)
    days_pass(engine, patient.coi, 4)  # conditioning started yesterday, the product is late
    before = appointment_of(engine, appointment_id)

    apply(engine, patient.delayed(in_days(6)))

    after = appointment_of(engine, appointment_id)
    assert (after.state, after.conditioning_start_on) == (
        AppointmentState.TENTATIVE,
        before.conditioning_start_on,
    )
    assert published(engine, patient.coi, "slot.rescheduled.v2") == []
    [item] = [i for i in worklist(engine, patient.coi) if i.kind == "at_risk"]
    assert "conditioning may have started" in item.detail and item.appointment_id == appointment_id
    assert published(engine, patient.coi, "slot.at_risk.v2")[0]["cause"] == "delay"


def test_a_delay_moves_a_tentative_appointment_and_the_options_follow_the_new_eta(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)
    new_eta = in_days(8)

    apply(engine, patient.delayed(new_eta))

    earliest = (new_eta + timedelta(hours=24)).date()
    moved = appointment_of(engine, appointment_id)
    assert moved.state is AppointmentState.TENTATIVE and moved.conditioning_start_on >= earliest
    [rescheduled] = published(engine, patient.coi, "slot.rescheduled.v2")
    assert rescheduled["reason_code"] == "delay" and moved.reason_code == "delay"
    assert all(option.conditioning_start_on >= earliest for option in options_of(engine, patient.coi))
    assert "slot.rescheduled" in webhook_kinds(engine, patient.coi)


def test_an_appointment_booked_before_dispatch_follows_the_pick_up_eta(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted())
    tomorrow = date.today() + timedelta(days=1)
    appointment_id = book(engine, patient.coi, SlotOption(tomorrow, tomorrow + timedelta(days=4)))
    eta = in_days(5)

    apply(engine, patient.dispatched(eta))

    assert appointment_of(engine, appointment_id).conditioning_start_on >= (eta + timedelta(hours=24)).date()
    assert len(published(engine, patient.coi, "slot.rescheduled.v2")) == 1


def test_an_appointment_booked_before_its_product_shipped_is_confirmed_by_its_delivery(
    engine: Engine,
) -> None:
    """A plan's infusion leg is booked before collection, with no shipment yet: the return leg it learns
    at pick-up (or, failing that, from the delivery itself) is the one whose clean delivery confirms it."""
    for dispatched_first in (True, False):
        patient = Patient()
        apply(engine, patient.accepted())
        later = date.today() + timedelta(days=20)
        appointment_id = book(engine, patient.coi, SlotOption(later, later + timedelta(days=4)))
        assert appointment_of(engine, appointment_id).shipment_id is None

        apply(engine, *([patient.dispatched(in_days(2))] if dispatched_first else []), patient.delivered())

        appointment = appointment_of(engine, appointment_id)
        assert appointment.state is AppointmentState.CONFIRMED, dispatched_first
        assert appointment.shipment_id == patient.shipment_id
        [confirmed] = published(engine, patient.coi, "slot.confirmed.v1")
        assert confirmed["shipment_id"] == str(patient.shipment_id)


def test_a_pick_up_eta_in_the_past_offers_no_option_and_says_why(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(-90)))

    assert published(engine, patient.coi, "slot.options_offered.v1") == []
    assert options_of(engine, patient.coi) == []
    [item] = worklist(engine, patient.coi)
    assert item.kind == "attention" and "has already passed" in item.detail
    with session_factory(engine)() as session:
        case = session.get(Case, patient.coi)
        assert case is not None and case.eta_at is None
        with pytest.raises(commands.Refused, match="ETA is not known"):
            commands.book(
                session,
                case,
                SlotOption(date.today() + timedelta(days=3), date.today() + timedelta(days=7)),
                booked_by="coord-ana",
                default_buffer_hours=24,
                correlation_id="book",
            )


def test_a_delay_to_an_eta_that_has_passed_withdraws_the_options_it_no_longer_supports(
    engine: Engine,
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    assert options_of(engine, patient.coi), "options for the pick-up's ETA"

    apply(engine, patient.delayed(in_days(-1)))

    assert options_of(engine, patient.coi) == []
    assert [(i.kind, "has already passed" in i.detail) for i in worklist(engine, patient.coi)] == [
        ("attention", True)
    ]
    assert len(published(engine, patient.coi, "slot.options_offered.v1")) == 1


def test_an_option_offered_days_ago_whose_conditioning_would_start_in_the_past_is_refused(
    engine: Engine,
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    days_pass(engine, patient.coi, 10)  # the ETA long passed without a delivery or a delay
    with session_factory(engine)() as session:
        case = session.get(Case, patient.coi)
        assert case is not None
        with pytest.raises(commands.Invalid) as refused:
            commands.book(
                session,
                case,
                options_of(engine, patient.coi)[0],
                booked_by="coord-ana",
                default_buffer_hours=24,
                correlation_id="book",
                field="option_id",
            )
    assert refused.value.field == "option_id" and "before today" in refused.value.detail


# ---------------------------------------------------------------- a coordinator's reschedule


def reschedule(engine: Engine, appointment_id: uuid.UUID, option: SlotOption) -> None:
    with session_factory(engine)() as session:
        appointment, case = api._appointment_to_change(session, appointment_id, COORDINATOR)
        commands.reschedule(
            session,
            appointment,
            case,
            option,
            SlotReasonCode.SITE_REQUEST,
            note="the site asked for a later day",
            default_buffer_hours=24,
            correlation_id="move",
        )
        session.commit()


def test_a_coordinator_moves_a_held_appointment_to_another_option_and_the_site_is_told(
    engine: Engine,
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    first, second = options_of(engine, patient.coi)[:2]
    appointment_id = book(engine, patient.coi, first)
    apply(engine, patient.quarantined())

    reschedule(engine, appointment_id, second)

    moved = appointment_of(engine, appointment_id)
    assert moved.state is AppointmentState.ON_HOLD, "a move keeps the hold"
    assert (moved.conditioning_start_on, moved.infusion_on) == (
        second.conditioning_start_on,
        second.infusion_on,
    )
    [event] = published(engine, patient.coi, "slot.rescheduled.v2")
    assert event["previous_conditioning_start_on"] == first.conditioning_start_on.isoformat()
    assert event["reason_code"] == "site_request" and "the site asked" not in json.dumps(event)
    assert (moved.reason_code, moved.note) == ("site_request", "the site asked for a later day")
    assert webhook_kinds(engine, patient.coi)[-1] == "slot.rescheduled"
    with session_factory(engine)() as session:
        [hook] = session.exec(
            select(WebhookDelivery.payload)
            .where(WebhookDelivery.coi == patient.coi)
            .where(WebhookDelivery.kind == "slot.rescheduled")
        ).all()
    assert json.loads(hook)["reason_code"] == "site_request" and "the site asked" not in hook


def test_a_confirmed_appointment_a_full_day_or_a_day_in_the_past_is_not_a_reschedule(engine: Engine) -> None:
    patient = Patient()
    confirmed_id = confirmed_appointment(engine, patient)
    with pytest.raises(commands.Refused, match="confirmed cannot be moved"):
        reschedule(engine, confirmed_id, options_of(engine, patient.coi)[1])

    other = Patient()
    apply(engine, other.accepted(), other.dispatched(in_days(2)))
    option = options_of(engine, other.coi)[1]
    appointment_id = book(engine, other.coi, options_of(engine, other.coi)[0])
    with session_factory(engine)() as session:
        site = session.get(Site, SITE)
        assert site is not None
        site.infusions_per_day = 1
        session.add(site)
        session.commit()
    third = Patient()
    apply(engine, third.accepted(), third.dispatched(in_days(2)))
    book(engine, third.coi, option)  # the last chair of that day
    with pytest.raises(commands.Refused, match="no infusion capacity left"):
        reschedule(engine, appointment_id, option)

    yesterday = date.today() - timedelta(days=1)
    with pytest.raises(commands.Invalid) as past:
        reschedule(engine, appointment_id, SlotOption(yesterday, yesterday + timedelta(days=4)))
    assert past.value.field == "option_id"


def waits_on_a_lock(engine: Engine, worker: threading.Thread) -> bool:
    """Whether `worker` is blocked on the other transaction's lock: PostgreSQL's row lock, or on SQLite the
    process's writer lock (services/common/db.py, taken in `_take`)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        return bool(waiting)
    frame = sys._current_frames().get(worker.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "_take":
            return True
        frame = frame.f_back
    return False


def test_a_reschedule_and_a_booking_racing_for_the_last_chair_never_both_get_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator moving an appointment holds the site's lock while the other books: the booking
    waits for it (or, without the lock, would book the same chair before the move commits)."""
    mover, newcomer = Patient(), Patient()
    for patient in (mover, newcomer):
        apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    first, wanted = options_of(engine, mover.coi)[:2]
    appointment_id = book(engine, mover.coi, first)
    with session_factory(engine)() as session:
        site = session.get(Site, SITE)
        assert site is not None
        site.infusions_per_day = 1
        session.add(site)
        session.commit()
    outcome: dict[str, Any] = {}

    def newcomer_books() -> None:
        try:
            book(engine, newcomer.coi, wanted)
            outcome["booked"] = True
        except commands.Refused as refused:
            outcome["refused"] = refused.reasons

    worker = threading.Thread(target=newcomer_books)
    lock_site, arrived = commands.lock_site, threading.Event()

    def arriving(session: Session, site_id: str) -> None:
        if threading.current_thread() is worker:
            arrived.set()
        lock_site(session, site_id)

    monkeypatch.setattr(commands, "lock_site", arriving)
    with session_factory(engine)() as session:
        appointment, case = api._appointment_to_change(session, appointment_id, COORDINATOR)
        commands.reschedule(
            session,
            appointment,
            case,
            wanted,
            SlotReasonCode.SITE_CAPACITY,
            default_buffer_hours=24,
            correlation_id="move",
        )  # holds the site's lock until it commits
        worker.start()
        deadline = time.monotonic() + 10
        while not (arrived.is_set() and (not worker.is_alive() or waits_on_a_lock(engine, worker))):
            assert time.monotonic() < deadline, "the booking neither waited nor finished"
            time.sleep(0.01)
        session.commit()
    worker.join(30)

    assert not worker.is_alive() and "booked" not in outcome, "the chair was taken twice"
    assert any("no infusion capacity left" in reason for reason in outcome["refused"])


# ---------------------------------------------------------------- infusion and follow-up


def test_an_infusion_waits_for_confirmation_and_conditioning_then_plans_the_follow_up(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)

    def infuse(on: date) -> int:
        with session_factory(engine)() as session:
            appointment, case = api._appointment_to_change(session, appointment_id, COORDINATOR)
            visits = commands.record_infusion(session, appointment, case, on, correlation_id="infuse")
            session.commit()
            return visits

    with pytest.raises(commands.Refused, match="only a confirmed appointment"):
        infuse(date.today())
    apply(engine, patient.delivered())
    with pytest.raises(commands.Invalid) as early:
        infuse(date.today())  # conditioning starts in days: the booked date is not here yet
    assert early.value.field == "infused_on" and "before conditioning started" in early.value.detail

    days_pass(engine, patient.coi, 400)
    infused_on = appointment_of(engine, appointment_id).infusion_on
    visits = infuse(infused_on)

    assert appointment_of(engine, appointment_id).state is AppointmentState.INFUSED
    [recorded] = published(engine, patient.coi, "infusion.recorded.v1")
    assert recorded["follow_up_visits"] == visits and visits >= 18
    with session_factory(engine)() as session:
        overdue = commands.publish_overdue_visits(session, date.today(), correlation_id="follow-up")
        session.commit()
        last = session.exec(
            select(FollowUpVisit)
            .where(FollowUpVisit.coi == patient.coi)
            .order_by(col(FollowUpVisit.number).desc())
        ).first()
    assert overdue >= 1 and last is not None and last.due_on.year == infused_on.year + 15
    assert published(engine, patient.coi, "followup.visit_overdue.v1")[0]["visit_number"] == 1
    assert "follow_up_overdue" in [item.kind for item in worklist(engine, patient.coi)]


# ---------------------------------------------------------------- FHIR


def test_a_held_appointment_is_told_apart_from_a_tentative_one_in_fhir(engine: Engine) -> None:
    patient = Patient()
    appointment_id = confirmed_appointment(engine, patient)
    apply(engine, patient.quarantined())
    with session_factory(engine)() as session:
        held = session.get(Appointment, appointment_id)
        assert held is not None
        resource, slot = fhir_api.appointment_view(session, held), fhir_api.slot_view(session, held)
    assert resource["status"] == "pending"
    extensions = {e["url"]: e["valueCodeableConcept"] for e in resource["extension"]}
    assert extensions[fhir.HOLD_EXTENSION]["coding"][0]["code"] == "quarantine"
    assert extensions[fhir.AT_RISK_EXTENSION]["coding"][0]["code"] == "quarantine"
    assert slot["status"] == "busy-unavailable"

    tentative = Patient()
    apply(engine, tentative.accepted(), tentative.dispatched(in_days(2)))
    tentative_id = book(engine, tentative.coi)
    with session_factory(engine)() as session:
        waiting = session.get(Appointment, tentative_id)
        assert waiting is not None
        plain, slot = fhir_api.appointment_view(session, waiting), fhir_api.slot_view(session, waiting)
    assert plain["status"] == "pending" and "extension" not in plain
    assert slot["status"] == "busy-tentative"


# ---------------------------------------------------------------- records from before reason codes (I6)

V1_TEXT = "SENTINEL typed by a person before reason codes"


def everything_stored(engine: Engine) -> str:
    """Every row of every scheduling table, as text: the outbox, the webhooks, the cases, the alerts."""
    with session_factory(engine)() as session:
        return "\n".join(
            repr(row) for table in (*COMMON_TABLES, *TABLES) for row in session.execute(table.select()).all()
        )


@pytest.mark.parametrize("ending", ["rejected", "cancelled"])
def test_a_v1_events_free_text_is_read_as_other_and_copied_nowhere(engine: Engine, ending: str) -> None:
    """Records published before reason codes are still on the topics: each acts as before, its text is
    read as the code `other`, and none of it reaches an event, a webhook or a row of scheduling's."""
    patient = Patient()
    appointment_id = confirmed_appointment(engine, patient)

    apply(engine, patient.quarantined_v1(V1_TEXT))
    held = appointment_of(engine, appointment_id)
    assert held.state is AppointmentState.ON_HOLD and held.hold_reason == "shipment quarantined (other)"
    apply(engine, patient.released_v1(V1_TEXT), patient.delayed_v1(in_days(3), location=V1_TEXT))
    assert appointment_of(engine, appointment_id).state is AppointmentState.TENTATIVE
    apply(engine, patient.rejected_v1(V1_TEXT) if ending == "rejected" else patient.cancelled_v1(V1_TEXT))
    cancelled = appointment_of(engine, appointment_id)
    assert cancelled.state is AppointmentState.CANCELLED
    assert cancelled.hold_reason == (
        "product rejected by QA (other)" if ending == "rejected" else "order cancelled (other)"
    )
    assert V1_TEXT not in everything_stored(engine)
