"""The order's state gates the product, on the real broker and databases: COI tracking follows order
intake's events (a cancelled order's shipments take no scan, over HTTP or Kafka; a return leg waits for
the manufacturer's release; an outbound leg exists only once its collection is recorded). And a scan or a
logger batch sent twice is stored once: with the same `Idempotency-Key`, or without one."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cgt_contracts.events import CourierScanData, CourierScanSubmitted, ScanType, ShipmentScannedV2

from deploy.observe import EventLog
from services.common.topics import COURIER_SCANS
from tests.e2e.conftest import COORDINATOR, COURIER, QA, RunningStack
from tests.e2e.journey import (
    place_accepted_order,
    place_released_order,
    record_collection_and_manufacturing,
    record_release,
    release_product,
    scan,
    shipment_for,
)
from tests.support.infra import publish_courier_scan, wait_committed

pytestmark = pytest.mark.e2e


async def shipments_of(http: httpx.AsyncClient, stack: RunningStack, coi: str) -> dict[str, dict[str, Any]]:
    """The COI's legs, by leg."""
    response = await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COORDINATOR)
    return {s["leg"]: s for s in response.json()}


async def wait_until(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, ready: Any, timeout: float = 30.0
) -> dict[str, dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        legs = await shipments_of(http, stack, coi)
        if ready(legs):
            return legs
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the shipments of {coi} never got there: {legs}")
        await asyncio.sleep(0.05)


def courier_scan(shipment: dict[str, Any], kind: ScanType, **data: Any) -> CourierScanSubmitted:
    return CourierScanSubmitted(
        source="courier/cryo-express",
        subject=shipment["coi"],
        correlationid=f"gate-{uuid.uuid4()}",
        data=CourierScanData(
            shipment_id=uuid.UUID(shipment["id"]),
            scan_type=kind,
            bag_cois=[shipment["coi"]],
            location="JFK cargo",
            device_time=data.pop("device_time", datetime.now(UTC)),
            temperature_celsius=-180.0,
            courier_id="courier-ben",
            courier_company="CRYO-EXPRESS",
            **data,
        ),
    )


async def refused_scan(events: EventLog, coi: str, kind: str) -> str:
    """The refusal code of the COI's refused scan of this kind, once published."""
    event = await events.wait_for(
        lambda e: (
            isinstance(e, ShipmentScannedV2)
            and e.subject == coi
            and e.data.scan_type == kind
            and not e.data.accepted
        )
    )
    assert isinstance(event, ShipmentScannedV2)
    return event.data.refusal_code or ""


async def refused_or_accepted_checkpoint(events: EventLog, coi: str) -> None:
    await events.wait_for(
        lambda e: isinstance(e, ShipmentScannedV2) and e.subject == coi and e.data.scan_type == "checkpoint"
    )


async def test_a_cancelled_orders_shipments_take_no_scan_over_http_or_kafka(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    coi = order["coi"]
    await record_collection_and_manufacturing(http, stack, order["id"])
    await release_product(http, stack, order)
    returning = await shipment_for(http, stack, events, coi)
    picked = await http.post(
        f"{stack.tracking}/shipments/{returning['id']}/scans", json=scan("pick_up", [coi]), headers=COURIER
    )
    assert picked.json()["accepted"], picked.text

    cancelled = await http.post(
        f"{stack.orders}/orders/{order['id']}/cancel",
        json={"reason_code": "patient_withdrew"},
        headers=COORDINATOR,
    )
    assert cancelled.status_code == 200, cancelled.text
    legs = await wait_until(
        http, stack, coi, lambda legs: all(s["status"] == "cancelled" for s in legs.values())
    )
    assert set(legs) == {"outbound", "return"} and all(s["order_cancelled_at"] for s in legs.values())

    over_http = await http.post(
        f"{stack.tracking}/shipments/{returning['id']}/scans",
        json=scan("checkpoint", [coi], location="JFK cargo"),
        headers=COURIER,
    )
    assert over_http.status_code == 201
    assert not over_http.json()["accepted"] and "order was cancelled" in over_http.json()["refusal_reason"]
    await publish_courier_scan(
        stack.broker,
        courier_scan(returning, ScanType.DELIVERY).model_dump_json().encode(),
        coi.encode(),
    )
    refused = [await refused_scan(events, coi, kind) for kind in ("checkpoint", "delivery")]
    assert refused == ["order_cancelled", "order_cancelled"], refused
    after = (await shipments_of(http, stack, coi))["return"]
    assert after["status"] == "cancelled" and after["physical_status"] == "dispatched"
    assert after["custodian"] == "courier-ben" and after["delivered_at"] is None


async def test_a_return_pick_up_waits_for_the_release_and_an_outbound_leg_for_its_collection(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    coi = order["coi"]
    returning = await shipment_for(http, stack, events, coi)
    assert set(await shipments_of(http, stack, coi)) == {"return"}, "no outbound leg before a collection"
    too_early = await record_release(http, stack, order["id"])
    assert too_early.status_code == 409 and "this order is accepted" in too_early.json()["detail"]

    await record_collection_and_manufacturing(http, stack, order["id"])
    outbound = await shipment_for(http, stack, events, coi, leg="outbound")
    fresh = await http.post(
        f"{stack.tracking}/shipments/{outbound['id']}/scans",
        json=scan("pick_up", [coi], temperature=5.0),
        headers=COURIER,
    )
    assert fresh.json()["accepted"], "the collection is recorded: its leg is picked up"
    return_scans = f"{stack.tracking}/shipments/{returning['id']}/scans"
    before = await http.post(return_scans, json=scan("pick_up", [coi]), headers=COURIER)
    assert not before.json()["accepted"]
    assert "has not released the product for shipment" in before.json()["refusal_reason"]
    assert before.json()["shipment_status"] == "planned"

    assert (await record_release(http, stack, order["id"], "LOT-1")).status_code == 200
    with_courier = await http.post(
        f"{stack.orders}/orders/{order['id']}/manufacturing-release",
        json={"lot_number": "LOT-2", "released_at": datetime.now(UTC).isoformat()},
        headers=COURIER,
    )
    assert with_courier.status_code == 403
    again = await http.post(
        f"{stack.orders}/orders/{order['id']}/manufacturing-release",
        json={"lot_number": "LOT-1", "released_at": datetime.now(UTC).isoformat()},
        headers=QA,
    )
    assert again.status_code == 409, "released once"
    read = (await http.get(f"{stack.orders}/orders/{order['id']}", headers=COORDINATOR)).json()
    assert read["status"] == "product_released" and read["product_lot_number"] == "LOT-1"
    assert read["product_released_by"] == "coord-ana"
    published = await events.wait_for(
        lambda e: e.type == "product.released_for_shipment.v2" and e.subject == coi
    )
    assert published.data.lot_number == "LOT-1"  # type: ignore[union-attr]
    await wait_until(http, stack, coi, lambda legs: legs["return"]["product_released_at"])

    after = await http.post(return_scans, json=scan("pick_up", [coi]), headers=COURIER)
    assert after.json()["accepted"] and after.json()["shipment_status"] == "dispatched", after.text


async def test_a_return_pick_up_before_the_release_is_refused_on_kafka_too(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    returning = await shipment_for(http, stack, events, order["coi"])
    pick_up = courier_scan(returning, ScanType.PICK_UP, eta_at=datetime.now(UTC) + timedelta(days=2))
    await publish_courier_scan(stack.broker, pick_up.model_dump_json().encode(), order["coi"].encode())
    refused = await events.wait_for(lambda e: e.type == "shipment.scanned.v2" and e.subject == order["coi"])
    assert refused.data.accepted is False  # type: ignore[union-attr]
    assert refused.data.refusal_code == "product_not_released"  # type: ignore[union-attr]


async def test_an_idempotency_key_answers_a_scan_or_a_logger_batch_as_the_first_time(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    base = f"{stack.tracking}/shipments/{shipment['id']}"
    key = {"Idempotency-Key": f"scan-{uuid.uuid4()}"}
    body = scan("pick_up", [coi])
    first, second = [await http.post(f"{base}/scans", json=body, headers={**COURIER, **key}) for _ in "12"]
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and first.json()["shipment_status"] == "dispatched"
    other = await http.post(
        f"{base}/scans", json=scan("checkpoint", [coi], location="JFK cargo"), headers={**COURIER, **key}
    )
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    assert [(e["location"], e["pointer"]) for e in other.json()["errors"]] == [("header", "/Idempotency-Key")]

    batch = {"logger_id": "LG-1", "readings": [{"at": datetime.now(UTC).isoformat(), "celsius": -181.0}]}
    reading_key = {"Idempotency-Key": f"readings-{uuid.uuid4()}"}
    answers = [
        await http.post(f"{base}/readings", json=batch, headers={**COURIER, **reading_key}) for _ in "12"
    ]
    assert [a.status_code for a in answers] == [201, 201] and answers[0].json() == answers[1].json()
    changed = {**batch, "logger_id": "LG-2"}
    assert (
        await http.post(f"{base}/readings", json=changed, headers={**COURIER, **reading_key})
    ).status_code == 422

    scans = (await http.get(f"{base}/scans", headers=COORDINATOR)).json()
    readings = (await http.get(f"{base}/readings", headers=COORDINATOR)).json()
    assert [s["scan_type"] for s in scans] == ["pick_up"]
    assert [r["source"] for r in readings].count("logger:LG-1") == 1


async def test_the_same_scan_sent_twice_without_a_key_is_stored_once_over_http_and_kafka(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    base = f"{stack.tracking}/shipments/{shipment['id']}"
    body = scan("pick_up", [coi])
    first, again = [(await http.post(f"{base}/scans", json=body, headers=COURIER)).json() for _ in "12"]
    assert (
        again["scan_id"] == first["scan_id"]
        and again["accepted"]
        and again["shipment_status"] == "dispatched"
    )

    checkpoint = courier_scan(shipment, ScanType.CHECKPOINT)
    resent = checkpoint.model_copy(update={"id": uuid.uuid4()})  # a courier's retry: a new event, same scan
    for event in (checkpoint, resent):
        partition, offset = await publish_courier_scan(
            stack.broker, event.model_dump_json().encode(), coi.encode()
        )
    await wait_committed(stack.kafka, "coi-tracking-scans", COURIER_SCANS, partition, offset)
    scans = (await http.get(f"{base}/scans", headers=COORDINATOR)).json()
    assert [s["scan_type"] for s in scans] == ["pick_up", "checkpoint"], scans
    await refused_or_accepted_checkpoint(events, coi)
    published = [e for e in events.of(coi) if isinstance(e, ShipmentScannedV2)]
    assert len({e.data.scan_id for e in published}) == len(published) == 2
