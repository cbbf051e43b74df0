"""GS1 EPCIS 2.0 capture over HTTP on the real broker and database: couriers' documents become scans."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog
from tests.e2e.conftest import COORDINATOR, COURIER, OTHER_COURIER, RunningStack
from tests.e2e.journey import place_accepted_order, place_released_order, shipment_for
from tests.unit.test_epcis import OTHER_EVENTS

pytestmark = pytest.mark.e2e


def epcis_document(*events: dict[str, Any]) -> dict[str, Any]:
    return {
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": datetime.now(UTC).isoformat(),
        "epcisBody": {"eventList": list(events)},
    }


def object_event(
    step: str, cois: list[str], celsius: float = -181.0, shipment: str | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": f"urn:uuid:{uuid.uuid4()}",
        "action": "OBSERVE",
        "bizStep": step,
        "epcList": [f"urn:epc:id:giai:4012345.{coi}" for coi in cois],
        "eventTime": datetime.now(UTC).isoformat(),
        "eventTimeZoneOffset": "+00:00",
        "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
        "sensorElementList": [{"sensorReport": [{"type": "Temperature", "value": celsius, "uom": "CEL"}]}],
    }
    if shipment:
        event["bizTransactionList"] = [{"type": "desadv", "bizTransaction": f"urn:uuid:{shipment}"}]
    return event


async def capture(
    http: httpx.AsyncClient, stack: RunningStack, document: dict[str, Any], **headers: str
) -> httpx.Response:
    return await http.post(
        f"{stack.tracking}/capture",
        content=json.dumps(document),
        headers={**COURIER, "Content-Type": "application/ld+json", **headers},
    )


async def test_an_epcis_document_becomes_scans_and_the_capture_can_be_polled(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    shipping = object_event("shipping", [coi])
    accepted = await capture(http, stack, epcis_document(shipping))
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["Location"]
    polled = (await http.get(f"{stack.tracking}{location}", headers=COURIER)).json()
    assert polled["success"] is True and polled["running"] is False
    [result] = polled["events"]
    assert result["outcome"] == "applied" and result["shipment_id"] == shipment["id"]
    assert result["scan"]["shipment_status"] == "dispatched" and result["scan"]["coi_verified"]
    await events.wait_for(lambda e: e.type == "shipment.dispatched.v1" and e.subject == coi)

    again = (await capture(http, stack, epcis_document(shipping))).json()
    assert again["events"][0]["outcome"] == "duplicate"

    receiving = (await capture(http, stack, epcis_document(object_event("receiving", [coi])))).json()
    assert receiving["events"][0]["scan"]["shipment_status"] == "delivered"
    await events.wait_for(lambda e: e.type == "shipment.delivered.v1" and e.subject == coi)
    scans = (await http.get(f"{stack.tracking}/shipments/{shipment['id']}/scans", headers=COORDINATOR)).json()
    assert [s["scan_type"] for s in scans] == ["pick_up", "delivery"]
    assert all(s["epcis_event_id"] for s in scans)
    assert (await http.get(f"{stack.tracking}{location}", headers=OTHER_COURIER)).status_code == 404


async def test_a_wrong_coi_in_an_epcis_event_breaks_the_chain_of_identity(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    other = (await place_accepted_order(http, stack))["coi"]
    wrong = object_event("shipping", [other], shipment=shipment["id"])
    result = (await capture(http, stack, epcis_document(wrong))).json()
    scan = result["events"][0]["scan"]
    assert scan["coi_verified"] is False and scan["quarantined"] is True
    await events.wait_for(lambda e: e.type == "coi.break.v1" and e.subject == order["coi"])


async def test_a_warm_sensor_report_quarantines(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    await shipment_for(http, stack, events, order["coi"])
    result = (
        await capture(http, stack, epcis_document(object_event("shipping", [order["coi"]], celsius=-120.0)))
    ).json()
    assert result["events"][0]["scan"]["quarantined"] is True
    await events.wait_for(lambda e: e.type == "temperature.excursion.v1" and e.subject == order["coi"])


async def test_rollback_applies_nothing_when_one_event_is_refused_and_proceed_applies_the_rest(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    good = object_event("shipping", [order["coi"]])
    bad = object_event("destroying", [order["coi"]])
    rolled_back = (await capture(http, stack, epcis_document(good, bad))).json()
    assert rolled_back["success"] is False
    assert [e["outcome"] for e in rolled_back["events"]] == ["not_applied", "refused"]
    read = (await http.get(f"{stack.tracking}/shipments/{shipment['id']}", headers=COORDINATOR)).json()
    assert read["status"] == "planned"
    proceeded = (
        await capture(http, stack, epcis_document(good, bad), **{"GS1-Capture-Error-Behaviour": "proceed"})
    ).json()
    assert [e["outcome"] for e in proceeded["events"]] == ["applied", "refused"]


async def test_an_invalid_document_is_refused_naming_the_fields(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    document = epcis_document(object_event("shipping", ["CHW4321260000014"]))
    document["epcisBody"]["eventList"][0]["eventTime"] = "yesterday"
    response = await capture(http, stack, document)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert any(e["pointer"] == "/epcisBody/eventList/0/eventTime" for e in errors)
    not_json = {**COURIER, "Content-Type": "application/ld+json"}
    assert (
        await http.post(f"{stack.tracking}/capture", content=b"{not json", headers=not_json)
    ).status_code == 400
    assert (
        await http.post(f"{stack.tracking}/capture", content=b"{not json", headers=COURIER)
    ).status_code == 415
    behaviour = await capture(http, stack, epcis_document(), **{"GS1-Capture-Error-Behaviour": "maybe"})
    assert behaviour.status_code == 422
    assert [e["pointer"] for e in behaviour.json()["errors"]] == ["/GS1-Capture-Error-Behaviour"]


async def test_documents_of_every_kind_are_accepted_or_refused_with_a_reason_over_http(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    await shipment_for(http, stack, events, order["coi"])
    documents = [epcis_document(object_event("shipping", [order["coi"]]), *OTHER_EVENTS.values())]
    documents.append(
        {**epcis_document(object_event("receiving", [order["coi"]])), "type": "EPCISQueryDocument"}
    )
    for document in documents:
        response = await capture(http, stack, document, **{"GS1-Capture-Error-Behaviour": "proceed"})
        assert response.status_code in (202, 400), response.text
        body = response.json()
        if response.status_code == 400:
            assert [(e["pointer"], e["detail"]) for e in body["errors"]] == [
                ("/type", "must be 'EPCISDocument', got 'EPCISQueryDocument'")
            ]
            continue
        assert [e["outcome"] for e in body["events"]] == ["applied"] + ["refused"] * len(OTHER_EVENTS)
        for event, kind in zip(body["events"][1:], OTHER_EVENTS, strict=True):
            assert event["reason"] == f"{kind} is not a shipment scan: only ObjectEvents are captured"
