"""Vein-to-vein plans on the real broker, SQLite and PostgreSQL: cases come from order intake's
`order.accepted`, a plan is offered and booked as one chain, and a plan whose manufacturing slot another
coordinator took books no leg at all: no collection without a manufacturing slot."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import place_accepted_order

pytestmark = pytest.mark.e2e


async def offered_plan(http: httpx.AsyncClient, stack: RunningStack, coi: str) -> dict[str, Any]:
    """The case's earliest plan, once scheduling has the case from `order.accepted`."""
    for _ in range(300):
        offered = await http.post(
            f"{stack.scheduling}/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR
        )
        if offered.status_code != 404:
            break
        await asyncio.sleep(0.05)
    assert offered.status_code == 200, offered.text
    [plan] = offered.json()
    result: dict[str, Any] = plan
    return result


async def book(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, plan: dict[str, Any]
) -> httpx.Response:
    return await http.post(
        f"{stack.scheduling}/cases/{coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR
    )


async def appointments_of(http: httpx.AsyncClient, stack: RunningStack, coi: str) -> list[dict[str, Any]]:
    response = await http.get(f"{stack.scheduling}/appointments", params={"coi": coi}, headers=COORDINATOR)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


async def test_a_plan_is_booked_as_one_and_none_without_its_manufacturing_slot(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    # Three coordinators each plan a case before any books: all are offered the same earliest chain, in a
    # week with at most 2 slots at Milan. Those who book while a slot is left hold every leg; the next one's
    # booking is refused whole: its collection chair and its infusion are not held either.
    cois = [(await place_accepted_order(http, stack))["coi"] for _ in range(3)]
    plans = [await offered_plan(http, stack, coi) for coi in cois]
    week = plans[0]["manufacturing_week"]
    assert {p["manufacturing_week"] for p in plans} == {week}, plans
    answers = [await book(http, stack, coi, plan) for coi, plan in zip(cois, plans, strict=True)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 201 and 409 in codes, [a.text for a in answers]
    refused = codes.index(409)
    assert codes == [201] * refused + [409] * (3 - refused)
    for coi, answer in zip(cois[:refused], answers, strict=False):  # every leg held
        [appointment] = await appointments_of(http, stack, coi)
        assert answer.json()["state"] == "booked" and appointment["state"] == "tentative"
        assert appointment["id"] == answer.json()["appointment_id"]
    loser = cois[refused]
    reasons = answers[refused].json()["reasons"]
    assert reasons[0] == f"no manufacturing slot left at MFG-AGC-MILAN in {week}", reasons
    assert await appointments_of(http, stack, loser) == [], "no infusion held without the slot"
    again = await offered_plan(http, stack, loser)  # nothing held: the case is planned again, a later week
    assert again["manufacturing_week"] > week
    assert (await book(http, stack, loser, again)).status_code == 201
