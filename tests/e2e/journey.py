"""Steps of the vein-to-vein journey, as a coordinator, a courier and a treatment center take them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from deploy.observe import EventLog
from tests.support.stack import COORDINATOR, COURIER, RunningStack

DEMO_SITE = "TC-BOSTON"
WASKYRA = "WASKYRA"
PRESCRIBER = "1234567893"


def order_body(patient_ref: str | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "patient_ref": patient_ref or f"PSN-{uuid.uuid4().hex[:10]}",
        "patient": {
            "name": "Test Patient",
            "date_of_birth": "2019-04-02",
            # A patient of its own ("MRN-0042" still marks it in the leak checks): one patient's second
            # active order is refused, whatever its patient_ref.
            "medical_record_number": f"MRN-0042-{uuid.uuid4().hex[:8]}",
        },
        "therapy_code": WASKYRA,
        "treatment_center_id": DEMO_SITE,
        "prescriber_npi": PRESCRIBER,
        "consent": {
            "signed_on": (date.today() - timedelta(days=3)).isoformat(),
            "form_version": "WAS-ICF-2.1",
        },
        "payer_authorization": {
            "reference": "PA-2026-0042",
            "expires_on": (date.today() + timedelta(days=90)).isoformat(),
        },
        "eligibility_attested": True,
    }
    body.update(overrides)
    return body


async def place_accepted_order(http: httpx.AsyncClient, stack: RunningStack) -> dict[str, Any]:
    response = await http.post(f"{stack.orders}/orders", json=order_body(), headers=COORDINATOR)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "accepted", order
    return order


async def record_collection_and_manufacturing(
    http: httpx.AsyncClient, stack: RunningStack, order_id: str
) -> str:
    """The coordinator records the apheresis (a DIN is issued) and the start of manufacturing."""
    collected = await http.post(
        f"{stack.orders}/orders/{order_id}/collections",
        json={"collected_at": datetime.now(UTC).isoformat()},
        headers=COORDINATOR,
    )
    assert collected.status_code == 201, collected.text
    started = await http.post(
        f"{stack.orders}/orders/{order_id}/status", json={"status": "in_manufacturing"}, headers=COORDINATOR
    )
    assert started.status_code == 200 and started.json()["status"] == "in_manufacturing", started.text
    din: str = collected.json()["din"]
    return din


async def record_release(
    http: httpx.AsyncClient, stack: RunningStack, order_id: str, lot_number: str = "LOT-WAS-0001"
) -> httpx.Response:
    """The coordinator records that the manufacturer released the product for shipment."""
    return await http.post(
        f"{stack.orders}/orders/{order_id}/manufacturing-release",
        json={"lot_number": lot_number, "released_at": datetime.now(UTC).isoformat()},
        headers=COORDINATOR,
    )


async def wait_until_released(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until COI tracking has taken the product's release: its return leg may be picked up."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COORDINATOR)
        assert response.status_code == 200, response.text
        released = [s for s in response.json() if s["leg"] == "return" and s["product_released_at"]]
        if released:
            shipment: dict[str, Any] = released[0]
            return shipment
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the return leg of {coi} was not released within {timeout}s")
        await asyncio.sleep(0.05)


async def release_product(http: httpx.AsyncClient, stack: RunningStack, order: dict[str, Any]) -> None:
    """The manufacturer's release recorded (the order in manufacturing), taken by COI tracking."""
    released = await record_release(http, stack, order["id"])
    assert released.status_code == 200 and released.json()["status"] == "product_released", released.text
    await wait_until_released(http, stack, order["coi"])


async def place_released_order(http: httpx.AsyncClient, stack: RunningStack) -> dict[str, Any]:
    """An accepted order through collection and manufacturing (recorded as steps: no outbound leg is
    planned) whose product was released for shipment: its return leg may be picked up."""
    order = await place_accepted_order(http, stack)
    await advance_to_manufacturing(http, stack, order["id"])
    await release_product(http, stack, order)
    return order


async def advance_to_manufacturing(http: httpx.AsyncClient, stack: RunningStack, order_id: str) -> None:
    """The coordinator records collection and manufacturing as steps (no collection, no outbound leg)."""
    for step in ("cells_collected", "in_manufacturing"):
        moved = await http.post(
            f"{stack.orders}/orders/{order_id}/status", json={"status": step}, headers=COORDINATOR
        )
        assert moved.status_code == 200, moved.text


async def shipment_for(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, coi: str, leg: str = "return"
) -> dict[str, Any]:
    """Wait until COI tracking has planned the leg, then read it as the courier."""
    await events.wait_for(
        lambda e: e.type == "shipment.created.v1" and e.subject == coi and e.data.leg == leg
    )
    response = await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COURIER)
    assert response.status_code == 200, response.text
    shipments = [s for s in response.json() if s["leg"] == leg]
    assert len(shipments) == 1, shipments
    shipment: dict[str, Any] = shipments[0]
    return shipment


def scan(
    scan_type: str,
    bag_cois: list[str],
    *,
    temperature: float = -180.0,
    location: str = "AGC Biologics, Milan",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "scan_type": scan_type,
        "bag_cois": bag_cois,
        "location": location,
        "device_time": datetime.now(UTC).isoformat(),
        "temperature_celsius": temperature,
    }
    if scan_type in ("pick_up", "delay") and "eta_at" not in extra:
        body["eta_at"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    body.update(extra)
    return body


async def book_first_option(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, coi: str
) -> dict[str, Any]:
    """The coordinator books the earliest option scheduling offered once the product was dispatched."""
    offered = await events.wait_for(lambda e: e.type == "slot.options_offered.v1" and e.subject == coi)
    option_id = str(offered.data.options[0].option_id)  # type: ignore[union-attr]
    booked = await http.post(
        f"{stack.scheduling}/cases/{coi}/bookings", json={"option_id": option_id}, headers=COORDINATOR
    )
    assert booked.status_code == 201, booked.text
    appointment: dict[str, Any] = booked.json()
    return appointment
