"""A lot that fails in manufacturing, on the real broker, SQLite and PostgreSQL: the first appointment is
released and the site told, a second collection gets a new DIN under the same COI, and the second lot
travels on a new return leg to a confirmed infusion."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, COURIER_2, RunningStack
from tests.e2e.journey import (
    book_first_option,
    place_accepted_order,
    record_collection_and_manufacturing,
    release_product,
    scan,
)
from tests.e2e.test_journey import register_webhook

pytestmark = pytest.mark.e2e

NOTE = "NOTE-LOT-7Q: mycoplasma positive on day 12"


async def book_a_plan(http: httpx.AsyncClient, stack: RunningStack, coi: str) -> dict[str, Any]:
    """The coordinator plans the case (once scheduling has it) and books the earliest plan: its infusion
    leg is a tentative appointment."""
    for _ in range(300):
        offered = await http.post(
            f"{stack.scheduling}/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR
        )
        if offered.status_code != 404:
            break
        await asyncio.sleep(0.05)
    assert offered.status_code in (200, 201), offered.text
    [plan] = offered.json()
    booked = await http.post(
        f"{stack.scheduling}/cases/{coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR
    )
    assert booked.status_code == 201, booked.text
    result: dict[str, Any] = booked.json()
    return result


async def return_legs(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, count: int
) -> list[dict[str, Any]]:
    """The case's return legs, oldest first, once COI tracking has `count` of them."""
    for _ in range(300):
        response = await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COORDINATOR)
        assert response.status_code == 200, response.text
        legs = [s for s in response.json() if s["leg"] == "return"]
        if len(legs) >= count:
            return sorted(legs, key=lambda s: s["lot_failed_at"] is None)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"COI tracking did not plan {count} return legs for {coi}")


async def outbound_dins(http: httpx.AsyncClient, stack: RunningStack, coi: str, count: int) -> list[str]:
    """The DINs of the case's outbound legs (one per collection), once COI tracking has `count`."""
    for _ in range(300):
        response = await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COURIER)
        assert response.status_code == 200, response.text
        dins = sorted(bag["din"] for s in response.json() if s["leg"] == "outbound" for bag in s["bags"])
        if len(dins) >= count:
            return dins
        await asyncio.sleep(0.05)
    raise TimeoutError(f"COI tracking did not plan {count} outbound legs for {coi}")


async def test_a_failed_lot_is_collected_again_under_the_same_coi_and_infused(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    await register_webhook(http, stack, webhook_listener)
    order = await place_accepted_order(http, stack)
    coi, order_id = order["coi"], order["id"]
    first_din = await record_collection_and_manufacturing(http, stack, order_id)
    first = await book_a_plan(http, stack, coi)
    assert first["state"] == "booked"
    first_appointment = first["appointment_id"]

    # The lot fails: order intake records it, the note stays there.
    failed = await http.post(
        f"{stack.orders}/orders/{order_id}/manufacturing-failure",
        json={"reason_code": "sterility_failure", "note": NOTE},
        headers=COORDINATOR,
    )
    assert failed.status_code == 201, failed.text
    assert failed.json()["reason_code"] == "sterility_failure" and failed.json()["collection_number"] == 1
    event = await events.wait_for(lambda e: e.type == "manufacturing.failed.v1" and e.subject == coi)
    assert event.data.reason_code == "sterility_failure" and event.data.collection_number == 1  # type: ignore[union-attr]
    again = await http.post(
        f"{stack.orders}/orders/{order_id}/manufacturing-failure",
        json={"reason_code": "other"},
        headers=COORDINATOR,
    )
    assert again.status_code == 409, "one failure per lot"

    # Scheduling releases the first appointment and tells the site.
    released = await events.wait_for(lambda e: e.type == "slot.cancelled.v2" and e.subject == coi)
    assert str(released.data.appointment_id) == first_appointment  # type: ignore[union-attr]
    assert released.data.reason_code == "manufacturing_failure"  # type: ignore[union-attr]
    hook = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "slot.cancelled" and h.json()["coi"] == coi
    )
    assert hook.json()["appointment_id"] == first_appointment
    assert hook.json()["reason_code"] == "manufacturing_failure"
    # The booked plan was withdrawn with its lot: the case can be planned again from a new collection.
    replanned = await http.post(
        f"{stack.scheduling}/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR
    )
    assert replanned.status_code in (200, 201), replanned.text
    assert [p["state"] for p in replanned.json()] == ["offered"]

    # COI tracking closes the failed lot's return leg and plans the next lot's.
    closed, fresh = await return_legs(http, stack, coi, 2)
    assert closed["status"] == "cancelled" and closed["lot_failed_at"] is not None
    assert fresh["status"] == "planned" and fresh["lot_failed_at"] is None

    # The second attempt: a new collection, a new DIN, the same COI.
    collected = await http.post(
        f"{stack.orders}/orders/{order_id}/collections",
        json={"collected_at": datetime.now(UTC).isoformat()},
        headers=COORDINATOR,
    )
    assert collected.status_code == 201, collected.text
    second = collected.json()
    assert second["number"] == 2 and second["coi"] == coi and second["din"] != first_din
    assert await outbound_dins(http, stack, coi, 2) == [first_din, second["din"]], "a new outbound leg"
    started = await http.post(
        f"{stack.orders}/orders/{order_id}/status", json={"status": "in_manufacturing"}, headers=COORDINATOR
    )
    assert started.status_code == 200, started.text
    await release_product(http, stack, order)

    # The second lot ships on the new leg, is booked again, delivered clean, and confirmed.
    base = f"{stack.tracking}/shipments/{fresh['id']}/scans"
    refused = await http.post(
        f"{stack.tracking}/shipments/{closed['id']}/scans", json=scan("pick_up", [coi]), headers=COURIER
    )
    assert refused.status_code == 201 and not refused.json()["accepted"], refused.text
    assert "failed in manufacturing" in refused.json()["refusal_reason"]
    picked = await http.post(base, json=scan("pick_up", [coi]), headers=COURIER)
    assert picked.status_code == 201 and picked.json()["accepted"], picked.text
    booked = await book_first_option(http, stack, events, coi)
    assert booked["state"] == "tentative" and booked["id"] != first_appointment
    handed = await http.post(
        base, json=scan("hand_off", [coi], location="JFK cargo", handed_to="courier-cy"), headers=COURIER
    )
    assert handed.status_code == 201 and handed.json()["accepted"], handed.text
    delivered = await http.post(
        base,
        json=scan("delivery", [coi], location="Boston QTC cell lab", temperature=-175.5),
        headers=COURIER_2,
    )
    assert delivered.status_code == 201 and delivered.json()["shipment_status"] == "delivered", delivered.text
    confirmed = await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    assert str(confirmed.data.appointment_id) == booked["id"]  # type: ignore[union-attr]

    appointments = (
        await http.get(f"{stack.scheduling}/appointments", params={"coi": coi}, headers=CENTER)
    ).json()
    assert sorted((a["id"], a["state"]) for a in appointments) == sorted(
        [(first_appointment, "cancelled"), (booked["id"], "confirmed")]
    )

    # The order's history shows every attempt.
    history = (await http.get(f"{stack.orders}/orders/{order_id}/history", headers=COORDINATOR)).json()
    steps = [row["to_status"] for row in history]
    assert steps[: steps.index("product_released") + 1] == [
        "submitted",
        "accepted",
        "cells_collected",
        "in_manufacturing",
        "manufacturing_failed",
        "cells_collected",
        "in_manufacturing",
        "product_released",
    ]
    collections = (await http.get(f"{stack.orders}/orders/{order_id}/collections", headers=CENTER)).json()
    assert [(c["number"], c["coi"]) for c in collections] == [(1, coi), (2, coi)]
    failures = (
        await http.get(f"{stack.orders}/orders/{order_id}/manufacturing-failures", headers=CENTER)
    ).json()
    assert [(f["collection_number"], f["reason_code"], f["note"]) for f in failures] == [
        (1, "sterility_failure", NOTE)
    ]

    # The note is on no topic and in no webhook (I6).
    assert NOTE.encode() not in b"".join(value for _, value, _ in events.raw)
    assert all(NOTE not in h.body.decode() for h in webhook_listener.received)
