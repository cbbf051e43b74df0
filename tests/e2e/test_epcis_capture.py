"""GS1 EPCIS 2.0 capture over HTTP on the real broker and database: couriers' documents become scans."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cgt_contracts.events import ShipmentQuarantinedV2

from deploy.observe import EventLog
from tests.e2e.conftest import COORDINATOR, COURIER, OTHER_COURIER, RunningStack
from tests.e2e.journey import place_accepted_order, place_released_order, shipment_for
from tests.unit.test_epcis import COI, NOT_A_SCAN, OTHER_EVENTS

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
    others = json.loads(json.dumps(list(OTHER_EVENTS.values())).replace(COI, order["coi"]))
    for other in others:
        other.pop("eventID", None)
    documents = [epcis_document(object_event("shipping", [order["coi"]]), *others)]
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
        by_index = {e["event_index"]: e for e in body["events"]}
        assert [by_index[i]["outcome"] for i in range(5)] == [
            "applied",
            "applied",
            "applied",
            "refused",
            "refused",
        ]
        assert by_index[1]["reason"].startswith("aggregation: ") and by_index[2]["reason"].startswith(
            "readings: "
        )
        assert by_index[3]["reason"].startswith(f"TransformationEvent {NOT_A_SCAN}")
        assert by_index[4]["reason"] == f"AssociationEvent {NOT_A_SCAN}"


# --- every temperature, in every event (I2) -------------------------------------------------------------


def sensor_report(**report: Any) -> list[dict[str, Any]]:
    return [{"sensorReport": [{"type": "Temperature", "uom": "CEL", **report}]}]


async def shipment_state(http: httpx.AsyncClient, stack: RunningStack, shipment_id: str) -> dict[str, Any]:
    response = await http.get(f"{stack.tracking}/shipments/{shipment_id}", headers=COORDINATOR)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def test_a_sensor_alarm_quarantines_and_the_later_delivery_is_not_clean(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    alarm = object_event("shipping", [coi])
    alarm["sensorElementList"] = sensor_report(exception="ALARM_CONDITION")
    result = (await capture(http, stack, epcis_document(alarm))).json()
    [event] = result["events"]
    assert event["outcome"] == "applied" and event["scan"]["accepted"] and event["scan"]["quarantined"]
    quarantined = await events.wait_for(lambda e: e.type == "shipment.quarantined.v2" and e.subject == coi)
    assert "sensor_alarm" in quarantined.data.reason_codes  # type: ignore[union-attr]
    state = await shipment_state(http, stack, shipment["id"])
    assert "the temperature sensor reports 'ALARM_CONDITION'" in state["quarantine_reason"]
    delivery = (await capture(http, stack, epcis_document(object_event("receiving", [coi])))).json()
    assert delivery["events"][0]["scan"]["shipment_status"] == "quarantined"
    state = await shipment_state(http, stack, shipment["id"])
    assert state["physical_status"] == "delivered" and state["status"] == "quarantined"


def inspecting(coi: str, shipment: str) -> dict[str, Any]:
    return object_event("inspecting", [coi], celsius=-120.0)


def sensor_reporting(coi: str, shipment: str) -> dict[str, Any]:
    return {**object_event("sensor_reporting", [coi], celsius=-120.0), "action": "ADD"}


def packed(coi: str, shipment: str) -> dict[str, Any]:
    event = object_event("packing", [], celsius=-120.0)
    del event["epcList"]
    return {
        **event,
        "type": "AggregationEvent",
        "action": "ADD",
        "parentID": "urn:epc:id:sscc:4012345.0000000077",
        "childEPCs": [f"https://id.gs1.org/01/09520123456788/21/{coi}"],
    }


def transaction(coi: str, shipment: str) -> dict[str, Any]:
    event = object_event("transporting", [], celsius=-120.0, shipment=shipment)
    return {**event, "type": "TransactionEvent", "action": "ADD", "epcList": []}


@pytest.mark.parametrize("build", [inspecting, sensor_reporting, packed, transaction])
async def test_a_warm_reading_in_an_event_that_is_not_a_scan_quarantines(
    stack: RunningStack,
    http: httpx.AsyncClient,
    events: EventLog,
    build: Callable[[str, str], dict[str, Any]],
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    result = (await capture(http, stack, epcis_document(build(coi, shipment["id"])))).json()
    [event] = result["events"]
    assert event["outcome"] == "applied" and event["shipment_id"] == shipment["id"], event
    await events.wait_for(lambda e: e.type == "temperature.excursion.v1" and e.subject == coi)
    state = await shipment_state(http, stack, shipment["id"])
    assert state["status"] == "quarantined" and "-120.0 °C" in state["quarantine_reason"]
    assert state["physical_status"] == "planned", "readings move nothing"


async def test_a_series_is_stored_reading_by_reading_and_a_warm_maximum_counts(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    now = datetime.now(UTC).replace(microsecond=0)
    times = [(now - timedelta(minutes=m)).isoformat() for m in (20, 10, 0)]
    series = object_event("shipping", [coi])
    series["sensorElementList"] = [
        {
            "sensorReport": [
                {"type": "Temperature", "uom": "CEL", "time": times[0], "value": -185.0},
                {"type": "Temperature", "uom": "CEL", "time": times[1], "value": -184.0, "maxValue": -140.0},
                {"type": "Temperature", "uom": "CEL", "time": times[2], "value": -183.0},
            ]
        }
    ]
    result = (await capture(http, stack, epcis_document(series))).json()
    assert result["events"][0]["scan"]["quarantined"] is True
    readings = (
        await http.get(f"{stack.tracking}/shipments/{shipment['id']}/readings", headers=COORDINATOR)
    ).json()
    stored = [(datetime.fromisoformat(r["at"]), r["celsius"]) for r in readings if r["source"] == "epcis"]
    assert stored == [
        (datetime.fromisoformat(t), c) for t, c in zip(times, (-185.0, -140.0, -183.0), strict=True)
    ]


# --- EPCIS as the standard means it ------------------------------------------------------------------------


async def test_a_pick_up_and_a_delivery_in_one_document_apply_in_event_time_order_without_naming_it(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    picked = object_event("shipping", [coi])
    picked["eventTime"] = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()  # after it was planned
    delivered = object_event("receiving", [coi])
    delivered["epcList"] = [f"https://id.gs1.org/01/09520123456788/21/{coi}"]
    result = (await capture(http, stack, epcis_document(delivered, picked))).json()
    assert result["success"] is True, result["events"]
    assert [(e["outcome"], e["scan"]["shipment_status"]) for e in result["events"]] == [
        ("applied", "delivered"),
        ("applied", "dispatched"),
    ]
    await events.wait_for(lambda e: e.type == "shipment.delivered.v1" and e.subject == coi)
    assert (await shipment_state(http, stack, shipment["id"]))["physical_status"] == "delivered"


async def test_an_event_id_reused_with_other_content_is_a_conflict_put_before_qa(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    first = object_event("shipping", [coi])
    assert (await capture(http, stack, epcis_document(first))).json()["success"] is True
    same = (await capture(http, stack, epcis_document(json.loads(json.dumps(first))))).json()
    assert same["events"][0]["outcome"] == "duplicate"
    warmer = {**first, "sensorElementList": sensor_report(value=-120.0)}
    result = (await capture(http, stack, epcis_document(warmer))).json()
    [event] = result["events"]
    assert event["outcome"] == "refused" and "captured before with different content" in event["reason"]
    await events.wait_for(
        lambda e: (
            isinstance(e, ShipmentQuarantinedV2)
            and e.subject == coi
            and "event_conflict" in e.data.reason_codes
        )
    )
    state = await shipment_state(http, stack, shipment["id"])
    assert "captured before with different content" in state["quarantine_reason"]
    assert "-120.0 °C" in state["quarantine_reason"], "the conflicting event's warm reading is judged too"


async def test_the_same_scan_under_a_new_event_id_is_a_duplicate_stored_once(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    """A courier system that retries with a fresh eventID sends the same scan: it is reported as a
    duplicate (naming the first scan), not applied again, and the scan ledger holds it once."""
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    first = object_event("shipping", [coi], shipment=shipment["id"])
    [applied] = (await capture(http, stack, epcis_document(first))).json()["events"]
    assert applied["outcome"] == "applied"
    retry = {**first, "eventID": f"urn:uuid:{uuid.uuid4()}"}
    [again] = (await capture(http, stack, epcis_document(retry))).json()["events"]
    assert again["outcome"] == "duplicate", again
    assert applied["scan"]["scan_id"] in again["reason"]
    scans = (await http.get(f"{stack.tracking}/shipments/{shipment['id']}/scans", headers=COORDINATOR)).json()
    assert [scan["scan_type"] for scan in scans].count("pick_up") == 1


async def test_an_error_declaration_retracts_the_scan_and_puts_the_shipment_before_qa(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    picked = object_event("shipping", [coi])
    assert (await capture(http, stack, epcis_document(picked))).json()["success"] is True
    declaration = {"declarationTime": datetime.now(UTC).isoformat(), "reason": "incorrect_data"}
    declared = (
        await capture(http, stack, epcis_document({**picked, "errorDeclaration": declaration}))
    ).json()
    [event] = declared["events"]
    assert event["outcome"] == "applied" and "EPCIS error declaration retracts event" in event["reason"]
    scans = (await http.get(f"{stack.tracking}/shipments/{shipment['id']}/scans", headers=COORDINATOR)).json()
    [scan] = scans
    assert scan["retracted_at"] and scan["retraction_reason"].startswith(
        f"EPCIS error declaration retracts event {picked['eventID']} (reason: incorrect_data)"
    )
    quarantined = await events.wait_for(lambda e: e.type == "shipment.quarantined.v2" and e.subject == coi)
    assert quarantined.data.reason_codes == ["error_declaration"]  # type: ignore[union-attr]
    state = await shipment_state(http, stack, shipment["id"])
    assert (
        state["status"] == "quarantined" and "EPCIS error declaration retracts" in state["quarantine_reason"]
    )
    unknown = {**object_event("shipping", [coi]), "errorDeclaration": declaration}
    refused = (await capture(http, stack, epcis_document(unknown))).json()
    assert refused["events"][0]["outcome"] == "refused"
    assert refused["events"][0]["reason"] == (
        f"the errorDeclaration names event {unknown['eventID']}, which was never captured"
    )


async def test_bags_packed_into_another_container_than_the_declared_one_is_a_coi_break(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    declared = await http.put(
        f"{stack.tracking}/shipments/{shipment['id']}/container",
        json={
            "container_id": f"DS-{uuid.uuid4().hex[:8].upper()}",
            "charged_at": datetime.now(UTC).isoformat(),
            "validated_hold_hours": 240,
        },
        headers=COURIER,
    )
    assert declared.status_code == 200, declared.text
    result = (await capture(http, stack, epcis_document(packed(coi, shipment["id"])))).json()
    assert result["events"][0]["outcome"] == "applied"
    state = await shipment_state(http, stack, shipment["id"])
    assert state["status"] == "quarantined"
    assert "COI break: container 'urn:epc:id:sscc:4012345.0000000077' scanned" in state["quarantine_reason"]
