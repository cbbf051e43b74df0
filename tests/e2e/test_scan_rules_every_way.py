"""Every scan rule gives the same decision whichever way the scan arrives: an HTTP scan, a `courier.scan.v2`
event on the real broker, a GS1 EPCIS capture, or (for temperature rules) a logger upload. One table: each
row is a rule, the scan that tests it, the decision every way must reach (accepted or refused with the
reason, the shipment's status after, the quarantine reason) and the ways that can carry such a scan (EPCIS
carries no ETA, hand-off or container id; a logger upload only temperatures).

The rules live once, in services/coi_tracking/domain.py; this table is how we know no way in skips one."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cgt_contracts.events import CourierScanDataV2, CourierScanSubmittedV2, ScanType, ShipmentScannedV2

from deploy.observe import EventLog
from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import place_accepted_order, place_released_order, shipment_for
from tests.e2e.test_epcis_capture import epcis_document, object_event
from tests.support.infra import publish_courier_scan

pytestmark = pytest.mark.e2e

COURIERS = {
    "courier-ben": ("Bearer dev-courier-token", "CRYO-EXPRESS"),
    "courier-cy": ("Bearer dev-courier2-token", "CRYO-EXPRESS"),
}
RULE_LOCATION = "urn:epc:id:sgln:4012345.00099.0"
"""The location of the scan under test: its record is told from the set-up's by it (no event carries it)."""
SET_UP_LOCATION = "urn:epc:id:sgln:4012345.00001.0"
SEAL = "SEAL-RULES-1"
EPCIS_STEPS = {
    "pick_up": "shipping",
    "checkpoint": "arriving",
    "delivery": "receiving",
    "receipt": "accepting",
}
TWO_DAYS = timedelta(days=2)


@dataclass(frozen=True)
class Send:
    """The scan under test, as offsets from now and names; each way turns it into its own message."""

    kind: str
    by: str = "courier-ben"
    at: timedelta = timedelta(0)
    eta: timedelta | None = TWO_DAYS
    temperature: float | None = -181.0
    bags: str = "own"
    """own: the shipment's COI; foreign: another patient's COI (a valid one); none: no bag read."""
    handed_to: str | None = None
    container_id: str | None = None
    seal_id: str | None = None
    location: str = RULE_LOCATION


@dataclass(frozen=True)
class Expect:
    accepted: bool
    reason: str = ""
    """A part of the refusal reason ("" when accepted)."""
    status: str = "planned"
    quarantine: str = ""
    """A part of the quarantine reason ("" when not quarantined)."""


@dataclass(frozen=True)
class Rule:
    name: str
    send: Send
    expect: Expect
    ways: tuple[str, ...]
    picked_up: bool = False
    """Set-up: courier-ben picked the shipment up (over HTTP) before the scan under test."""
    container: bool = False
    """Set-up: a dry shipper sealed with SEAL was declared before pick-up."""
    released: bool = True
    """Set-up: the manufacturer released the product for shipment (a return leg's pick-up needs it)."""
    cancelled: bool = False
    """Set-up: the order was cancelled (after any pick-up) before the scan under test."""
    extra: dict[str, Any] = field(default_factory=dict)


ALL = ("http", "kafka", "epcis")
NO_EPCIS = ("http", "kafka")
FOREIGN_COI = "CHA99992600039UT"
"""A well-formed COI of another patient (valid MOD 37-2 check character)."""

RULES = [
    # time (domain._time_refusal)
    Rule("a scan dated in 2099", Send("pick_up", at=timedelta(days=365 * 73), eta=timedelta(days=365 * 73 + 2)),
         Expect(False, "ahead of the server's clock"), ALL),
    Rule("a scan dated before the shipment was planned", Send("pick_up", at=-timedelta(days=3)),
         Expect(False, "before the shipment was planned"), ALL),
    Rule("a pick-up without an ETA", Send("pick_up", eta=None),
         Expect(False, "must give the expected delivery time"), NO_EPCIS),
    Rule("a pick-up with an ETA in the past", Send("pick_up", eta=-timedelta(hours=1)),
         Expect(False, "is in the past"), NO_EPCIS),
    Rule("a delay without an ETA", Send("delay", eta=None), Expect(False, "must give the expected", "dispatched"),
         NO_EPCIS, picked_up=True),
    # order of scans (domain.ALLOWED_FROM)
    Rule("a receipt of a shipment not yet delivered", Send("receipt"),
         Expect(False, "cannot follow a shipment that is planned"), ALL),
    # identity (I1: domain.coi_mismatches, container_mismatches)
    Rule("a bag of another patient at pick-up", Send("pick_up", bags="foreign"),
         Expect(True, status="quarantined", quarantine="COI break"), ALL),
    Rule("another dry shipper at a checkpoint", Send("checkpoint", container_id="DS-OTHER"),
         Expect(True, status="quarantined", quarantine="container 'DS-OTHER' scanned"), NO_EPCIS,
         picked_up=True, container=True),
    Rule("a broken seal at a checkpoint", Send("checkpoint", seal_id="SEAL-OTHER"),
         Expect(True, status="quarantined", quarantine="seal 'SEAL-OTHER' scanned"), NO_EPCIS,
         picked_up=True, container=True),
    # temperature (I2: domain.temperature_problems)
    Rule("a warm reading in transit", Send("checkpoint", temperature=-120.0),
         Expect(True, status="quarantined", quarantine="above the limit of -150.0"), (*ALL, "readings"),
         picked_up=True),
    Rule("a warm reading on a refused scan", Send("receipt", temperature=-120.0),
         Expect(False, "cannot follow", status="quarantined", quarantine="above the limit"), ALL),
    # custody (I3: domain._refusal, _courier_refusal)
    Rule("a delivery by someone who does not hold the shipment", Send("delivery", by="courier-cy"),
         Expect(False, "custody is with courier-ben", "dispatched"), ALL, picked_up=True),
    Rule("a hand-off to an unknown party", Send("hand_off", handed_to="nobody-xyz"),
         Expect(False, "nobody-xyz is not a registered courier", "dispatched"), NO_EPCIS, picked_up=True),
    Rule("a hand-off to a courier of another company", Send("hand_off", handed_to="courier-dee"),
         Expect(False, "works for OTHER-LOGISTICS", "dispatched"), NO_EPCIS, picked_up=True),
    Rule("a hand-off without a taker", Send("hand_off"),
         Expect(False, "must name who takes the shipment", "dispatched"), NO_EPCIS, picked_up=True),
    # the order's state gates the product (domain._refusal: order_cancelled, product_released)
    Rule("a return pick-up before the manufacturer's release", Send("pick_up"),
         Expect(False, "released"), ALL, released=False),
    Rule("a scan of a cancelled order's shipment", Send("checkpoint"),
         Expect(False, "the order was cancelled", "cancelled"), ALL, picked_up=True, cancelled=True),
    # the rules let a correct scan through, on every way
    Rule("a correct pick-up", Send("pick_up"), Expect(True, status="dispatched"), ALL),
    Rule("a hand-off to a colleague", Send("hand_off", handed_to="courier-cy"),
         Expect(True, status="in_transit"), NO_EPCIS, picked_up=True),
]  # fmt: skip


def _now(offset: timedelta) -> datetime:
    return datetime.now(UTC) + offset


def _bags(send: Send, coi: str) -> list[str]:
    return {"own": [coi], "foreign": [FOREIGN_COI], "none": []}[send.bags]


async def over_http(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], send: Send
) -> None:
    body: dict[str, Any] = {
        "scan_type": send.kind,
        "bag_cois": _bags(send, shipment["coi"]),
        "location": send.location,
        "device_time": _now(send.at).isoformat(),
    }
    optional = {
        "temperature_celsius": send.temperature,
        "eta_at": _now(send.eta).isoformat() if send.eta is not None else None,
        "handed_to": send.handed_to,
        "container_id": send.container_id,
        "seal_id": send.seal_id,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    headers = {"Authorization": COURIERS[send.by][0]}
    response = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans", json=body, headers=headers
    )
    assert response.status_code == 201, response.text


async def over_kafka(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], send: Send
) -> None:
    event = CourierScanSubmittedV2(
        source="courier/cryo-express",
        subject=shipment["coi"],
        correlationid=f"rules-{uuid.uuid4()}",
        data=CourierScanDataV2(
            shipment_id=uuid.UUID(shipment["id"]),
            scan_type=ScanType(send.kind),
            bag_cois=_bags(send, shipment["coi"]),
            location=send.location,
            device_time=_now(send.at),
            temperature_celsius=send.temperature,
            eta_at=_now(send.eta) if send.eta is not None else None,
            handed_to=send.handed_to,
            container_id=send.container_id,
            seal_id=send.seal_id,
            courier_id=send.by,
            courier_company=COURIERS[send.by][1],
        ),
    )
    await publish_courier_scan(
        stack.broker, event.model_dump_json().encode(), shipment["coi"].encode(), company=COURIERS[send.by][1]
    )


async def over_epcis(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], send: Send
) -> None:
    event = object_event(EPCIS_STEPS[send.kind], _bags(send, shipment["coi"]), shipment=shipment["id"])
    event["eventTime"] = _now(send.at).isoformat()
    event["readPoint"] = {"id": send.location}
    if send.temperature is None:
        del event["sensorElementList"]
    else:
        event["sensorElementList"][0]["sensorReport"][0]["value"] = send.temperature
    headers = {"Authorization": COURIERS[send.by][0], "Content-Type": "application/ld+json"}
    response = await http.post(
        f"{stack.tracking}/capture", content=json.dumps(epcis_document(event)), headers=headers
    )
    assert response.status_code == 202, response.text


async def over_readings(
    http: httpx.AsyncClient, stack: RunningStack, shipment: dict[str, Any], send: Send
) -> None:
    assert send.temperature is not None, "a logger upload carries temperatures only"
    body = {
        "logger_id": "LOG-RULES",
        "readings": [{"at": _now(send.at).isoformat(), "celsius": send.temperature}],
    }
    headers = {"Authorization": COURIERS[send.by][0]}
    response = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/readings", json=body, headers=headers
    )
    assert response.status_code == 201, response.text


WAYS = {"http": over_http, "kafka": over_kafka, "epcis": over_epcis, "readings": over_readings}


@dataclass(frozen=True)
class Decision:
    accepted: bool
    refusal_reason: str
    status: str
    quarantine_reason: str


async def prepared_shipment(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, rule: Rule
) -> dict[str, Any]:
    """A fresh return shipment, in the state the rule's set-up asks for."""
    order = await (place_released_order if rule.released else place_accepted_order)(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    container_id = f"DS-RULES-{shipment['id'][:8]}"
    if rule.container:
        declared = await http.put(
            f"{stack.tracking}/shipments/{shipment['id']}/container",
            json={"container_id": container_id, "charged_at": _now(-timedelta(hours=2)).isoformat(),
                  "validated_hold_hours": 240, "seal_id": SEAL},
            headers=COORDINATOR,
        )  # fmt: skip
        assert declared.status_code == 200, declared.text
    if rule.picked_up:
        pick_up = Send("pick_up", container_id=container_id if rule.container else None,
                       seal_id=SEAL if rule.container else None, location=SET_UP_LOCATION)  # fmt: skip
        await over_http(http, stack, shipment, pick_up)
        await events.wait_for(lambda e: e.type == "shipment.dispatched.v1" and e.subject == order["coi"])
    if rule.cancelled:
        cancelled = await http.post(
            f"{stack.orders}/orders/{order['id']}/cancel",
            json={"reason_code": "patient_withdrew"},
            headers=COORDINATOR,
        )
        assert cancelled.status_code == 200, cancelled.text
        await events.wait_for(lambda e: e.type == "order.cancelled.v2" and e.subject == order["coi"])
        await wait_for_status(http, stack, shipment["id"], "cancelled")
    return shipment


async def wait_for_status(
    http: httpx.AsyncClient, stack: RunningStack, shipment_id: str, status: str
) -> None:
    """COI tracking applies the cancellation from Kafka: poll the shipment until it says so (bounded)."""
    for _ in range(200):
        read = (await http.get(f"{stack.tracking}/shipments/{shipment_id}", headers=COORDINATOR)).json()
        if read["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"shipment {shipment_id} never became {status}")


async def scan_under_test(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, shipment: dict[str, Any]
) -> tuple[dict[str, Any], ShipmentScannedV2]:
    """The scan under test as COI tracking keeps it (told from the set-up's by its location, which stays
    there) and its `shipment.scanned` event: the event's code agrees with the record's verdict."""
    url = f"{stack.tracking}/shipments/{shipment['id']}/scans"
    for _ in range(600):
        found = [
            s for s in (await http.get(url, headers=COORDINATOR)).json() if s["location"] == RULE_LOCATION
        ]
        if found:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the scan under test of {shipment['id']} was never stored")
    record = found[0]
    event = await events.wait_for(
        lambda e: isinstance(e, ShipmentScannedV2) and str(e.data.scan_id) == record["id"]
    )
    assert isinstance(event, ShipmentScannedV2) and event.data.accepted == record["accepted"]
    assert (event.data.refusal_code is None) == (record["refusal_reason"] is None), (record, event)
    return record, event


async def decision_on(
    way: str, rule: Rule, stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> Decision:
    shipment = await prepared_shipment(http, stack, events, rule)
    await WAYS[way](http, stack, shipment, rule.send)
    accepted, reason = True, ""
    if way != "readings":
        record, _ = await scan_under_test(http, stack, events, shipment)
        accepted, reason = record["accepted"], record["refusal_reason"] or ""
    read = (await http.get(f"{stack.tracking}/shipments/{shipment['id']}", headers=COORDINATOR)).json()
    return Decision(accepted, reason, read["status"], read["quarantine_reason"] or "")


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
async def test_a_rule_gives_the_same_decision_on_every_way_in(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, rule: Rule
) -> None:
    expect = rule.expect
    for way in rule.ways:
        decision = await decision_on(way, rule, stack, http, events)
        assert decision.accepted == expect.accepted or way == "readings", (way, decision)
        assert expect.reason in decision.refusal_reason if expect.reason else not decision.refusal_reason, (
            way,
            decision,
        )
        assert decision.status == expect.status, (way, decision)
        if expect.quarantine:
            assert expect.quarantine in decision.quarantine_reason, (way, decision)
        else:
            assert not decision.quarantine_reason, (way, decision)


async def test_the_custody_ledger_never_names_a_refused_taker(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    """After a refused hand-off to an unknown party, the ledger still names only the real custodian (I3)."""
    rule = next(rule for rule in RULES if rule.name == "a hand-off to an unknown party")
    for way in rule.ways:
        shipment = await prepared_shipment(http, stack, events, rule)
        await WAYS[way](http, stack, shipment, rule.send)
        await scan_under_test(http, stack, events, shipment)
        ledger = (
            await http.get(f"{stack.tracking}/shipments/{shipment['id']}/ledger", headers=COORDINATOR)
        ).json()
        assert [entry["to_party"] for entry in ledger["entries"]] == ["courier-ben"], way
