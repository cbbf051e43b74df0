"""Three things hold a product back from its infusion — a quarantine, an out-of-specification file not
complete, a lapsed site qualification or payer authorization — and each can be lifted by its own event.
On SQLite and PostgreSQL (no broker): lifting one never lets the others through (`domain.still_holding`,
asked by `commands.go_ahead` on every way), and the hold then names what still holds it."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from services.scheduling.domain import AppointmentState
from tests.integration import test_oos_scheduling
from tests.integration.test_chain_permissions import knows, renewed
from tests.integration.test_oos_scheduling import (
    COORDINATOR,
    Patient,
    apply,
    published,
    the_appointment,
)

engine, client = test_oos_scheduling.engine, test_oos_scheduling.client  # seeded, with a site webhook


def planned(engine: Engine, client: TestClient, patient: Patient) -> date:
    """The case is planned and booked (its infusion leg tentative); the authorization covers day 0."""
    apply(engine, patient.accepted())
    [plan] = client.post(f"/cases/{patient.coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    booked = client.post(f"/cases/{patient.coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text
    infusion_on = date.fromisoformat(plan["infusion_on"])
    knows(engine, patient.coi, expires_on=infusion_on)
    return infusion_on


def test_a_completed_file_does_not_confirm_past_a_lapsed_authorization(
    engine: Engine, client: TestClient
) -> None:
    patient = Patient()
    infusion_on = planned(engine, client, patient)
    apply(engine, patient.released_oos(), patient.dispatched())
    assert the_appointment(engine, patient.coi).hold_cause == "out_of_specification"
    knows(engine, patient.coi, expires_on=infusion_on - timedelta(days=1))  # the payer's end moved earlier
    apply(engine, patient.delivered())
    assert the_appointment(engine, patient.coi).state is AppointmentState.ON_HOLD

    apply(engine, patient.file_completed())

    held = the_appointment(engine, patient.coi)
    assert held.state is AppointmentState.ON_HOLD, "confirmed although the authorization had lapsed"
    assert held.hold_cause == "payer_authorization_lapsed", "the hold names what holds it now"
    assert published(engine, patient.coi, "slot.confirmed.v1") == []
    assert published(engine, patient.coi, "slot.resumed.v2") == []

    apply(engine, renewed(patient, infusion_on))  # type: ignore[arg-type]

    assert the_appointment(engine, patient.coi).state is AppointmentState.CONFIRMED
    assert [e["reason_code"] for e in published(engine, patient.coi, "slot.resumed.v2")] == [
        "payer_authorization_renewed"
    ]


def test_a_renewal_does_not_resume_past_a_pending_file(engine: Engine, client: TestClient) -> None:
    patient = Patient()
    infusion_on = planned(engine, client, patient)
    knows(engine, patient.coi, expires_on=infusion_on - timedelta(days=1))
    apply(engine, patient.dispatched(), patient.delivered())  # in specification so far: the lapse holds it
    assert the_appointment(engine, patient.coi).hold_cause == "payer_authorization_lapsed"
    apply(engine, patient.released_oos())  # (a release recorded late: the file now pending too)

    apply(engine, renewed(patient, infusion_on))  # type: ignore[arg-type]

    held = the_appointment(engine, patient.coi)
    assert held.state is AppointmentState.ON_HOLD and held.hold_cause == "out_of_specification"
    assert published(engine, patient.coi, "slot.confirmed.v1") == []
    apply(engine, patient.file_completed())
    assert the_appointment(engine, patient.coi).state is AppointmentState.CONFIRMED


def test_a_qa_release_does_not_resume_past_a_pending_file(engine: Engine, client: TestClient) -> None:
    patient = Patient()
    planned(engine, client, patient)
    apply(engine, patient.dispatched(), patient.quarantined(), patient.released_oos())
    assert the_appointment(engine, patient.coi).hold_cause == "quarantine"

    apply(engine, patient.qa_released())

    held = the_appointment(engine, patient.coi)
    assert held.state is AppointmentState.ON_HOLD and held.hold_cause == "out_of_specification"
    assert published(engine, patient.coi, "slot.resumed.v2") == []
    apply(engine, patient.file_completed())
    resumed = the_appointment(engine, patient.coi)
    assert resumed.state is AppointmentState.TENTATIVE, "resumed, confirmed only by its delivery (I4)"
