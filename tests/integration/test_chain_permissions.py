"""The site's qualification and the payer authorization checked again by scheduling (issue 18), on SQLite
and PostgreSQL without the broker: every way in reaches `domain.chain_lapses` — a plan booked over HTTP, an
infusion booked over HTTP, an appointment moved, and the delivery that would confirm it (its handler) —
and the renewal events let a held chain go on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cgt_contracts.events import (
    OrderAcceptedDataV2,
    OrderAcceptedV2,
    PayerAuthorizationRenewed,
    PayerAuthorizationRenewedData,
    QualificationWindow,
    SiteQualificationChanged,
    SiteQualificationChangedData,
    SlotReasonCode,
)
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import commands
from services.scheduling.domain import AppointmentState, PlanState
from services.scheduling.models import (
    TABLES,
    Appointment,
    Case,
    CasePlan,
    OfferedOption,
    Site,
    WebhookEndpoint,
)
from services.scheduling.runtime import seed
from tests.integration.test_plans import a_case
from tests.integration.test_scheduling_handlers import (
    SITE,
    Patient,
    apply,
    appointment_of,
    book,
    in_days,
    options_of,
    published,
    webhook_kinds,
    worklist,
)
from tests.support.apps import scheduling_client
from tests.support.infra import database

TOKENS = {"tokens": {"coordinator": {"subject": "coord-ana", "role": "coordinator"}}}
COORDINATOR = {"Authorization": "Bearer coordinator"}
FAR = date.today() + timedelta(days=3650)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        seed(engine)  # TC-BOSTON, its own collection center; WASKYRA made at MFG-AGC-MILAN
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


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with scheduling_client(engine, tmp_path, TOKENS) as client:  # never started: no broker
        yield client


def knows(
    engine: Engine,
    coi: str,
    *,
    windows: list[tuple[date, date | None]] | None = None,
    expires_on: date | None = None,
) -> None:
    """The case's facts as order intake's events would have left them."""
    with session_factory(engine)() as session:
        case = session.get(Case, coi)
        assert case is not None
        if windows is not None:
            commands.store_qualifications(case, windows)
        case.payer_authorization_expires_on = expires_on
        session.add(case)
        session.commit()


def accepted_v2(patient: Patient, *, expires_on: date, windows: list[QualificationWindow]) -> OrderAcceptedV2:
    v1 = patient.accepted()
    data = OrderAcceptedDataV2(
        **v1.data.model_dump(), site_qualifications=windows, payer_authorization_expires_on=expires_on
    )
    return OrderAcceptedV2(**v1.model_dump(exclude={"type", "data", "id"}), data=data)


def renewed(patient: Patient, expires_on: date) -> PayerAuthorizationRenewed:
    data = PayerAuthorizationRenewedData(
        order_id=patient.order_id,
        coi=patient.coi,
        expires_on=expires_on,
        renewed_at=datetime.now(UTC),
        renewed_by="coord-ana",
    )
    return PayerAuthorizationRenewed(source="cgt/test", subject=patient.coi, correlationid="renew", data=data)


def qualification_changed(patient: Patient, windows: list[QualificationWindow]) -> SiteQualificationChanged:
    data = SiteQualificationChangedData(
        order_id=patient.order_id,
        coi=patient.coi,
        treatment_center_id=SITE,
        therapy_code="WASKYRA",
        site_qualifications=windows,
        changed_at=datetime.now(UTC),
    )
    return SiteQualificationChanged(source="cgt/test", subject=patient.coi, correlationid="qual", data=data)


ALWAYS = [QualificationWindow(effective_on=date(2020, 1, 1))]


# ---------------------------------------------------------------- booking a plan (HTTP)


def test_a_plan_whose_authorization_ends_before_its_infusion_books_no_leg(
    engine: Engine, client: TestClient
) -> None:
    coi = a_case(engine)
    [plan] = client.post(f"/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    infusion_on = date.fromisoformat(plan["infusion_on"])
    knows(engine, coi, windows=[(date(2020, 1, 1), None)], expires_on=infusion_on - timedelta(days=1))

    refused = client.post(f"/cases/{coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)

    assert refused.status_code == 409, refused.text
    [reason] = refused.json()["reasons"]
    assert reason.startswith("payer_authorization_lapsed") and plan["infusion_on"] in reason
    with session_factory(engine)() as session:
        assert session.exec(select(Appointment).where(Appointment.coi == coi)).first() is None
        row = session.get(CasePlan, uuid.UUID(plan["plan_id"]))
        assert row is not None and row.state is PlanState.OFFERED  # nothing held

    knows(engine, coi, windows=[(date(2020, 1, 1), None)], expires_on=infusion_on)  # covers day 0
    booked = client.post(f"/cases/{coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text


def test_a_plan_at_a_site_whose_qualification_ends_during_conditioning_is_refused(
    engine: Engine, client: TestClient
) -> None:
    coi = a_case(engine)
    [plan] = client.post(f"/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    start = date.fromisoformat(plan["conditioning_start_on"])
    knows(engine, coi, windows=[(date(2020, 1, 1), start)], expires_on=FAR)

    refused = client.post(f"/cases/{coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)

    assert refused.status_code == 409, refused.text
    assert [r.split(":")[0] for r in refused.json()["reasons"]] == ["site_qualification_lapsed"]


# ---------------------------------------------------------------- booking and moving an infusion


def test_an_infusion_is_not_booked_on_days_the_site_is_not_qualified_for(
    engine: Engine, client: TestClient
) -> None:
    patient = Patient()
    apply(engine, accepted_v2(patient, expires_on=FAR, windows=[]), patient.dispatched(in_days(2)))
    option = options_of(engine, patient.coi)[0]

    refused = client.post(
        f"/cases/{patient.coi}/bookings",
        json={"conditioning_start_on": option.conditioning_start_on.isoformat()},
        headers=COORDINATOR,
    )

    assert refused.status_code == 409, refused.text
    assert [r.split(":")[0] for r in refused.json()["reasons"]] == ["site_qualification_lapsed"]
    assert published(engine, patient.coi, "slot.proposed.v1") == []

    apply(engine, qualification_changed(patient, ALWAYS))
    booked = client.post(
        f"/cases/{patient.coi}/bookings",
        json={"conditioning_start_on": option.conditioning_start_on.isoformat()},
        headers=COORDINATOR,
    )
    assert booked.status_code == 201, booked.text


def test_an_appointment_is_not_moved_past_the_authorizations_end(engine: Engine, client: TestClient) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))  # a v1 case: booked as before
    first_infusion = options_of(engine, patient.coi)[0].infusion_on
    appointment_id = book(engine, patient.coi)
    apply(engine, renewed(patient, first_infusion))  # covers the booked day 0, not one later
    later = options_of(engine, patient.coi)[1]
    assert later.infusion_on > first_infusion

    with session_factory(engine)() as session:
        offered = session.exec(
            select(OfferedOption)
            .where(OfferedOption.coi == patient.coi)
            .where(OfferedOption.infusion_on == later.infusion_on)
            .where(col(OfferedOption.current).is_(True))
        ).one()
    moved = client.post(
        f"/appointments/{appointment_id}/reschedule",
        json={"option_id": str(offered.id), "reason_code": "site_request"},
        headers=COORDINATOR,
    )

    assert moved.status_code == 409, moved.text
    assert [r.split(":")[0] for r in moved.json()["reasons"]] == ["payer_authorization_lapsed"]
    assert appointment_of(engine, appointment_id).infusion_on == first_infusion


# ---------------------------------------------------------------- confirmation on delivery (the handler)


def test_a_delivery_after_the_authorization_lapsed_holds_and_the_renewal_confirms(engine: Engine) -> None:
    patient = Patient()
    apply(
        engine,
        accepted_v2(patient, expires_on=date.today() + timedelta(days=30), windows=ALWAYS),
        patient.dispatched(in_days(2)),
    )
    appointment_id = book(engine, patient.coi)
    apply(engine, patient.delayed(in_days(40)))  # the product is late: day 0 moves past the end
    moved = appointment_of(engine, appointment_id)
    assert moved.state is AppointmentState.TENTATIVE and moved.infusion_on > date.today() + timedelta(30)

    apply(engine, patient.delivered())

    held = appointment_of(engine, appointment_id)
    assert held.state is AppointmentState.ON_HOLD, "confirmed although the authorization had lapsed"
    assert held.hold_cause == "payer_authorization_lapsed" and held.confirmed_at is None
    assert published(engine, patient.coi, "slot.confirmed.v1") == []
    [hold] = published(engine, patient.coi, "slot.held.v2")
    assert hold["reason_code"] == SlotReasonCode.PAYER_AUTHORIZATION_LAPSED
    assert webhook_kinds(engine, patient.coi)[-1] == "slot.held"
    items = {item.kind: item for item in worklist(engine, patient.coi)}
    assert set(items) == {"attention", "on_hold"}
    assert "payer_authorization_lapsed" in items["attention"].detail

    apply(engine, renewed(patient, held.infusion_on - timedelta(days=1)))  # still short of day 0
    assert appointment_of(engine, appointment_id).state is AppointmentState.ON_HOLD
    assert published(engine, patient.coi, "slot.resumed.v2") == []

    apply(engine, renewed(patient, held.infusion_on))

    confirmed = appointment_of(engine, appointment_id)
    assert confirmed.state is AppointmentState.CONFIRMED
    [resumed] = published(engine, patient.coi, "slot.resumed.v2")
    assert resumed["reason_code"] == SlotReasonCode.PAYER_AUTHORIZATION_RENEWED
    assert len(published(engine, patient.coi, "slot.confirmed.v1")) == 1
    assert webhook_kinds(engine, patient.coi)[-2:] == ["slot.resumed", "slot.confirmed"]
    assert worklist(engine, patient.coi) == []


def test_a_withdrawn_qualification_holds_at_delivery_until_the_site_is_qualified_again(
    engine: Engine,
) -> None:
    patient = Patient()
    apply(engine, accepted_v2(patient, expires_on=FAR, windows=ALWAYS), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)
    apply(engine, qualification_changed(patient, []), patient.delivered())

    held = appointment_of(engine, appointment_id)
    assert held.state is AppointmentState.ON_HOLD and held.hold_cause == "site_qualification_lapsed"
    [hold] = published(engine, patient.coi, "slot.held.v2")
    assert hold["reason_code"] == SlotReasonCode.SITE_QUALIFICATION_LAPSED

    apply(engine, qualification_changed(patient, ALWAYS))

    assert appointment_of(engine, appointment_id).state is AppointmentState.CONFIRMED
    [resumed] = published(engine, patient.coi, "slot.resumed.v2")
    assert resumed["reason_code"] == SlotReasonCode.SITE_QUALIFICATION_RENEWED


def test_a_v1_case_knows_neither_fact_and_is_confirmed_as_before(engine: Engine) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.dispatched(in_days(2)))
    appointment_id = book(engine, patient.coi)
    apply(engine, patient.delivered())
    assert appointment_of(engine, appointment_id).state is AppointmentState.CONFIRMED
