"""The order's state gates the product (no I/O): a cancelled order's shipments take no scan, a return leg
is picked up only after the manufacturer's release, which order intake records only in manufacturing; a
scan sent twice has one content digest; an idempotent request's digest ignores key order and spacing."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cgt_contracts.events import ScanType, ShipmentLeg

from services.coi_tracking.commands import ScanInput, scan_content_sha256
from services.coi_tracking.domain import Scan, ShipmentState, ShipmentStatus, evaluate_scan
from services.common.idempotency import keyed_request
from services.order_intake.domain import (
    LIFECYCLE,
    OrderStatus,
    allowed_transitions,
    manufacturing_release_refusal,
)
from tests.unit.test_tracking_domain import COI, NOW, a_scan, state

RELEASE_REASON = "has not released the product for shipment"
CANCELLED_REASON = "the order was cancelled"


def return_leg(physical: ShipmentStatus = ShipmentStatus.PLANNED, **fields: Any) -> ShipmentState:
    planned = dataclasses.replace(state(physical), custodian="manufacturer:AGC-MILAN", leg=ShipmentLeg.RETURN)
    return dataclasses.replace(planned, **fields)


def pick_up() -> Scan:
    return dataclasses.replace(a_scan(ScanType.PICK_UP), eta_at=NOW + timedelta(days=2))


def test_a_return_leg_is_not_picked_up_before_the_manufacturers_release() -> None:
    refused = evaluate_scan(return_leg(product_released=False), pick_up())
    assert not refused.accepted and RELEASE_REASON in (refused.refusal_reason or "")
    assert refused.custody is None and not refused.dispatched
    released = evaluate_scan(return_leg(product_released=True), pick_up())
    assert released.accepted and released.dispatched, released.refusal_reason


def test_an_outbound_leg_needs_no_release_it_exists_only_once_its_collection_is_recorded() -> None:
    outbound = return_leg(leg=ShipmentLeg.OUTBOUND, custodian="TC-1", product_released=False)
    assert evaluate_scan(outbound, pick_up()).accepted


@pytest.mark.parametrize("kind", list(ScanType))
def test_a_cancelled_orders_shipment_takes_no_scan_of_any_kind(kind: ScanType) -> None:
    physical = {
        ScanType.PICK_UP: ShipmentStatus.PLANNED,
        ScanType.RECEIPT: ShipmentStatus.DELIVERED,
    }.get(kind, ShipmentStatus.IN_TRANSIT)
    scan = dataclasses.replace(a_scan(kind), eta_at=NOW + timedelta(days=2), handed_to="courier-cy")
    scan = dataclasses.replace(scan, handed_to_company=scan.scanned_by_company)
    live = return_leg(physical, product_released=True, custodian="courier-ben")
    assert evaluate_scan(live, scan).accepted, evaluate_scan(live, scan).refusal_reason
    decision = evaluate_scan(dataclasses.replace(live, order_cancelled=True), scan)
    assert not decision.accepted and CANCELLED_REASON in (decision.refusal_reason or "")
    assert decision.custody is None and not decision.delivered_clean


def test_a_refused_scan_of_a_cancelled_shipment_still_judges_identity() -> None:
    wrong = dataclasses.replace(a_scan(ScanType.CHECKPOINT, bags=("CHW4321260000022", COI)))
    decision = evaluate_scan(return_leg(ShipmentStatus.IN_TRANSIT, order_cancelled=True), wrong)
    assert not decision.accepted and decision.coi_break and decision.quarantine


# ---------------------------------------------------------------- order intake: the manufacturer's release

STARTED = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def test_a_release_is_recorded_only_for_an_order_in_manufacturing() -> None:
    at = STARTED + timedelta(days=20)
    for status in OrderStatus:
        refusal = manufacturing_release_refusal(status, at, at, STARTED)
        assert (refusal is None) == (status is OrderStatus.IN_MANUFACTURING), (status, refusal)


def test_a_release_dated_in_the_future_or_before_manufacturing_is_refused() -> None:
    now = STARTED + timedelta(days=20)
    future = manufacturing_release_refusal(
        OrderStatus.IN_MANUFACTURING, now + timedelta(hours=1), now, STARTED
    )
    assert future is not None and "future" in future
    early = manufacturing_release_refusal(
        OrderStatus.IN_MANUFACTURING, STARTED - timedelta(days=1), now, STARTED
    )
    assert early is not None and "before manufacturing started" in early


def test_the_release_is_the_step_between_manufacturing_and_shipping() -> None:
    position = LIFECYCLE.index(OrderStatus.PRODUCT_RELEASED)
    assert LIFECYCLE[position - 1 : position + 2] == (
        OrderStatus.IN_MANUFACTURING,
        OrderStatus.PRODUCT_RELEASED,
        OrderStatus.PRODUCT_SHIPPED,
    )
    assert OrderStatus.PRODUCT_SHIPPED not in allowed_transitions(OrderStatus.IN_MANUFACTURING)
    assert OrderStatus.CANCELLED in allowed_transitions(OrderStatus.PRODUCT_RELEASED)


# ---------------------------------------------------------------- the same scan twice, the same request twice


def a_scan_input(**changes: Any) -> ScanInput:
    scan = ScanInput(
        scan_type=ScanType.CHECKPOINT,
        bag_cois=(COI,),
        location="JFK cargo",
        device_time=NOW,
        temperature_celsius=-180.0,
    )
    return dataclasses.replace(scan, **changes)


def test_a_scan_sent_again_has_the_same_content_digest_whatever_its_time_zone() -> None:
    shipment = uuid.uuid4()
    first = scan_content_sha256(shipment, a_scan_input(), "courier-ben")
    in_new_york = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert scan_content_sha256(shipment, a_scan_input(device_time=in_new_york), "courier-ben") == first
    assert scan_content_sha256(shipment, a_scan_input(epcis_event_id="urn:uuid:x"), "courier-ben") == first


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature_celsius": -179.0},
        {"device_time": NOW + timedelta(seconds=1)},
        {"location": "Boston"},
        {"bag_cois": (COI, COI)},
        {"scan_type": ScanType.DELAY},
        {"handed_to": "courier-cy"},
    ],
)
def test_a_scan_that_says_anything_else_is_another_scan(changes: dict[str, object]) -> None:
    shipment = uuid.uuid4()
    first = scan_content_sha256(shipment, a_scan_input(), "courier-ben")
    assert scan_content_sha256(shipment, a_scan_input(**changes), "courier-ben") != first
    assert scan_content_sha256(shipment, a_scan_input(), "courier-cy") != first
    assert scan_content_sha256(uuid.uuid4(), a_scan_input(), "courier-ben") != first


def test_an_idempotent_requests_digest_is_its_operation_and_content_not_its_spelling() -> None:
    one = keyed_request("ben", "k-1", "POST /x", {"a": 1, "b": [1, 2]})
    same = keyed_request("ben", "k-1", "POST /x", {"b": [1, 2], "a": 1})
    assert one is not None and same is not None and one.request_sha256 == same.request_sha256
    other_path = keyed_request("ben", "k-1", "POST /y", {"a": 1, "b": [1, 2]})
    assert other_path is not None and other_path.request_sha256 != one.request_sha256
    assert keyed_request("ben", None, "POST /x", {}) is None
