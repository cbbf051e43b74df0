"""A booked plan's legs and slips on SQLite and PostgreSQL (no broker): each leg's event marks it done, a
postponed collection re-plans the later legs or is refused when capacity is gone, and a delayed lot moves
the infusion and tells the treatment center (event and webhook)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cgt_contracts.events import (
    CollectionRecorded,
    CollectionRecordedData,
    ManufacturingDelayCode,
    ManufacturingDelayed,
    ManufacturingDelayedData,
    ManufacturingStarted,
    ManufacturingStartedData,
    ShipmentDelayedDataV2,
    ShipmentDelayedV2,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentLeg,
)
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.outbox import OutboxMessage
from services.common.unit_of_work import session_factory
from services.scheduling import handlers
from services.scheduling.models import Appointment, CollectionCenter, WebhookDelivery, WebhookEndpoint
from tests.integration.test_plans import COORDINATOR, a_case, client, engine  # noqa: F401

NOTE = "NOTE-POSTPONE-9Z: fever on the day"
CONFIG = handlers.Config(receipt_buffer_hours=24)


def book_first(client: TestClient, coi: str) -> dict[str, Any]:  # noqa: F811
    offered = client.post(f"/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR)
    assert offered.status_code == 200, offered.text
    booked = client.post(
        f"/cases/{coi}/plans/{offered.json()[0]['plan_id']}/book", json={}, headers=COORDINATOR
    )
    assert booked.status_code == 201, booked.text
    result: dict[str, Any] = booked.json()
    return result


def published(engine: Engine, coi: str, kind: str) -> list[dict[str, Any]]:  # noqa: F811
    with session_factory(engine)() as session:
        rows = session.exec(
            select(OutboxMessage).where(OutboxMessage.key == coi).order_by(col(OutboxMessage.id))
        ).all()
    events = [json.loads(row.payload) for row in rows]
    return [e["data"] for e in events if e["type"] == kind]


def the_plan(client: TestClient, coi: str) -> dict[str, Any]:  # noqa: F811
    plans = client.get(f"/cases/{coi}/plans", headers=COORDINATOR).json()
    [booked] = [p for p in plans if p["state"] == "booked"]
    return booked  # type: ignore[no-any-return]


def handle(engine: Engine, event: Any) -> None:  # noqa: F811
    with session_factory(engine)() as session:
        handlers.handle(session, event, CONFIG)
        session.commit()


def envelope(coi: str) -> dict[str, str]:
    return {"source": "cgt/order-intake", "subject": coi, "correlationid": "test"}


def test_each_legs_event_marks_it_done_once(engine: Engine, client: TestClient) -> None:  # noqa: F811
    coi = a_case(engine)
    book_first(client, coi)
    at = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    recorded = CollectionRecorded(
        **envelope(coi),
        data=CollectionRecordedData(
            order_id=uuid.uuid4(),
            coi=coi,
            collection_number=1,
            din="G123417654321A",
            collected_at=at,
            treatment_center_id="TC-BOSTON",
        ),
    )
    handle(engine, recorded)
    handle(
        engine,
        recorded.model_copy(
            update={
                "id": uuid.uuid4(),
                "data": recorded.data.model_copy(update={"collected_at": at + timedelta(days=1)}),
            }
        ),
    )
    started = ManufacturingStarted(
        **envelope(coi),
        data=ManufacturingStartedData(
            order_id=uuid.uuid4(), coi=coi, collection_number=1, started_at=at + timedelta(days=2)
        ),
    )
    handle(engine, started)
    plan = the_plan(client, coi)
    assert datetime.fromisoformat(plan["collection_done_at"]) == at, "the first instant stays"
    assert datetime.fromisoformat(plan["manufacturing_started_at"]) == at + timedelta(days=2)
    assert plan["product_released_at"] is None and plan["product_delivered_at"] is None


def test_a_postponed_collection_re_plans_the_later_legs_and_tells_the_sites(
    engine: Engine,  # noqa: F811
    client: TestClient,  # noqa: F811
) -> None:
    coi = a_case(engine)
    booked = book_first(client, coi)
    later = date.fromisoformat(booked["collection_on"]) + timedelta(days=7)
    same = client.post(
        f"/cases/{coi}/plans/{booked['plan_id']}/collection-postponement",
        json={"collection_on": booked["collection_on"], "reason_code": "patient_condition"},
        headers=COORDINATOR,
    )
    assert same.status_code == 422 and same.json()["errors"][0]["pointer"] == "/collection_on", same.text
    moved = client.post(
        f"/cases/{coi}/plans/{booked['plan_id']}/collection-postponement",
        json={"collection_on": later.isoformat(), "reason_code": "patient_condition", "note": NOTE},
        headers=COORDINATOR,
    )
    assert moved.status_code == 200, moved.text
    plan = moved.json()
    assert plan["collection_on"] == later.isoformat() and plan["replan_cause"] == "collection_postponed"
    assert plan["infusion_on"] > booked["infusion_on"] and plan["release_on"] > booked["release_on"]
    assert plan["postponement_note"] == NOTE
    [event] = published(engine, coi, "plan.replanned.v1")
    assert (event["cause"], event["reason_code"], event["collection_on"]) == (
        "collection_postponed",
        "patient_condition",
        later.isoformat(),
    )
    assert event["previous_infusion_on"] == booked["infusion_on"]
    [rescheduled] = published(engine, coi, "slot.rescheduled.v2")
    assert rescheduled["infusion_on"] == plan["infusion_on"]
    with session_factory(engine)() as session:
        appointment = session.get(Appointment, uuid.UUID(booked["appointment_id"]))
        assert appointment is not None and appointment.infusion_on.isoformat() == plan["infusion_on"]
        assert NOTE not in json.dumps([m.payload for m in session.exec(select(OutboxMessage)).all()])


def test_a_postponement_to_a_day_with_no_chair_left_is_refused_and_changes_nothing(
    engine: Engine,  # noqa: F811
    client: TestClient,  # noqa: F811
) -> None:
    coi = a_case(engine)
    booked = book_first(client, coi)
    with session_factory(engine)() as session:
        center = session.get(CollectionCenter, "TC-BOSTON")
        assert center is not None
        center.chairs_per_day = 1
        session.add(center)
        session.commit()
    other = book_first(client, a_case(engine))  # takes the next day's only chair
    assert other["collection_on"] > booked["collection_on"]
    refused = client.post(
        f"/cases/{coi}/plans/{booked['plan_id']}/collection-postponement",
        json={"collection_on": other["collection_on"], "reason_code": "collection_center_capacity"},
        headers=COORDINATOR,
    )
    assert refused.status_code == 409, refused.text
    assert f"no apheresis chair left on {other['collection_on']}" in refused.text
    plan = the_plan(client, coi)
    assert (plan["collection_on"], plan["infusion_on"], plan["replanned_at"]) == (
        booked["collection_on"],
        booked["infusion_on"],
        None,
    )
    assert published(engine, coi, "plan.replanned.v1") == []


def test_a_delayed_lot_moves_the_infusion_and_the_site_is_told(
    engine: Engine,  # noqa: F811
    client: TestClient,  # noqa: F811
) -> None:
    coi = a_case(engine)
    with session_factory(engine)() as session:
        session.add(
            WebhookEndpoint(treatment_center_id="TC-BOSTON", url="https://tc.example/hooks", secret="x")
        )
        session.commit()
    booked = book_first(client, coi)
    new_release = date.fromisoformat(booked["release_on"]) + timedelta(days=10)
    handle(
        engine,
        ManufacturingDelayed(
            **envelope(coi),
            data=ManufacturingDelayedData(
                order_id=uuid.uuid4(),
                coi=coi,
                collection_number=1,
                expected_release_on=new_release,
                reason_code=ManufacturingDelayCode.RELEASE_TESTING,
                delayed_at=datetime.now(UTC),
                recorded_by="coord-ana",
            ),
        ),
    )
    plan = the_plan(client, coi)
    assert plan["release_on"] == new_release.isoformat() and plan["replan_cause"] == "manufacturing_delayed"
    assert plan["collection_on"] == booked["collection_on"]
    assert plan["infusion_on"] > booked["infusion_on"]
    [event] = published(engine, coi, "plan.replanned.v1")
    assert (event["reason_code"], event["infusion_on"]) == ("release_testing", plan["infusion_on"])
    [moved] = published(engine, coi, "slot.rescheduled.v2")
    assert moved["reason_code"] == "delay" and moved["infusion_on"] == plan["infusion_on"]
    with session_factory(engine)() as session:
        kinds = sorted(
            d.kind for d in session.exec(select(WebhookDelivery).where(WebhookDelivery.coi == coi))
        )
        hook = session.exec(select(WebhookDelivery).where(WebhookDelivery.kind == "plan.replanned")).one()
    assert kinds == ["plan.replanned", "slot.proposed", "slot.rescheduled"]
    assert json.loads(hook.payload)["infusion_on"] == plan["infusion_on"]


def test_a_delayed_shipment_carries_the_booked_plan_and_its_delivery_marks_the_last_leg(
    engine: Engine,  # noqa: F811
    client: TestClient,  # noqa: F811
) -> None:
    coi = a_case(engine)
    booked = book_first(client, coi)
    shipment = {"shipment_id": uuid.uuid4(), "coi": coi, "treatment_center_id": "TC-BOSTON"}
    head = {"source": "cgt/coi-tracking", "subject": coi, "correlationid": "test"}
    planned_eta = datetime.fromisoformat(booked["eta_at"])
    handle(
        engine,
        ShipmentDispatched(
            **head,
            data=ShipmentDispatchedData(**shipment, dispatched_at=datetime.now(UTC), eta_at=planned_eta),
        ),
    )
    late = planned_eta + timedelta(days=9)  # past the plan's conditioning start: the infusion must move
    handle(
        engine,
        ShipmentDelayedV2(
            **head,
            data=ShipmentDelayedDataV2(
                **shipment,
                scan_id=uuid.uuid4(),
                leg=ShipmentLeg.RETURN,
                previous_eta_at=planned_eta,
                eta_at=late,
            ),
        ),
    )
    plan = the_plan(client, coi)
    assert datetime.fromisoformat(plan["eta_at"]) == late and plan["replan_cause"] == "shipment_delayed"
    assert plan["conditioning_start_on"] > late.date().isoformat() > booked["infusion_on"]
    with session_factory(engine)() as session:
        appointment = session.get(Appointment, uuid.UUID(booked["appointment_id"]))
        assert appointment is not None and appointment.infusion_on.isoformat() == plan["infusion_on"]
    [event] = published(engine, coi, "plan.replanned.v1")
    assert event["reason_code"] == "delay" and event["infusion_on"] == plan["infusion_on"]

    delivered_at = datetime.now(UTC)
    handle(
        engine,
        ShipmentDelivered(
            **head,
            data=ShipmentDeliveredData(
                **shipment,
                delivered_at=delivered_at,
                coi_verified=True,
                temperature_record_clean=True,
                max_temperature_celsius=-180.0,
            ),
        ),
    )
    assert datetime.fromisoformat(the_plan(client, coi)["product_delivered_at"]) == delivered_at
    [confirmed] = published(engine, coi, "slot.confirmed.v1")
    assert confirmed["appointment_id"] == booked["appointment_id"]
