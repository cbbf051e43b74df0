"""Webhooks an operator can manage, on the real broker and database (SQLite and PostgreSQL): an endpoint
that never answers is disabled once (one published failure, one worklist entry), a private-address URL
is refused, a rotated secret keeps signing beside the new one during the overlap, the reference receiver
refuses a replay and a bad timestamp, and a paused endpoint gets its messages when resumed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from deploy.webhook_receiver import Receiver, make_server
from services.scheduling.webhook_domain import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import book_first_option
from tests.e2e.test_scheduling import dispatched_case, midday, new_site

pytestmark = pytest.mark.e2e
DEAD = "http://127.0.0.1:9/never-listening"


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    """The first truthy answer of `check`, polled until the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        answer = await check()
        if answer:
            return answer
        await asyncio.sleep(0.1)
    raise TimeoutError(f"never: {what}")


async def register(http: httpx.AsyncClient, stack: RunningStack, site: str, url: str) -> dict[str, Any]:
    answer = await http.post(
        f"{stack.scheduling}/webhooks", json={"url": url, "treatment_center_id": site}, headers=COORDINATOR
    )
    assert answer.status_code == 201, answer.text
    endpoint: dict[str, Any] = answer.json()
    return endpoint


async def deliveries(http: httpx.AsyncClient, stack: RunningStack, endpoint_id: str) -> list[dict[str, Any]]:
    answer = await http.get(f"{stack.scheduling}/webhooks/{endpoint_id}/deliveries", headers=COORDINATOR)
    rows: list[dict[str, Any]] = answer.json()
    return rows


async def booked_case(http: httpx.AsyncClient, stack: RunningStack, events: EventLog, site: Any) -> str:
    coi, _ = await dispatched_case(http, stack, events, site, eta=midday(3))
    await book_first_option(http, stack, events, coi)
    return coi


async def test_an_endpoint_that_never_answers_is_disabled_once_with_one_event_and_one_worklist_item(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack)
    endpoint = await register(http, stack, site.id, DEAD)
    first = await booked_case(http, stack, events, site)
    failed = await events.wait_for(
        lambda e: e.type == "webhook.delivery_failed.v2" and e.subject == first, timeout=60
    )
    assert failed.data.endpoint_disabled and str(failed.data.endpoint_id) == endpoint["id"]  # type: ignore[union-attr]
    assert failed.data.consecutive_failures == 4 and failed.data.kind == "slot.proposed"  # type: ignore[union-attr]
    read = (await http.get(f"{stack.scheduling}/webhooks/{endpoint['id']}", headers=COORDINATOR)).json()
    assert read["state"] == "disabled"

    # A later message for the site waits with the first; nothing more is tried, published or listed.
    second = await booked_case(http, stack, events, site)

    async def both_waiting() -> bool:
        rows = await deliveries(http, stack, endpoint["id"])
        return sorted(r["coi"] for r in rows if r["status"] == "suspended") == sorted([first, second])

    await eventually(both_waiting, "both messages suspended")
    rows = await deliveries(http, stack, endpoint["id"])
    assert len(rows) == 2 and sum(r["attempts"] for r in rows) == 4
    failures = [
        e
        for e in events.events
        if e.type.startswith("webhook.") and e.data.treatment_center_id == site.id  # type: ignore[union-attr]
    ]
    assert len(failures) == 1
    items = (await http.get(f"{stack.scheduling}/worklist", headers=COORDINATOR)).json()
    mine = [i for i in items if i["kind"] == "webhook_failing" and i["treatment_center_id"] == site.id]
    assert len(mine) == 1 and endpoint["id"] in mine[0]["detail"] and "2 message(s)" in mine[0]["detail"]


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.5/hooks", "https://[fd00:ec2::254]/"]
)
async def test_a_private_address_webhook_is_refused_naming_url(
    stack: RunningStack, http: httpx.AsyncClient, url: str
) -> None:
    """Registered for a site with no cases: had it been taken, nothing would ever be sent there."""
    answer = await http.post(
        f"{stack.scheduling}/webhooks",
        json={"url": url, "treatment_center_id": "TC-NO-EVENTS"},
        headers=COORDINATOR,
    )
    assert answer.status_code == 422 and [e["pointer"] for e in answer.json()["errors"]] == ["/url"]
    listed = await http.get(
        f"{stack.scheduling}/webhooks", params={"treatment_center_id": "TC-NO-EVENTS"}, headers=COORDINATOR
    )
    assert listed.json() == []


@pytest.fixture
def reference_receiver() -> Iterator[tuple[list[Receiver], str]]:
    """deploy/webhook_receiver.py's server on loopback; the test gives it its secrets once known."""
    holder: list[Receiver] = []

    class Delegating(Receiver):
        def receive(self, headers: Any, body: bytes) -> tuple[int, str]:
            return holder[0].receive(headers, body)

    server = make_server(Delegating(["unused-until-registered"]), 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield holder, f"http://127.0.0.1:{server.server_address[1]}/cgt"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_rotated_secret_signs_beside_the_new_one_and_the_receiver_refuses_replays(
    stack: RunningStack,
    http: httpx.AsyncClient,
    events: EventLog,
    webhook_listener: WebhookListener,
    reference_receiver: tuple[list[Receiver], str],
) -> None:
    site = await new_site(http, stack)
    holder, receiver_url = reference_receiver
    receiving = await register(http, stack, site.id, receiver_url)
    holder.append(Receiver([receiving["secret"]], show=lambda _line: None))  # it keeps the old secret
    watching = await register(http, stack, site.id, webhook_listener.url)
    rotated = await http.post(
        f"{stack.scheduling}/webhooks/{receiving['id']}/rotate-secret", json={}, headers=COORDINATOR
    )
    assert rotated.status_code == 200 and rotated.json()["previous_secret_valid_until"]
    assert rotated.json()["secret"] != receiving["secret"]

    coi = await booked_case(http, stack, events, site)
    await eventually(
        lambda: asyncio.to_thread(lambda: [m for m in holder[0].taken if m["coi"] == coi]),
        "the receiver with the old secret takes the message",
    )

    async def delivered() -> bool:
        rows = await deliveries(http, stack, receiving["id"])
        return [(r["status"], r["endpoint_id"]) for r in rows] == [("delivered", receiving["id"])]

    await eventually(delivered, "the delivery is recorded as delivered, naming its endpoint")

    # The listener's copy (signed under its own secret) replayed to the reference receiver's checks.
    hook = await asyncio.to_thread(webhook_listener.wait_for, lambda h: h.json()["coi"] == coi)
    listener_receiver = Receiver([watching["secret"]], show=lambda _line: None)
    assert listener_receiver.receive(hook.headers, hook.body) == (204, "taken")
    assert listener_receiver.receive(hook.headers, hook.body) == (204, "already taken")
    new_key = {**hook.headers, IDEMPOTENCY_HEADER: "replayed-under-a-new-key"}
    assert listener_receiver.receive(new_key, hook.body)[0] == 401
    stale = {**hook.headers, TIMESTAMP_HEADER: str(int(time.time()) - 3600)}
    assert listener_receiver.receive(stale, hook.body)[0] == 400
    malformed = {**hook.headers, TIMESTAMP_HEADER: "yesterday"}
    assert listener_receiver.receive(malformed, hook.body)[0] == 400
    assert len(hook.headers[SIGNATURE_HEADER].split(", ")) == 1, "the listener's secret was never rotated"


async def test_a_paused_endpoint_gets_its_messages_when_resumed(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    site = await new_site(http, stack)
    endpoint = await register(http, stack, site.id, webhook_listener.url)
    url = f"{stack.scheduling}/webhooks/{endpoint['id']}"
    assert (await http.patch(url, json={"paused": True}, headers=COORDINATOR)).json()["state"] == "paused"
    coi = await booked_case(http, stack, events, site)

    async def suspended() -> bool:
        return [r["status"] for r in await deliveries(http, stack, endpoint["id"])] == ["suspended"]

    await eventually(suspended, "the message waits for the paused endpoint")
    assert [h for h in webhook_listener.received if h.json()["coi"] == coi] == []
    assert (await http.patch(url, json={"paused": False}, headers=COORDINATOR)).json()["state"] == "active"
    hook = await asyncio.to_thread(webhook_listener.wait_for, lambda h: h.json()["coi"] == coi)
    assert hook.json()["kind"] == "slot.proposed"
