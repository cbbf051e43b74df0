"""Every scan rule on times and ETAs gives the same decision whichever way the scan arrives: HTTP, a
`courier.scan.v1` event on the real broker, or a GS1 EPCIS capture. Each case is a pick-up of a planned
shipment that must be refused with the same reason on every way, and leave the shipment planned."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cgt_contracts.events import CourierScanData, CourierScanSubmitted, ScanType

from deploy.observe import EventLog
from services.common.topics import COURIER_SCANS
from tests.e2e.conftest import COORDINATOR, COURIER, RunningStack
from tests.e2e.journey import place_released_order, shipment_for
from tests.e2e.test_epcis_capture import epcis_document, object_event
from tests.support.infra import produce

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Case:
    name: str
    device_time: timedelta
    """Offset from now of the device's (or the EPCIS event's) time."""
    eta: timedelta | None
    """Offset from now of the ETA; None: no ETA given (EPCIS gives none: its adapter plans one)."""
    reason: str
    over_epcis: bool = True


CASES = [
    Case(
        "dated in 2099", timedelta(days=365 * 73), timedelta(days=365 * 73 + 2), "ahead of the server's clock"
    ),
    Case(
        "dated before the shipment was planned", -timedelta(days=3), timedelta(days=2), "before the shipment"
    ),
    Case("without an ETA", timedelta(0), None, "must give the expected delivery time", over_epcis=False),
    Case("with an ETA in the past", timedelta(0), -timedelta(hours=1), "is in the past", over_epcis=False),
]


def _at(offset: timedelta) -> datetime:
    return datetime.now(UTC) + offset


async def over_http(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], case: Case
) -> None:
    body: dict[str, Any] = {
        "scan_type": "pick_up",
        "bag_cois": [shipment["coi"]],
        "location": "AGC Biologics, Milan",
        "device_time": _at(case.device_time).isoformat(),
        "temperature_celsius": -181.0,
    }
    if case.eta is not None:
        body["eta_at"] = _at(case.eta).isoformat()
    response = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans", json=body, headers=COURIER
    )
    assert response.status_code == 201, response.text


async def over_kafka(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], case: Case
) -> None:
    event = CourierScanSubmitted(
        source="courier/cryo-express",
        subject=shipment["coi"],
        correlationid=f"rules-{uuid.uuid4()}",
        data=CourierScanData(
            shipment_id=uuid.UUID(shipment["id"]),
            scan_type=ScanType.PICK_UP,
            bag_cois=[shipment["coi"]],
            location="AGC Biologics, Milan",
            device_time=_at(case.device_time),
            temperature_celsius=-181.0,
            eta_at=_at(case.eta) if case.eta is not None else None,
            courier_id="courier-ben",
            courier_company="CRYO-EXPRESS",
        ),
    )
    await produce(stack.bootstrap, COURIER_SCANS, event.model_dump_json().encode(), shipment["coi"].encode())


async def over_epcis(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], case: Case
) -> None:
    event = object_event("shipping", [shipment["coi"]], shipment=shipment["id"])
    event["eventTime"] = _at(case.device_time).isoformat()
    response = await http.post(
        f"{stack.tracking}/capture",
        content=json.dumps(epcis_document(event)),
        headers={**COURIER, "Content-Type": "application/ld+json"},
    )
    assert response.status_code == 202, response.text


WAYS: dict[str, Callable[[httpx.AsyncClient, RunningStack, dict[str, Any], Case], Awaitable[None]]] = {
    "http": over_http,
    "kafka": over_kafka,
    "epcis": over_epcis,
}


async def decision_on(
    way: str, stack: RunningStack, http: httpx.AsyncClient, events: EventLog, case: Case
) -> tuple[bool, str, str]:
    """Send the case's pick-up of a fresh shipment one way: (accepted, refusal reason, shipment status)."""
    order = await place_released_order(http, stack)
    coi: str = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    await WAYS[way](http, stack, shipment, case)
    scanned = await events.wait_for(lambda e: e.type == "shipment.scanned.v1" and e.subject == coi)
    read = await http.get(f"{stack.tracking}/shipments/{shipment['id']}", headers=COORDINATOR)
    data = scanned.data
    return data.accepted, data.refusal_reason or "", read.json()["status"]  # type: ignore[union-attr]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_scan_rule_gives_the_same_decision_on_every_way_in(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, case: Case
) -> None:
    ways = [way for way in WAYS if way != "epcis" or case.over_epcis]
    decisions = {way: await decision_on(way, stack, http, events, case) for way in ways}
    for way, (accepted, reason, status) in decisions.items():
        assert not accepted and case.reason in reason and status == "planned", (way, reason, status)


# --- custody (I3): the same refusal whichever way the scan comes -----------------------------------------

COURIER_TOKENS = {"courier-ben": "Bearer dev-courier-token", "courier-cy": "Bearer dev-courier2-token"}


async def custody_scan(
    way: str,
    stack: RunningStack,
    http: httpx.AsyncClient,
    shipment: dict[str, Any],
    kind: str,
    by: str,
    **extra: Any,
) -> None:
    """A hand-off or delivery scan of `shipment` by courier `by`, sent `way`."""
    now = datetime.now(UTC)
    if way == "http":
        body = {
            "scan_type": kind,
            "bag_cois": [shipment["coi"]],
            "location": "JFK cargo",
            "device_time": now.isoformat(),
            "temperature_celsius": -180.0,
            **extra,
        }
        headers = {"Authorization": COURIER_TOKENS[by]}
        response = await http.post(
            f"{stack.tracking}/shipments/{shipment['id']}/scans", json=body, headers=headers
        )
        assert response.status_code == 201, response.text
    elif way == "kafka":
        data = CourierScanData(
            shipment_id=uuid.UUID(shipment["id"]),
            scan_type=ScanType(kind),
            bag_cois=[shipment["coi"]],
            location="JFK cargo",
            device_time=now,
            temperature_celsius=-180.0,
            courier_id=by,
            courier_company="CRYO-EXPRESS",
            **extra,
        )
        event = CourierScanSubmitted(
            source="courier/cryo-express",
            subject=shipment["coi"],
            correlationid=f"custody-{uuid.uuid4()}",
            data=data,
        )
        await produce(
            stack.bootstrap, COURIER_SCANS, event.model_dump_json().encode(), shipment["coi"].encode()
        )
    else:
        assert kind == "delivery"
        document = epcis_document(object_event("receiving", [shipment["coi"]], shipment=shipment["id"]))
        headers = {"Authorization": COURIER_TOKENS[by], "Content-Type": "application/ld+json"}
        response = await http.post(f"{stack.tracking}/capture", content=json.dumps(document), headers=headers)
        assert response.status_code == 202, response.text


CUSTODY_CASES = [
    ("delivery", "courier-cy", {}, "custody is with courier-ben", ("http", "kafka", "epcis")),
    (
        "hand_off",
        "courier-ben",
        {"handed_to": "nobody-xyz"},
        "nobody-xyz is not a registered courier",
        ("http", "kafka"),
    ),
    ("hand_off", "courier-ben", {"handed_to": "courier-dee"}, "works for OTHER-LOGISTICS", ("http", "kafka")),
]


@pytest.mark.parametrize(
    ("kind", "by", "extra", "reason", "ways"), CUSTODY_CASES, ids=[c[3] for c in CUSTODY_CASES]
)
async def test_a_custody_rule_gives_the_same_decision_on_every_way_in(
    stack: RunningStack,
    http: httpx.AsyncClient,
    events: EventLog,
    kind: str,
    by: str,
    extra: dict[str, Any],
    reason: str,
    ways: tuple[str, ...],
) -> None:
    for way in ways:
        reason_given, holders = await custody_decision(way, stack, http, events, kind, by, extra)
        assert reason in reason_given, (way, reason_given)
        assert holders == ["courier-ben"], (way, holders)


async def custody_decision(
    way: str,
    stack: RunningStack,
    http: httpx.AsyncClient,
    events: EventLog,
    kind: str,
    by: str,
    extra: dict[str, Any],
) -> tuple[str, list[str]]:
    """After courier-ben's pick-up, the refusal of the custody scan sent `way`, and who the ledger names."""
    order = await place_released_order(http, stack)
    coi: str = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    await over_http(
        http, stack, shipment, Case("pick-up by courier-ben", timedelta(0), timedelta(days=2), "")
    )
    await events.wait_for(lambda e: e.type == "shipment.dispatched.v1" and e.subject == coi)
    await custody_scan(way, stack, http, shipment, kind, by, **extra)
    refused = await events.wait_for(
        lambda e: e.type == "shipment.scanned.v1" and e.subject == coi and e.data.accepted is False
    )
    ledger = (
        await http.get(f"{stack.tracking}/shipments/{shipment['id']}/ledger", headers=COORDINATOR)
    ).json()
    return refused.data.refusal_reason or "", [entry["to_party"] for entry in ledger["entries"]]  # type: ignore[union-attr]
