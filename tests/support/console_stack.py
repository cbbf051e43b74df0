"""The coordinator console in front of the REAL stack: a broker, the three services as processes on SQLite
(tests/support/stack.py) and the console as a process (deploy/stack.py's `console_process`, as `make up`
runs it). tests/browser's session fixture `console_stack` starts one for all the browser tests.

Also the steps that put cases on its worklist, taken through the services' HTTP APIs (httpx) as a
coordinator and a courier would: no broker client, every wait a bounded poll of an API.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from deploy.stack import ServiceProcess, console_process
from services.order_intake.domain import luhn_check_digit
from tests.e2e.journey import advance_to_manufacturing, order_body, release_product, scan
from tests.support.stack import COORDINATOR, COURIER, RunningStack, running_stack

WAIT_SECONDS = 30.0


@dataclass
class ConsoleStack:
    url: str
    """The console's base URL (http://127.0.0.1:<port>)."""
    running: RunningStack
    """The broker and the three services behind it (`running.scheduling`, …)."""
    console: ServiceProcess


@contextlib.contextmanager
def console_on_stack(workdir: Path) -> Iterator[ConsoleStack]:
    """A real stack on SQLite and the console process in front of it, stopped afterwards."""
    with running_stack("sqlite", workdir) as running:
        console = console_process(running.stack)
        console.start()
        try:
            console.wait_ready()
            yield ConsoleStack(console.url, running, console)
        finally:
            console.stop()


def fresh_npi() -> str:
    prefix = f"{uuid.uuid4().int % 10**9:09d}"
    return prefix + str(luhn_check_digit("80840" + prefix))


@dataclass(frozen=True)
class Site:
    id: str
    npi: str
    """A prescriber qualified at the site."""


BOSTON = Site("TC-BOSTON", "1234567893")
"""The seeded site (America/New_York) of the development treatment center's token."""


async def new_site(http: httpx.AsyncClient, stack: RunningStack, timezone: str = "America/Chicago") -> Site:
    """A treatment center of its own: known to order intake (qualified for Waskyra, with a prescriber) and
    to scheduling (a calendar open every day)."""
    site = Site(f"TC-{uuid.uuid4().hex[:6].upper()}", fresh_npi())
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"{stack.orders}/treatment-centers", {"id": site.id, "name": "QTC", "timezone": timezone}),
        (
            "POST",
            f"{stack.orders}/treatment-centers/{site.id}/certifications",
            {"therapy_code": "WASKYRA", "effective_on": "2026-01-01"},
        ),
        (
            "POST",
            f"{stack.orders}/prescribers",
            {"npi": site.npi, "name": "Dr. S", "treatment_center_ids": [site.id]},
        ),
        (
            "PUT",
            f"{stack.scheduling}/sites/{site.id}",
            {
                "timezone": timezone,
                "infusions_per_day": 2,
                "admissions_capacity": 10,
                "working_weekdays": [1, 2, 3, 4, 5, 6, 7],
            },
        ),
    ]
    for method, url, body in steps:
        response = await http.request(method, url, json=body, headers=COORDINATOR)
        assert response.status_code in (200, 201), response.text
    return site


async def to_book_case(http: httpx.AsyncClient, stack: RunningStack, site: Site = BOSTON) -> str:
    """An accepted order at `site` through manufacturing and release, its return leg picked up (an ETA two
    days out): scheduling offers options and the case is on the worklist as `to_book`. Its COI."""
    placed = await http.post(
        f"{stack.orders}/orders",
        json=order_body(treatment_center_id=site.id, prescriber_npi=site.npi),
        headers=COORDINATOR,
    )
    assert placed.status_code == 201 and placed.json()["status"] == "accepted", placed.text
    order: dict[str, Any] = placed.json()
    coi: str = order["coi"]
    await advance_to_manufacturing(http, stack, order["id"])
    await release_product(http, stack, order)
    shipments = await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COURIER)
    (shipment,) = [s for s in shipments.json() if s["leg"] == "return"]
    eta = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    picked = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans",
        json=scan("pick_up", [coi], eta_at=eta),
        headers=COURIER,
    )
    assert picked.status_code == 201 and picked.json()["accepted"], picked.text
    await wait_for_work(http, stack, coi, "to_book")
    return coi


async def wait_for_work(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, kind: str, timeout: float = WAIT_SECONDS
) -> dict[str, Any]:
    """Poll scheduling's worklist (as a coordinator) until `coi` is on it as `kind`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await http.get(
            f"{stack.scheduling}/worklist", params={"kind": kind, "limit": "500"}, headers=COORDINATOR
        )
        assert response.status_code == 200, response.text
        found = [item for item in response.json() if item["coi"] == coi]
        if found:
            item: dict[str, Any] = found[0]
            return item
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{coi} was not on the worklist as {kind} within {timeout}s")
        await asyncio.sleep(0.1)
