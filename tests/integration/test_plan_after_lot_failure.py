"""A planned case whose lot fails, on SQLite and PostgreSQL (no broker; the event handed to the handler as
the consumer would): its booked chain is given back and new chains are offered at once for the next
collection under the same COI, which a coordinator books."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cgt_contracts.events import ManufacturingFailed, ManufacturingFailedData, ManufacturingFailureCode
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.unit_of_work import session_factory
from services.scheduling import handlers, plan_commands
from services.scheduling.domain import AppointmentState, PlanState
from services.scheduling.models import Appointment, Case, CasePlan
from tests.integration import test_plans
from tests.integration.test_plans import COORDINATOR, a_case

engine, client = test_plans.engine, test_plans.client  # the same fixtures: seeded SQLite and PostgreSQL
CONFIG = handlers.Config(receipt_buffer_hours=24)


def lot_fails(engine: Engine, coi: str) -> None:
    with session_factory(engine)() as session:
        case = session.get(Case, coi)
        assert case is not None
        event = ManufacturingFailed(
            source="cgt/order-intake",
            subject=coi,
            correlationid=f"test-{coi}",
            data=ManufacturingFailedData(
                order_id=case.order_id,
                coi=coi,
                collection_number=1,
                reason_code=ManufacturingFailureCode.STERILITY_FAILURE,
                failed_at=datetime.now(UTC),
                recorded_by="coord-ana",
            ),
        )
        handlers.handle(session, event, CONFIG)
        session.commit()


def plans_of(engine: Engine, coi: str) -> list[CasePlan]:
    with session_factory(engine)() as session:
        return list(
            session.exec(select(CasePlan).where(CasePlan.coi == coi).order_by(col(CasePlan.collection_on)))
        )


def test_a_planned_case_whose_lot_fails_is_offered_new_chains_and_books_one(
    engine: Engine, client: TestClient
) -> None:
    coi = a_case(engine)
    [first] = client.post(f"/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    answer = client.post(f"/cases/{coi}/plans/{first['plan_id']}/book", json={}, headers=COORDINATOR)
    assert answer.status_code == 201, answer.text
    booked = answer.json()

    lot_fails(engine, coi)

    plans = plans_of(engine, coi)
    assert {p.state for p in plans if str(p.id) == first["plan_id"]} == {PlanState.WITHDRAWN}
    reopened = [p for p in plans if p.state is PlanState.OFFERED]
    assert len(reopened) == 3 and all(p.appointment_id is None for p in reopened)
    with session_factory(engine)() as session:
        appointment = session.get(Appointment, uuid.UUID(booked["appointment_id"]))
        assert appointment is not None and appointment.state is AppointmentState.CANCELLED
        case = session.get(Case, coi)
        assert case is not None and case.attention == plan_commands.REOPENED
    items = [i for i in client.get("/worklist", headers=COORDINATOR).json() if i["coi"] == coi]
    assert [i["detail"] for i in items] == [plan_commands.REOPENED]

    again = client.post(f"/cases/{coi}/plans/{reopened[0].id}/book", json={}, headers=COORDINATOR)
    assert again.status_code == 201, again.text
    assert again.json()["appointment_id"] != booked["appointment_id"]


def test_an_unplanned_case_whose_lot_fails_is_not_planned_for_the_coordinator(engine: Engine) -> None:
    coi = a_case(engine)  # booked later from options, at the next lot's pick-up (as before plans)
    lot_fails(engine, coi)
    assert plans_of(engine, coi) == []
    with session_factory(engine)() as session:  # the failure was handled: its own worklist item, no plans
        case = session.get(Case, coi)
        assert case is not None and case.attention is not None
        assert case.attention.startswith("manufacturing failed: record the new collection")
