"""Ordinary mistakes, sent to the running services as a caller would: every one is a 4xx problem document
that names the problem, never a 5xx, and nothing the caller sent comes back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog
from tests.e2e.conftest import COORDINATOR, COURIER, RunningStack
from tests.e2e.journey import order_body, place_accepted_order, scan, shipment_for
from tests.e2e.test_epcis_capture import epcis_document, object_event

pytestmark = pytest.mark.e2e
PATIENT = {"name": "Jane Q. Doe", "date_of_birth": "2019-04-02", "medical_record_number": "MRN-998877"}
JSON = {"Content-Type": "application/json"}


def a_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["instance"] == response.headers["X-Correlation-ID"]
    for identifying in PATIENT.values():
        assert identifying not in response.text
    return body


def pointers(body: dict[str, Any]) -> set[str]:
    return {error["pointer"] for error in body["errors"]}


async def test_an_order_with_coerced_values_is_refused_naming_each_field_and_not_the_patient(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    body = order_body(
        patient={**PATIENT, "date_of_birth": 20190402}, eligibility_attested="yes", ordered_on=0
    )
    response = await http.post(f"{stack.orders}/orders", json=body, headers=COORDINATOR)
    problem = a_problem(response, 422)
    assert pointers(problem) == {"/patient/date_of_birth", "/eligibility_attested", "/ordered_on"}


async def test_a_number_in_a_string_is_not_a_number(stack: RunningStack, http: httpx.AsyncClient) -> None:
    site = {"timezone": "Europe/Paris", "infusions_per_day": "2", "admissions_capacity": 4}
    response = await http.put(f"{stack.scheduling}/sites/TC-STRICT", json=site, headers=COORDINATOR)
    assert pointers(a_problem(response, 422)) == {"/infusions_per_day"}


async def test_bodies_that_are_too_big_too_deep_not_utf8_or_not_json_are_4xx_on_every_service(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    routes = [f"{stack.orders}/orders", f"{stack.tracking}/capture", f"{stack.scheduling}/sites/TC-STRICT"]
    for url in routes:
        headers = COURIER if url.endswith("/capture") else COORDINATOR
        big = json.dumps(order_body(patient={**PATIENT, "name": "x" * 5_000_000})).encode()
        method = http.put if url.endswith("TC-STRICT") else http.post
        sent = {**headers, **JSON}
        assert "at most" in a_problem(await method(url, content=big, headers=sent), 413)["detail"]
        deep = b'{"patient": ' + b"[" * 950 + b"]" * 950 + b"}"
        assert "nested deeper" in a_problem(await method(url, content=deep, headers=sent), 400)["detail"]
        latin1 = json.dumps({"patient": {"name": "Zoë"}}, ensure_ascii=False).encode("latin-1")
        assert "not" in a_problem(await method(url, content=latin1, headers=sent), 400)["detail"]
        plain = {**headers, "Content-Type": "text/plain"}
        assert a_problem(await method(url, content=b"{}", headers=plain), 415)


async def test_a_scan_with_nan_is_422_and_a_container_of_another_shipment_is_409(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    first = await shipment_for(http, stack, events, (await place_accepted_order(http, stack))["coi"])
    second = await shipment_for(http, stack, events, (await place_accepted_order(http, stack))["coi"])
    body = json.dumps(scan("checkpoint", ["CHW4321260000014"])).replace("-180.0", "NaN")
    response = await http.post(
        f"{stack.tracking}/shipments/{first['id']}/scans", content=body, headers={**COURIER, **JSON}
    )
    assert pointers(a_problem(response, 422)) == {"/temperature_celsius"}

    container = {
        "container_id": f"DS-{first['id'][:8]}",
        "charged_at": "2026-11-30T08:00:00Z",
        "validated_hold_hours": 240,
    }
    declared = await http.put(
        f"{stack.tracking}/shipments/{first['id']}/container", json=container, headers=COURIER
    )
    assert declared.status_code == 200, declared.text
    taken = await http.put(
        f"{stack.tracking}/shipments/{second['id']}/container", json=container, headers=COURIER
    )
    assert "another shipment" in a_problem(taken, 409)["detail"]
    again = await http.put(
        f"{stack.tracking}/shipments/{first['id']}/container", json=container, headers=COURIER
    )
    assert again.status_code == 200, again.text


async def test_conflicts_and_missing_things_are_problems(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    a_problem(
        await http.get(f"{stack.orders}/orders/00000000-0000-4000-8000-000000000000", headers=COORDINATOR),
        404,
    )
    a_problem(await http.get(f"{stack.orders}/orders/not-an-id", headers=COORDINATOR), 422)
    a_problem(await http.get(f"{stack.tracking}/shipments"), 401)
    a_problem(await http.post(f"{stack.orders}/orders", json=order_body(), headers=COURIER), 403)
    order = await place_accepted_order(http, stack)
    skipped = await http.post(
        f"{stack.orders}/orders/{order['id']}/status", json={"status": "infused"}, headers=COORDINATOR
    )
    assert a_problem(skipped, 409)["type"] == "urn:cgt:problem:conflict"


async def test_a_nul_character_in_free_text_is_refused_on_every_database(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    shipment = await shipment_for(http, stack, events, (await place_accepted_order(http, stack))["coi"])
    body = scan("checkpoint", ["CHW4321260000014"], location="Milan\u0000hub")
    response = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans", json=body, headers=COURIER
    )
    assert pointers(a_problem(response, 422)) == {"/location"}
    order = order_body(patient={**PATIENT, "name": "Jane\u0000Doe"})
    assert pointers(
        a_problem(await http.post(f"{stack.orders}/orders", json=order, headers=COORDINATOR), 422)
    ) == {"/patient/name"}
    by_coi = await http.get(f"{stack.tracking}/shipments", params={"coi": "CHW\u0000"}, headers=COURIER)
    assert pointers(a_problem(by_coi, 422)) == {"/coi"}
    case = await http.get(f"{stack.scheduling}/cases/CHW%00", headers=COORDINATOR)
    assert pointers(a_problem(case, 422)) == {"/coi"}
    event = object_event("arriving", ["CHW4321260000014"], shipment=shipment["id"])
    event["readPoint"] = {"id": "urn:epc:id:sgln:4012345.00005.0\u0000"}
    captured = await http.post(
        f"{stack.tracking}/capture",
        content=json.dumps(epcis_document(event)),
        headers={**COURIER, "Content-Type": "application/ld+json"},
    )
    assert pointers(a_problem(captured, 422)) == {"/epcisBody/eventList/0/readPoint/id"}


async def test_a_registry_entry_naming_what_is_not_registered_points_at_it(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    prescriber = {"npi": "1245319599", "name": "Dr. P", "treatment_center_ids": ["TC-BOSTON", "TC-NOWHERE"]}
    unknown_site = await http.post(f"{stack.orders}/prescribers", json=prescriber, headers=COORDINATOR)
    assert pointers(a_problem(unknown_site, 422)) == {"/treatment_center_ids/1"}
    assert "TC-NOWHERE" not in unknown_site.text
    certification = {
        "therapy_code": "NO-SUCH-THERAPY",
        "effective_on": "2026-01-01",
        "expires_on": "2027-01-01",
    }
    unknown_therapy = await http.post(
        f"{stack.orders}/treatment-centers/TC-BOSTON/certifications", json=certification, headers=COORDINATOR
    )
    assert pointers(a_problem(unknown_therapy, 422)) == {"/therapy_code"}
    assert "NO-SUCH-THERAPY" not in unknown_therapy.text
