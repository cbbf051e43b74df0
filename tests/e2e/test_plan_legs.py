"""A booked plan's legs on the real broker, SQLite and PostgreSQL: each leg's event marks it done in
scheduling, and a manufacturing delay recorded in order intake re-plans the infusion and tells the site."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import place_accepted_order, release_product
from tests.e2e.test_journey import register_webhook
from tests.e2e.test_lot_failure import book_a_plan

pytestmark = pytest.mark.e2e

NOTE = "NOTE-DELAY-4K: sterility retest"


async def plan_when(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, field: str, timeout: float = 30.0
) -> dict[str, Any]:
    """The case's booked plan once `field` is set."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        plans = (await http.get(f"{stack.scheduling}/cases/{coi}/plans", headers=COORDINATOR)).json()
        booked = [p for p in plans if p["state"] == "booked"]
        if booked and booked[0][field] is not None:
            return booked[0]  # type: ignore[no-any-return]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the plan's {field} was not set")
        await asyncio.sleep(0.05)


async def test_each_leg_is_confirmed_and_a_manufacturing_delay_re_plans_the_infusion(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    await register_webhook(http, stack, webhook_listener)
    order = await place_accepted_order(http, stack)
    coi, order_id = order["coi"], order["id"]
    booked = await book_a_plan(http, stack, coi)

    collected = await http.post(
        f"{stack.orders}/orders/{order_id}/collections",
        json={"collected_at": datetime.now(UTC).isoformat()},
        headers=COORDINATOR,
    )
    assert collected.status_code == 201, collected.text
    await plan_when(http, stack, coi, "collection_done_at")
    started = await http.post(
        f"{stack.orders}/orders/{order_id}/status", json={"status": "in_manufacturing"}, headers=COORDINATOR
    )
    assert started.status_code == 200, started.text
    event = await events.wait_for(lambda e: e.type == "manufacturing.started.v1" and e.subject == coi)
    assert event.data.collection_number == 1  # type: ignore[union-attr]
    await plan_when(http, stack, coi, "manufacturing_started_at")

    new_release = date.fromisoformat(booked["release_on"]) + timedelta(days=10)
    delayed = await http.post(
        f"{stack.orders}/orders/{order_id}/manufacturing-delay",
        json={"expected_release_on": new_release.isoformat(), "reason_code": "release_testing", "note": NOTE},
        headers=COORDINATOR,
    )
    assert delayed.status_code == 201, delayed.text
    replanned = await events.wait_for(lambda e: e.type == "plan.replanned.v1" and e.subject == coi)
    assert replanned.data.cause == "manufacturing_delayed"  # type: ignore[union-attr]
    assert replanned.data.release_on == new_release  # type: ignore[union-attr]
    assert replanned.data.infusion_on > date.fromisoformat(booked["infusion_on"])  # type: ignore[union-attr]
    hook = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "plan.replanned" and h.json()["coi"] == coi
    )
    assert hook.json()["infusion_on"] == replanned.data.infusion_on.isoformat()  # type: ignore[union-attr]
    assert hook.json()["reason_code"] == "release_testing"
    moved = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "slot.rescheduled" and h.json()["coi"] == coi
    )
    assert moved.json()["appointment_id"] == booked["appointment_id"]

    await release_product(http, stack, order)
    plan = await plan_when(http, stack, coi, "product_released_at")
    assert plan["release_on"] == new_release.isoformat() and plan["replan_cause"] == "manufacturing_delayed"
    assert NOTE.encode() not in b"".join(value for _, value, _ in events.raw)
    assert all(NOTE not in h.body.decode() for h in webhook_listener.received)
