"""Vein-to-vein plans on SQLite and PostgreSQL (no broker): offered and booked over HTTP as one chain, every
leg held at once or none, and two coordinators racing for the same last manufacturing slot never both get
it (the manufacturing site's lock, taken first)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.identifiers import SEQUENCE_CAPACITY, coi_identifier
from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import commands, plan_commands
from services.scheduling.domain import AppointmentState, PlanState
from services.scheduling.models import (
    TABLES,
    Appointment,
    Case,
    CasePlan,
    CollectionCenter,
    ManufacturingCapacity,
    Site,
)
from services.scheduling.runtime import seed
from tests.support.apps import scheduling_client
from tests.support.infra import database
from tests.support.races import Contender

TOKENS = {"tokens": {"coordinator": {"subject": "coord-ana", "role": "coordinator"}}}
COORDINATOR = {"Authorization": "Bearer coordinator"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        seed(engine)  # TC-BOSTON its own collection center; WASKYRA made at MFG-AGC-MILAN
        yield engine


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with scheduling_client(engine, tmp_path, TOKENS) as client:  # never started: no broker
        yield client


def a_case(engine: Engine, site: str = "TC-BOSTON") -> str:
    coi = coi_identifier("W4321", 2026, uuid.uuid4().int % SEQUENCE_CAPACITY)
    with session_factory(engine)() as session:
        session.add(
            Case(
                coi=coi,
                order_id=uuid.uuid4(),
                patient_ref=f"PSN-{coi[-4:]}",
                therapy_code="WASKYRA",
                treatment_center_id=site,
                conditioning_days=4,
            )
        )
        session.commit()
    return coi


def slots_per_week(engine: Engine, slots: int) -> None:
    with session_factory(engine)() as session:
        capacity = session.get(ManufacturingCapacity, ("MFG-AGC-MILAN", "WASKYRA"))
        assert capacity is not None
        capacity.slots_per_week = slots
        session.add(capacity)
        session.commit()


def count(engine: Engine, model: Any, *where: Any) -> int:
    with session_factory(engine)() as session:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def test_a_plan_is_offered_and_booked_as_one_chain(engine: Engine, client: TestClient) -> None:
    coi = a_case(engine)
    answer = client.post(f"/cases/{coi}/plans", json={"count": 3}, headers=COORDINATOR)
    assert answer.status_code == 200, answer.text
    plans = answer.json()
    assert len(plans) == 3
    assert [p["collection_on"] for p in plans] == sorted({p["collection_on"] for p in plans})
    for plan in plans:  # every leg after the one before it
        assert (
            plan["collection_center_id"] == "TC-BOSTON" and plan["manufacturing_site_id"] == "MFG-AGC-MILAN"
        )
        assert plan["collection_on"] < plan["manufacturing_start_on"] < plan["release_on"]
        assert plan["release_on"] < plan["eta_at"][:10] < plan["conditioning_start_on"] < plan["infusion_on"]
        assert plan["state"] == "offered" and plan["appointment_id"] is None

    chosen = plans[1]
    booked = client.post(f"/cases/{coi}/plans/{chosen['plan_id']}/book", json={}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text
    assert booked.json() | {"state": "offered", "appointment_id": None} == chosen
    with session_factory(engine)() as session:
        appointment = session.exec(select(Appointment).where(Appointment.coi == coi)).one()
        assert appointment.state is AppointmentState.TENTATIVE
        assert str(appointment.id) == booked.json()["appointment_id"]
        assert appointment.infusion_on.isoformat() == chosen["infusion_on"]
        states = {str(p.id): p.state for p in session.exec(select(CasePlan).where(CasePlan.coi == coi))}
    assert states == {p["plan_id"]: PlanState.WITHDRAWN for p in plans} | {
        chosen["plan_id"]: PlanState.BOOKED
    }
    assert count(engine, OutboxMessage, col(OutboxMessage.event_type) == "slot.proposed.v1") == 1

    again = client.post(f"/cases/{coi}/plans/{plans[0]['plan_id']}/book", json={}, headers=COORDINATOR)
    assert again.status_code == 409
    assert again.json()["reasons"] == ["the plan is withdrawn: ask for plans again"]
    assert client.post(f"/cases/{coi}/plans", json={}, headers=COORDINATOR).json()["reasons"] == [
        "this case already has a booked plan"
    ]
    other = a_case(engine)
    unknown = client.post(f"/cases/{other}/plans/{chosen['plan_id']}/book", json={}, headers=COORDINATOR)
    assert unknown.status_code == 404  # another case's plan


def test_a_plan_whose_manufacturing_slot_went_books_no_leg(engine: Engine, client: TestClient) -> None:
    slots_per_week(engine, 1)
    first, second = a_case(engine), a_case(engine)
    offered = {
        coi: client.post(f"/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR).json()[0]
        for coi in (first, second)
    }
    assert offered[first]["manufacturing_week"] == offered[second]["manufacturing_week"]
    assert client.post(
        f"/cases/{first}/plans/{offered[first]['plan_id']}/book", json={}, headers=COORDINATOR
    ).is_success

    late = client.post(
        f"/cases/{second}/plans/{offered[second]['plan_id']}/book", json={}, headers=COORDINATOR
    )
    assert late.status_code == 409
    week = offered[second]["manufacturing_week"]
    assert late.json()["reasons"][0] == f"no manufacturing slot left at MFG-AGC-MILAN in {week}"
    assert count(engine, Appointment, col(Appointment.coi) == second) == 0, "an infusion without its slot"
    assert count(engine, CasePlan, col(CasePlan.state) == PlanState.BOOKED) == 1, (
        "a collection without its slot"
    )
    # asked again, the second case is planned around the slot taken
    replanned = client.post(f"/cases/{second}/plans", json={"count": 1}, headers=COORDINATOR).json()[0]
    assert replanned["manufacturing_week"] != week


def test_a_case_without_a_collection_center_is_not_planned(engine: Engine, client: TestClient) -> None:
    coi = a_case(engine, "TC-DENVER")
    answer = client.post(f"/cases/{coi}/plans", json={}, headers=COORDINATOR)
    assert answer.status_code == 409
    assert answer.json()["reasons"] == ["TC-DENVER has no collection center"]


# ---------------------------------------------------------------- the last manufacturing slot


def denver_collects_for_itself(engine: Engine) -> None:
    with session_factory(engine)() as session:
        session.add(CollectionCenter(id="TC-DENVER", timezone="America/Denver", chairs_per_day=1))
        denver = session.get(Site, "TC-DENVER")
        assert denver is not None
        denver.collection_center_id = "TC-DENVER"
        session.add(denver)
        session.commit()


def offered(engine: Engine, coi: str) -> list[CasePlan]:
    with session_factory(engine)() as session:
        case = session.get(Case, coi)
        assert case is not None
        rows = plan_commands.offer_plans(session, case, count=5, default_buffer_hours=24)
        session.commit()
        for row in rows:
            session.refresh(row)
            session.expunge(row)
        return rows


def book(session: Session, coi: str, plan_id: uuid.UUID, coordinator: str) -> CasePlan:
    case = session.get(Case, coi)
    assert case is not None
    return plan_commands.book_plan(
        session, case, plan_id, booked_by=coordinator, default_buffer_hours=24, correlation_id=coordinator
    )


def waiting_on_a_lock(engine: Engine) -> Callable[[], bool]:
    """PostgreSQL: another session waits on a lock. SQLite: its writer queues in the process, where
    nothing shows it: half a second without reaching the read stands for it."""
    if engine.dialect.name == "sqlite":
        since = time.monotonic()
        return lambda: time.monotonic() - since > 0.5

    def waiting() -> bool:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            )

    return waiting


def test_two_coordinators_never_take_the_same_last_manufacturing_slot(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cases at two treatment centers, each its own collection center, and one slot a week at Milan:
    only the manufacturing site's lock stands between the two bookings. Without it the PostgreSQL run
    books both (checked); on SQLite the first write of a transaction already locks the whole file."""
    denver_collects_for_itself(engine)
    slots_per_week(engine, 1)
    boston, denver = a_case(engine, "TC-BOSTON"), a_case(engine, "TC-DENVER")
    boston_plan = offered(engine, boston)[0]
    denver_plan = next(
        p for p in offered(engine, denver) if p.manufacturing_week == boston_plan.manufacturing_week
    )
    second: dict[str, Any] = {}

    def second_coordinator() -> None:
        with session_factory(engine)() as session:
            try:
                second["plan"] = book(session, denver, denver_plan.id, "coordinator-b")
                session.commit()
            except commands.Refused as refused:
                session.rollback()
                second["refused"] = refused.reasons

    # The second one arrives once it has counted the slots — or is seen waiting for the first to commit.
    contender = Contender(monkeypatch, plan_commands, "plan_load", second_coordinator, after=True)
    with session_factory(engine)() as first:
        book(first, boston, boston_plan.id, "coordinator-a")  # holds Milan's lock until it commits
        contender.arrive(or_waiting=waiting_on_a_lock(engine))
        first.commit()
    contender.finish()

    assert "plan" not in second, "two plans took the last manufacturing slot"
    assert second["refused"][0] == (
        f"no manufacturing slot left at MFG-AGC-MILAN in {boston_plan.manufacturing_week}"
    )
    assert count(engine, CasePlan, col(CasePlan.state) == PlanState.BOOKED) == 1
    assert count(engine, Appointment) == 1
