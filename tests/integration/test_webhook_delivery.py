"""The webhook deliverer against real HTTP servers on loopback and a real database (SQLite and PostgreSQL),
without the broker: a failing endpoint is disabled once (one published failure, one worklist entry, no
new delivery rows, no more attempts) and resumed afresh; the address is checked after resolution and the
request goes to the checked address; a redirect is not followed; a rotation signs with both secrets."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.envelope import utc_now
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from deploy.observe import WebhookListener
from services.common.development import DEV_WEBHOOK_SECRET_KEY
from services.common.encryption import key_ring
from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import webhook_commands
from services.scheduling.models import TABLES, WebhookDelivery, WebhookEndpoint
from services.scheduling.webhook_commands import AttemptResult, WebhookSettings
from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    FailurePolicy,
    IPAddress,
    signature_matches,
)
from services.scheduling.webhooks import WebhookDeliverer, resolve_host
from tests.support.infra import database

SECRET_KEYS = key_ring(DEV_WEBHOOK_SECRET_KEY, "WEBHOOK_SECRET_KEY")

COI_A, COI_B = "CHW4321260000014", "CHW4321260000022"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


@pytest.fixture
def listener() -> Iterator[WebhookListener]:
    listener = WebhookListener()
    listener.start()
    yield listener
    listener.stop()


def settings(
    *, allow_loopback: bool = True, disable_after: int = 3, max_attempts: int = 5
) -> WebhookSettings:
    return WebhookSettings(
        allow_loopback=allow_loopback,
        secret_overlap_hours=24,
        failure=FailurePolicy(
            max_attempts=max_attempts, disable_after_failures=disable_after, backoff_base_seconds=0.01
        ),
        secret_keys=SECRET_KEYS,
    )


def current_secret(endpoint: WebhookEndpoint) -> str:
    """The secret as the site received it (the row holds it encrypted)."""
    return SECRET_KEYS.decrypt(endpoint.secret.encode()).decode()


def endpoint_at(engine: Engine, url: str, site: str = "TC-HOOKS") -> WebhookEndpoint:
    with session_factory(engine)(expire_on_commit=False) as session:
        endpoint, _secret = webhook_commands.register(
            session, site=site, url=url, event_types=None, settings=settings()
        )
        session.commit()
        return endpoint


def queue(engine: Engine, coi: str, kind: str = "slot.proposed", site: str = "TC-HOOKS") -> None:
    with session_factory(engine)() as session:
        webhook_commands.queue_deliveries(
            session,
            site=site,
            appointment_id=uuid.uuid4(),
            coi=coi,
            kind=kind,
            payload=json.dumps({"kind": kind, "coi": coi}),
        )
        session.commit()


def deliverer(engine: Engine, config: WebhookSettings, **kwargs: Any) -> WebhookDeliverer:
    return WebhookDeliverer(engine, config, timeout_seconds=2.0, **kwargs)


async def deliver_until(
    engine: Engine, sender: WebhookDeliverer, done: Callable[[Session], bool], timeout: float = 20.0
) -> None:
    async with sender.client() as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await sender.deliver_due(client)
            with session_factory(engine)() as session:
                if done(session):
                    return
            await asyncio.sleep(0.02)
    raise TimeoutError("the deliveries never reached the expected state")


def deliveries(session: Session, endpoint: WebhookEndpoint) -> list[WebhookDelivery]:
    return list(session.exec(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)))


def failure_events(session: Session) -> list[dict[str, Any]]:
    rows = session.exec(select(OutboxMessage).where(col(OutboxMessage.event_type).startswith("webhook.")))
    return [{"type": row.event_type, **json.loads(row.payload)["data"]} for row in rows]


async def test_a_failing_endpoint_is_disabled_once_and_resumed_afresh(
    engine: Engine, listener: WebhookListener
) -> None:
    endpoint = endpoint_at(engine, listener.url)
    for coi in (COI_A, COI_B, COI_A):
        queue(engine, coi)
    listener.fail_next = 10**6
    sender = deliverer(engine, settings(disable_after=3))

    def disabled(session: Session) -> bool:
        stored = session.get(WebhookEndpoint, endpoint.id)
        return stored is not None and stored.disabled_at is not None

    await deliver_until(engine, sender, disabled)
    with session_factory(engine)() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
        assert stored is not None and webhook_commands.state_of(stored).value == "disabled"
        assert stored.consecutive_failures == 3 and not stored.active
        rows = deliveries(session, endpoint)
        assert len(rows) == 3 and {row.status for row in rows} == {"suspended"}
        events = failure_events(session)
        assert len(events) == 1 and events[0]["type"] == "webhook.delivery_failed.v2"
        assert events[0]["endpoint_disabled"] is True and events[0]["endpoint_id"] == str(endpoint.id)
        assert events[0]["consecutive_failures"] == 3 and events[0]["last_error"] == "HTTP 503"
        work = webhook_commands.failing_work(session)
        assert len(work) == 1 and str(endpoint.id) in work[0].detail and "3 message(s)" in work[0].detail

    # No more attempts, events or rows however long it stays disabled; a new message waits with the rest.
    attempts_so_far = len(listener.received)
    queue(engine, COI_B)
    async with sender.client() as client:
        for _ in range(5):
            assert await sender.deliver_due(client) == 0
    with session_factory(engine)() as session:
        assert len(listener.received) == attempts_so_far
        assert len(failure_events(session)) == 1 and len(webhook_commands.failing_work(session)) == 1
        assert [row.status for row in deliveries(session, endpoint)].count("suspended") == 4

    listener.fail_next = 0
    with session_factory(engine)() as session:
        resumed = webhook_commands.visible_endpoint(session, endpoint.id, None, to_change=True)
        assert resumed is not None
        webhook_commands.resume(session, resumed)
        session.commit()

    def all_delivered(session: Session) -> bool:
        return {row.status for row in deliveries(session, endpoint)} == {"delivered"}

    await deliver_until(engine, sender, all_delivered)
    with session_factory(engine)() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
        assert stored is not None and stored.consecutive_failures == 0 and stored.active
        assert len(deliveries(session, endpoint)) == 4 and webhook_commands.failing_work(session) == []
        assert len(failure_events(session)) == 1


def test_a_message_that_fails_alone_is_given_up_without_disabling_its_endpoint(engine: Engine) -> None:
    """An endpoint that answers other messages but refuses one: that message fails, the endpoint stays
    (the attempts are recorded as the deliverer records them, in the order they finished)."""
    endpoint = endpoint_at(engine, "https://hooks.tc-picky.example.org/cgt")
    queue(engine, COI_A, "slot.held")
    for _ in range(3):
        queue(engine, COI_B, "slot.confirmed")
    with session_factory(engine)() as session:
        rows = sorted(deliveries(session, endpoint), key=lambda r: r.kind != "slot.held")
    held, good = rows[0], rows[1:]
    results = []
    for answered in good:
        results.append(AttemptResult(held.id, endpoint.id, False, 422, "HTTP 422"))
        results.append(AttemptResult(answered.id, endpoint.id, True, 204, None))
    with session_factory(engine)() as session:
        assert webhook_commands.record_attempts(session, results, settings(max_attempts=3).failure)
        session.commit()
    with session_factory(engine)() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
        assert stored is not None and stored.active and stored.disabled_at is None
        assert stored.consecutive_failures == 0
        statuses = {r.kind: r.status for r in deliveries(session, endpoint)}
        assert statuses == {"slot.held": "failed", "slot.confirmed": "delivered"}
        events = failure_events(session)
        assert (
            len(events) == 1 and events[0]["endpoint_disabled"] is False and events[0]["kind"] == "slot.held"
        )
        assert [w.coi for w in webhook_commands.failing_work(session)] == [COI_A]


class serving:
    """A handler class served on loopback; yields its URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_loopback_receiver_gets_nothing_when_loopback_is_not_allowed(
    engine: Engine, listener: WebhookListener
) -> None:
    """Registered while the policy allowed it; sending judges the URL again and sends nothing."""
    endpoint = endpoint_at(engine, listener.url)
    queue(engine, COI_A)
    sender = deliverer(engine, settings(allow_loopback=False))
    await deliver_until(engine, sender, lambda s: deliveries(s, endpoint)[0].attempts >= 1)
    with session_factory(engine)() as session:
        row = deliveries(session, endpoint)[0]
        assert row.status == "pending" and "loopback" in (row.last_error or "")
    assert listener.received == []


def resolver(table: dict[str, list[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (["169.254.169.254"], "metadata"),
        (["93.184.215.14", "10.0.0.7"], "private"),
        (["127.0.0.1"], "loopback"),
    ],
)
async def test_a_name_that_resolves_to_a_refused_address_gets_nothing(
    engine: Engine, listener: WebhookListener, answers: list[str], reason: str
) -> None:
    endpoint = endpoint_at(engine, "https://hooks.tc-rebind.example.org/cgt")
    queue(engine, COI_A)
    table = {"hooks.tc-rebind.example.org": answers}
    sender = deliverer(engine, settings(allow_loopback=False), resolve=resolver(table))
    await deliver_until(engine, sender, lambda s: deliveries(s, endpoint)[0].attempts >= 1)
    with session_factory(engine)() as session:
        row = deliveries(session, endpoint)[0]
        assert row.last_status_code is None and reason in (row.last_error or "")
    assert listener.received == []


async def test_the_request_goes_to_the_checked_address_with_the_name_as_host(
    engine: Engine, listener: WebhookListener
) -> None:
    port = listener.url.split(":")[2].split("/")[0]
    endpoint = endpoint_at(engine, f"http://hooks.localhost:{port}/hooks/cgt")
    queue(engine, COI_A)
    sender = deliverer(engine, settings(), resolve=resolver({"hooks.localhost": ["127.0.0.1"]}))
    await deliver_until(engine, sender, lambda s: deliveries(s, endpoint)[0].status == "delivered")
    hook = listener.wait_for(lambda h: True, timeout=5)
    assert hook.headers["Host"] == f"hooks.localhost:{port}" and hook.path == "/hooks/cgt"


async def test_the_system_resolver_answers_with_every_address() -> None:
    assert ipaddress.ip_address("127.0.0.1") in await resolve_host("localhost", 80)


async def test_a_redirect_is_not_followed(engine: Engine, listener: WebhookListener) -> None:
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(307)
            self.send_header("Location", listener.url)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    with serving(Redirect) as url:
        endpoint = endpoint_at(engine, url)
        queue(engine, COI_A)
        sender = deliverer(engine, settings())
        await deliver_until(engine, sender, lambda s: deliveries(s, endpoint)[0].attempts >= 1)
    with session_factory(engine)() as session:
        assert deliveries(session, endpoint)[0].last_error == "HTTP 307"
    assert listener.received == []


async def test_during_the_overlap_a_delivery_carries_both_signatures_and_after_it_one(
    engine: Engine, listener: WebhookListener
) -> None:
    endpoint = endpoint_at(engine, listener.url)
    old_secret = current_secret(endpoint)
    with session_factory(engine)(expire_on_commit=False) as session:
        rotated = webhook_commands.visible_endpoint(session, endpoint.id, None, to_change=True)
        assert rotated is not None
        new_secret = webhook_commands.rotate_secret(session, rotated, settings())
        session.commit()
    assert rotated.previous_secret_valid_until is not None
    assert rotated.previous_secret_valid_until - utc_now() > timedelta(hours=23, minutes=59)
    queue(engine, COI_A)
    sender = deliverer(engine, settings())
    await deliver_until(engine, sender, lambda s: deliveries(s, endpoint)[0].status == "delivered")
    hook = listener.wait_for(lambda h: True, timeout=5)
    signatures = hook.headers[SIGNATURE_HEADER].split(", ")
    signed = (int(hook.headers[TIMESTAMP_HEADER]), hook.headers[IDEMPOTENCY_HEADER], hook.body)
    assert len(signatures) == 2
    assert new_secret == current_secret(rotated) != old_secret
    assert signature_matches([new_secret], *signed, signatures[0])
    assert signature_matches([old_secret], *signed, signatures[1])

    with session_factory(engine)() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
        assert stored is not None
        stored.previous_secret_valid_until = utc_now() - timedelta(seconds=1)  # the overlap is over
        session.add(stored)
        session.commit()
    queue(engine, COI_B)
    await deliver_until(
        engine, sender, lambda s: all(r.status == "delivered" for r in deliveries(s, endpoint))
    )
    later = listener.wait_for(lambda h: h.json()["coi"] == COI_B, timeout=5)
    signed = (int(later.headers[TIMESTAMP_HEADER]), later.headers[IDEMPOTENCY_HEADER], later.body)
    assert "," not in later.headers[SIGNATURE_HEADER]
    assert signature_matches([new_secret], *signed, later.headers[SIGNATURE_HEADER])
    assert not signature_matches([old_secret], *signed, later.headers[SIGNATURE_HEADER])
