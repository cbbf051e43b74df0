"""Order intake through its HTTP API on the real database and broker: registry, checks, COI, lifecycle."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cgt_contracts.events import ShipmentDispatched, ShipmentDispatchedData

from deploy.observe import EventLog
from services.common.identifiers import COI_PATTERN, DIN_PATTERN, has_valid_check
from services.common.topics import SHIPMENTS
from services.order_intake.domain import luhn_check_digit, npi_is_valid
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, RunningStack
from tests.e2e.journey import (
    order_body,
    place_accepted_order,
    record_collection_and_manufacturing,
    release_product,
    scan,
    shipment_for,
)
from tests.support.infra import produce, wait_committed

pytestmark = pytest.mark.e2e


async def post_order(
    http: httpx.AsyncClient, stack: RunningStack, body: dict[str, Any], **headers: str
) -> dict[str, Any]:
    response = await http.post(f"{stack.orders}/orders", json=body, headers={**COORDINATOR, **headers})
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


def a_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def reason_codes(order: dict[str, Any]) -> set[str]:
    return {reason["code"] for reason in order["rejection_reasons"]}


def today_plus(days: int) -> str:
    return (date.today() + timedelta(days=days)).isoformat()


async def new_site(http: httpx.AsyncClient, stack: RunningStack, certifications: list[dict[str, Any]]) -> str:
    """A fresh treatment center, its certifications, and a prescriber allowed there."""
    site = f"TC-{uuid.uuid4().hex[:6].upper()}"
    created = await http.post(
        f"{stack.orders}/treatment-centers",
        json={
            "id": site,
            "name": "Test QTC",
            "timezone": "Europe/Rome",
            "contacts": [{"name": "Cell lab", "role": "cell_lab", "email": "lab@example.org"}],
        },
        headers=COORDINATOR,
    )
    assert created.status_code == 201, created.text
    for certification in certifications:
        added = await http.post(
            f"{stack.orders}/treatment-centers/{site}/certifications", json=certification, headers=COORDINATOR
        )
        assert added.status_code == 201, added.text
    return site


async def test_the_registry_is_created_read_and_listed_by_coordinators(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    site = await new_site(http, stack, [{"therapy_code": "WASKYRA", "effective_on": today_plus(-30)}])
    read = (await http.get(f"{stack.orders}/treatment-centers/{site}", headers=COORDINATOR)).json()
    assert read["timezone"] == "Europe/Rome" and read["contacts"][0]["email"] == "lab@example.org"
    assert read["certifications"] == [
        {"therapy_code": "WASKYRA", "effective_on": today_plus(-30), "expires_on": None}
    ]
    assert site in [
        c["id"] for c in (await http.get(f"{stack.orders}/treatment-centers", headers=COORDINATOR)).json()
    ]
    therapies = (await http.get(f"{stack.orders}/therapies", headers=COORDINATOR)).json()
    waskyra = next(t for t in therapies if t["code"] == "WASKYRA")
    assert waskyra["long_term_follow_up"] is True and waskyra["storage_limit_celsius"] == -150.0
    prescriber = await http.post(
        f"{stack.orders}/prescribers",
        json={"npi": "1245319599", "name": "Dr. B", "treatment_center_ids": [site]},
        headers=COORDINATOR,
    )
    assert prescriber.status_code in (201, 409), prescriber.text
    assert npi_is_valid("1003000118")
    assert (await http.get(f"{stack.orders}/therapies", headers=CENTER)).status_code == 403


async def test_registry_input_errors_name_the_field(stack: RunningStack, http: httpx.AsyncClient) -> None:
    bad_zone = await http.post(
        f"{stack.orders}/treatment-centers",
        json={"id": "TC-X", "name": "X", "timezone": "Mars/Olympus"},
        headers=COORDINATOR,
    )
    assert bad_zone.status_code == 422 and bad_zone.json()["errors"][0]["pointer"] == "/timezone"
    bad_npi = await http.post(
        f"{stack.orders}/prescribers", json={"npi": "1234567890", "name": "Dr. X"}, headers=COORDINATOR
    )
    assert bad_npi.status_code == 422 and bad_npi.json()["errors"][0]["pointer"] == "/npi"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"consent": None}, "consent_missing"),
        (
            {"payer_authorization": {"reference": "PA-1", "expires_on": today_plus(-1)}},
            "payer_authorization_expired",
        ),
        ({"payer_authorization": None}, "payer_authorization_missing"),
        ({"eligibility_attested": False}, "eligibility_not_attested"),
        ({"prescriber_npi": "1234567890"}, "prescriber_npi_invalid"),
        ({"prescriber_npi": "1003000118"}, "prescriber_unknown"),
        ({"therapy_code": "ZYNTEGLO"}, "therapy_unknown"),
    ],
)
async def test_each_failed_check_rejects_the_order(
    stack: RunningStack, http: httpx.AsyncClient, change: dict[str, Any], code: str
) -> None:
    order = await post_order(http, stack, {**order_body(), **change})
    assert order["status"] == "rejected" and order["coi"] is None
    assert reason_codes(order) == {code}


def fresh_npi() -> str:
    prefix = f"{uuid.uuid4().int % 10**9:09d}"
    return prefix + str(luhn_check_digit("80840" + prefix))


async def test_site_certification_is_checked_on_the_order_date(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    expired = await new_site(
        http,
        stack,
        [{"therapy_code": "WASKYRA", "effective_on": today_plus(-400), "expires_on": today_plus(-1)}],
    )
    future = await new_site(http, stack, [{"therapy_code": "WASKYRA", "effective_on": today_plus(1)}])
    current = await new_site(
        http,
        stack,
        [
            {"therapy_code": "WASKYRA", "effective_on": today_plus(-400), "expires_on": today_plus(-100)},
            {"therapy_code": "WASKYRA", "effective_on": today_plus(-10), "expires_on": today_plus(0)},
        ],
    )
    npi = fresh_npi()
    created = await http.post(
        f"{stack.orders}/prescribers",
        json={"npi": npi, "name": "Dr. C", "treatment_center_ids": [expired, future, current]},
        headers=COORDINATOR,
    )
    assert created.status_code == 201, created.text
    for site in (expired, future):
        rejected = await post_order(http, stack, order_body(treatment_center_id=site, prescriber_npi=npi))
        assert reason_codes(rejected) == {"site_not_certified"}
    accepted = await post_order(http, stack, order_body(treatment_center_id=current, prescriber_npi=npi))
    assert accepted["status"] == "accepted"
    other_site = await post_order(http, stack, order_body(prescriber_npi=npi))
    assert reason_codes(other_site) == {"prescriber_not_at_site"}
    duplicate = await http.post(
        f"{stack.orders}/prescribers", json={"npi": npi, "name": "Dr. C"}, headers=COORDINATOR
    )
    assert duplicate.status_code == 409
    # A registered prescriber with no site yet is known, just not allowed here.
    siteless = fresh_npi()
    assert (
        await http.post(
            f"{stack.orders}/prescribers", json={"npi": siteless, "name": "Dr. D"}, headers=COORDINATOR
        )
    ).status_code == 201
    assert reason_codes(await post_order(http, stack, order_body(prescriber_npi=siteless))) == {
        "prescriber_not_at_site"
    }


async def test_a_rejected_order_lists_every_failed_check_and_says_so_on_the_bus(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await post_order(
        http, stack, order_body(treatment_center_id="TC-DENVER", consent=None, eligibility_attested=False)
    )
    expected = {"site_not_certified", "prescriber_not_at_site", "consent_missing", "eligibility_not_attested"}
    assert reason_codes(order) == expected
    assert all(reason["message"] for reason in order["rejection_reasons"])
    rejected = await events.wait_for(
        lambda e: e.type == "order.rejected.v2" and str(e.data.order_id) == order["id"]
    )
    assert set(rejected.data.reason_codes) == expected  # type: ignore[union-attr]


async def test_a_second_active_order_for_the_same_patient_is_refused_however_their_ref_is_spelled(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    body = order_body()
    first = await post_order(http, stack, body)
    patient = body["patient"]
    respelled = {
        **patient,
        "name": f" {patient['name'].upper()} ",
        "medical_record_number": patient["medical_record_number"].lower(),
    }
    for second in (
        order_body(patient_ref=first["patient_ref"], patient=patient),
        order_body(patient=respelled),
    ):
        refused = await http.post(f"{stack.orders}/orders", json=second, headers=COORDINATOR)
        problem = a_problem(refused, 409)
        assert "already has an active order" in problem["detail"]
        assert patient["name"].lower() not in refused.text.lower()
        assert patient["medical_record_number"].lower() not in refused.text.lower()
        assert patient["date_of_birth"] not in refused.text
    cancelled = await http.post(
        f"{stack.orders}/orders/{first['id']}/cancel",
        json={"reason_code": "duplicate_order"},
        headers=COORDINATOR,
    )
    assert cancelled.status_code == 200
    third = await post_order(http, stack, order_body(patient=respelled))  # a cancelled order does not block
    assert third["status"] == "accepted"


async def test_the_checks_use_the_servers_date_and_record_the_stated_one_beside_it(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    body = order_body(
        ordered_on=today_plus(-30), payer_authorization={"reference": "PA-OLD", "expires_on": today_plus(-1)}
    )
    order = await post_order(http, stack, body)
    assert reason_codes(order) == {"payer_authorization_expired"}
    assert (order["ordered_on"], order["stated_ordered_on"]) == (today_plus(0), today_plus(-30))


@pytest.mark.parametrize("born", [today_plus(1), "1899-12-31"])
async def test_an_impossible_date_of_birth_is_a_422_naming_the_field(
    stack: RunningStack, http: httpx.AsyncClient, born: str
) -> None:
    body = order_body()
    body["patient"] = {**body["patient"], "date_of_birth": born}
    refused = await http.post(f"{stack.orders}/orders", json=body, headers=COORDINATOR)
    problem = a_problem(refused, 422)
    assert [e["pointer"] for e in problem["errors"]] == ["/patient/date_of_birth"]
    assert born not in refused.text and body["patient"]["name"] not in refused.text
    listed = (
        await http.get(
            f"{stack.orders}/orders", params={"patient_ref": body["patient_ref"]}, headers=COORDINATOR
        )
    ).json()
    assert listed == []


async def test_an_idempotency_key_returns_the_first_order_and_never_creates_a_second(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    body = order_body()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    responses = await asyncio.gather(
        *(http.post(f"{stack.orders}/orders", json=body, headers={**COORDINATOR, **key}) for _ in range(5))
    )
    # One places the order; each of the others meets it either in flight (409, retry later) or answered
    # (200, the same order).
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 201, 409} and statuses.count(201) == 1, statuses
    for busy in (r for r in responses if r.status_code == 409):
        assert [e["pointer"] for e in busy.json()["errors"]] == ["/Idempotency-Key"]
        assert busy.headers["Retry-After"]
    placed = next(r.json() for r in responses if r.status_code == 201)
    assert all(r.json() == placed for r in responses if r.status_code == 200)
    again = await http.post(f"{stack.orders}/orders", json=body, headers={**COORDINATOR, **key})
    assert again.status_code == 200 and again.json() == placed
    assert placed["status"] == "accepted"
    mine = [
        o
        for o in (await http.get(f"{stack.orders}/orders", headers=COORDINATOR)).json()
        if o["patient_ref"] == body["patient_ref"]
    ]
    assert len(mine) == 1
    another = await http.post(f"{stack.orders}/orders", json=order_body(), headers={**COORDINATOR, **key})
    assert another.status_code == 422, another.text
    assert [e["pointer"] for e in another.json()["errors"]] == ["/Idempotency-Key"]


async def test_coi_identifiers_are_unique_and_check_under_concurrent_orders(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    responses = await asyncio.gather(
        *(http.post(f"{stack.orders}/orders", json=order_body(), headers=COORDINATOR) for _ in range(20))
    )
    cois = [r.json()["coi"] for r in responses]
    assert all(r.status_code == 201 for r in responses)
    assert len(set(cois)) == 20
    assert all(COI_PATTERN.match(c) and has_valid_check(c) for c in cois)


async def test_the_lifecycle_refuses_steps_out_of_order_and_keeps_its_history(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    step = f"{stack.orders}/orders/{order['id']}/status"
    skipped = await http.post(step, json={"status": "in_manufacturing"}, headers=COORDINATOR)
    assert skipped.status_code == 409 and "cannot become in_manufacturing" in skipped.json()["detail"]
    by_hand = await http.post(step, json={"status": "product_shipped"}, headers=COORDINATOR)
    assert by_hand.status_code == 409

    # A shipment event that does not fit the order's state is logged and left unapplied. (COI tracking no
    # longer dispatches a return leg before the product's release: the event comes as a stray one would.)
    shipment = await shipment_for(http, stack, events, order["coi"])
    stray = ShipmentDispatched(
        source="cgt/coi-tracking",
        subject=order["coi"],
        correlationid=f"stray-{uuid.uuid4()}",
        data=ShipmentDispatchedData(
            shipment_id=uuid.UUID(shipment["id"]),
            coi=order["coi"],
            treatment_center_id=shipment["treatment_center_id"],
            dispatched_at=datetime.now(UTC),
            eta_at=datetime.now(UTC) + timedelta(days=2),
        ),
    )
    partition, offset = await produce(
        stack.kafka, SHIPMENTS, stray.model_dump_json().encode(), order["coi"].encode()
    )
    await wait_committed(stack.kafka, "order-intake", SHIPMENTS, partition, offset)
    assert (await http.get(f"{stack.orders}/orders/{order['id']}", headers=COORDINATOR)).json()[
        "status"
    ] == "accepted"

    din = await record_collection_and_manufacturing(http, stack, order["id"])
    assert DIN_PATTERN.match(din) and has_valid_check(din) and din.startswith("B4567")
    collections = (
        await http.get(f"{stack.orders}/orders/{order['id']}/collections", headers=COORDINATOR)
    ).json()
    assert [(c["number"], c["din"], c["coi"]) for c in collections] == [(1, din, order["coi"])]
    for status in ("product_shipped",):
        assert (await http.post(step, json={"status": status}, headers=COORDINATOR)).status_code == 409
    history = (await http.get(f"{stack.orders}/orders/{order['id']}/history", headers=COORDINATOR)).json()
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "submitted"),
        ("submitted", "accepted"),
        ("accepted", "cells_collected"),
        ("cells_collected", "in_manufacturing"),
    ]
    assert all(h["actor"] == "coord-ana" and h["at"] for h in history)


async def test_shipment_events_move_the_order_and_cancellation_stops_at_infusion(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    await record_collection_and_manufacturing(http, stack, order["id"])
    await release_product(http, stack, order)
    shipment = await shipment_for(http, stack, events, order["coi"])
    scans = f"{stack.tracking}/shipments/{shipment['id']}/scans"
    await http.post(scans, json=scan("pick_up", [order["coi"]]), headers=COURIER)
    await http.post(scans, json=scan("delivery", [order["coi"]]), headers=COURIER)
    delivered = await events.wait_for(
        lambda e: e.type == "shipment.delivered.v1" and e.subject == order["coi"]
    )
    topic, partition, offset = events.positions[str(delivered.id)]
    await wait_committed(stack.kafka, "order-intake", topic, partition, offset)
    history = (await http.get(f"{stack.orders}/orders/{order['id']}/history", headers=COORDINATOR)).json()
    by_event = [h for h in history if h["cause_event_id"]]
    assert [(h["to_status"], h["actor"]) for h in by_event] == [
        ("product_shipped", "cgt/coi-tracking"),
        ("product_delivered", "cgt/coi-tracking"),
    ]
    step = f"{stack.orders}/orders/{order['id']}/status"
    assert (await http.post(step, json={"status": "infused"}, headers=COORDINATOR)).json()[
        "status"
    ] == "infused"
    late = await http.post(
        f"{stack.orders}/orders/{order['id']}/cancel", json={"reason_code": "other"}, headers=COORDINATOR
    )
    assert late.status_code == 409


async def test_cancellation_records_reason_who_and_when_and_publishes_the_code(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    cancelled = await http.post(
        f"{stack.orders}/orders/{order['id']}/cancel",
        json={"reason_code": "patient_withdrew", "note": "withdrew consent by phone"},
        headers=COORDINATOR,
    )
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["cancelled_by"] == "coord-ana" and body["cancelled_at"]
    assert (body["cancelled_reason_code"], body["cancelled_note"]) == (
        "patient_withdrew",
        "withdrew consent by phone",
    )
    event = await events.wait_for(lambda e: e.type == "order.cancelled.v2" and e.subject == order["coi"])
    assert event.data.reason_code == "patient_withdrew"  # type: ignore[union-attr]
    again = await http.post(
        f"{stack.orders}/orders/{order['id']}/cancel", json={"reason_code": "other"}, headers=COORDINATOR
    )
    assert again.status_code == 409


async def test_a_treatment_center_sees_only_its_own_orders(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    elsewhere = await post_order(http, stack, order_body(treatment_center_id="TC-DENVER"))
    mine = await http.post(f"{stack.orders}/orders", json=order_body(), headers=CENTER)
    assert mine.status_code == 201 and mine.json()["status"] == "accepted"
    listed = (await http.get(f"{stack.orders}/orders", headers=CENTER)).json()
    assert listed and {o["treatment_center_id"] for o in listed} == {"TC-BOSTON"}
    other_site = await http.get(
        f"{stack.orders}/orders", params={"treatment_center_id": "TC-DENVER"}, headers=CENTER
    )
    assert other_site.status_code == 200 and other_site.json() == []
    read = await http.get(f"{stack.orders}/orders/{elsewhere['id']}", headers=CENTER)
    missing = await http.get(f"{stack.orders}/orders/{uuid.uuid4()}", headers=CENTER)
    assert read.status_code == missing.status_code == 404
    assert read.json() | {"instance": ""} == missing.json() | {"instance": ""}
    assert elsewhere["id"] in [
        o["id"] for o in (await http.get(f"{stack.orders}/orders", headers=COORDINATOR)).json()
    ]
    denver = await http.get(
        f"{stack.orders}/orders", params={"treatment_center_id": "TC-DENVER"}, headers=COORDINATOR
    )
    assert elsewhere["id"] in [o["id"] for o in denver.json()]
    assert {o["treatment_center_id"] for o in denver.json()} == {"TC-DENVER"}


async def test_patient_identity_is_encrypted_at_rest_and_never_logged_or_published(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    marker = f"Zelda Quux {uuid.uuid4().hex[:6]}"
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    body = order_body()
    body["patient"] = {"name": marker, "date_of_birth": "2018-12-24", "medical_record_number": mrn}
    order = await post_order(http, stack, body)
    await events.wait_for(lambda e: e.type == "order.accepted.v2" and e.subject == order["coi"])
    url = stack.stack.database_urls["order-intake"]
    if url.startswith("sqlite"):
        database = Path(url.removeprefix("sqlite:///"))
        stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    else:
        with psycopg.connect(url) as connection:
            rows = connection.execute("SELECT encrypted_identity FROM patient_record").fetchall()
            dump = connection.execute("SELECT * FROM therapy_order").fetchall()
        stored = repr(rows).encode() + repr(dump).encode()
    assert marker.encode() not in stored and mrn.encode() not in stored
    logs = b"".join(p.read_bytes() for p in stack.stack.workdir.glob("*.log"))
    assert marker.encode() not in logs and mrn.encode() not in logs
    assert all(marker.encode() not in value and mrn.encode() not in value for _, value, _ in events.raw)
    assert (
        "patient" not in (await http.get(f"{stack.orders}/orders/{order['id']}", headers=COORDINATOR)).json()
    )
