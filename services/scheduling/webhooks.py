"""Delivers queued webhooks to treatment centers: signed, with an idempotency key, retried with backoff,
only to addresses the URL policy allows.

Invariant: a delivery row is written in the same transaction as the change it reports, so a restart
loses nothing; each row is POSTed until a 2xx answer (at least once; the receiver de-duplicates on the
Idempotency-Key, which is the row id and is signed) or until the decision after a failed attempt
(`webhook_domain.judge_attempt`) gives it up, or disables its endpoint — once, after the stated number of
consecutive failures, keeping its messages until it is resumed.

The host is resolved here and every address it resolves to is checked before anything is sent; the
request goes to the checked address (the URL's name in Host and TLS SNI), never through a proxy, and a
redirect is not followed (it counts as a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog
from cgt_contracts.envelope import utc_now
from cryptography.fernet import InvalidToken
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.fhir import FHIR_JSON
from services.common.unit_of_work import session_factory
from services.scheduling import subscription_commands, webhook_commands, webhook_domain
from services.scheduling.models import FhirSubscription, WebhookDelivery, WebhookEndpoint
from services.scheduling.webhook_commands import AttemptResult, WebhookSettings
from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    IPAddress,
)

log = structlog.get_logger()
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
Due = tuple[WebhookDelivery, WebhookEndpoint, FhirSubscription | None]
"""A due delivery, its endpoint, and the FHIR Subscription whose channel the endpoint is (if it is one)."""


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the name resolves to, from the system's resolver (without blocking the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True)
class Target:
    """Where one message goes: the URL with the checked address as its host, and the name it had."""

    url: str
    host_header: str
    sni_hostname: str | None


async def target_of(url: str, *, allow_loopback: bool, resolve: Resolver) -> Target | str:
    """The checked target of a webhook URL, or why nothing may be sent to it. The URL is judged again
    (it may have been registered under a looser policy), then each address its host resolves to."""
    refusal = webhook_domain.url_refusal(url, allow_loopback=allow_loopback)
    if refusal is not None:
        return f"refused: the URL {refusal}"
    parts = urlsplit(url)
    host = parts.hostname or ""
    scheme = parts.scheme.lower()
    literal = webhook_domain.literal_address(host)
    try:
        addresses = (
            [literal]
            if literal is not None
            else await resolve(host, parts.port or (443 if scheme == "https" else 80))
        )
    except (OSError, UnicodeError) as error:
        return f"refused: the host did not resolve ({type(error).__name__})"
    refusal = webhook_domain.resolved_refusal(addresses, scheme=scheme, allow_loopback=allow_loopback)
    if refusal is not None:
        return f"refused: {refusal}"
    address = addresses[0]
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port is not None:
        netloc += f":{parts.port}"
    return Target(
        url=urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=parts.netloc,
        sni_hostname=host if scheme == "https" and literal is None else None,
    )


class WebhookDeliverer:
    def __init__(
        self,
        engine: Engine,
        settings: WebhookSettings,
        *,
        timeout_seconds: float,
        poll_seconds: float = 0.5,
        resolve: Resolver = resolve_host,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._timeout = timeout_seconds
        self._poll = poll_seconds
        self._resolve = resolve
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Wake the deliverer, from any thread: the session factory calls it after each commit that
        queued or resumed deliveries (`unit_of_work.wake_after_commit`)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def client(self) -> httpx.AsyncClient:
        # No proxy from the environment (it would reach what the address check refused), no redirects.
        return httpx.AsyncClient(timeout=self._timeout, trust_env=False, follow_redirects=False)

    async def _run(self) -> None:
        async with self.client() as client:
            while True:
                # Cleared before looking, so a notice that arrives while delivering is not lost.
                self._wake.clear()
                try:
                    await self.deliver_due(client)
                except Exception:
                    log.exception("webhook.loop_failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll)

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """Attempt every due delivery; database work runs in a thread, never on the event loop."""
        due = await asyncio.to_thread(self._due)
        by_case: dict[str, list[Due]] = {}
        for row in due:
            by_case.setdefault(row[0].coi, []).append(row)
        results: list[AttemptResult] = []

        async def deliver_in_order(deliveries: list[Due]) -> None:
            # A patient's deliveries go out in the order they were queued; different patients' at once.
            for delivery, endpoint, subscription in deliveries:
                results.append(await self._attempt(client, delivery, endpoint, subscription))

        await asyncio.gather(*(deliver_in_order(deliveries) for deliveries in by_case.values()))
        if results:
            # A failure it publishes wakes the relay through the session factory, like any outbox row.
            await asyncio.to_thread(self._save, results)
        return len(due)

    def _due(self) -> list[Due]:
        with session_factory(self._engine)(expire_on_commit=False) as session:
            rows = session.exec(
                select(WebhookDelivery, WebhookEndpoint, FhirSubscription)
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .outerjoin(FhirSubscription, col(FhirSubscription.endpoint_id) == col(WebhookEndpoint.id))
                .where(WebhookDelivery.status == "pending")
                .where(col(WebhookEndpoint.active).is_(True))
                .where(col(WebhookDelivery.next_attempt_at) <= utc_now())
                .order_by(col(WebhookDelivery.created_at))
                .limit(50)
            ).all()
            session.expunge_all()
            return [(delivery, endpoint, subscription) for delivery, endpoint, subscription in rows]

    def _save(self, results: list[AttemptResult]) -> bool:
        """Record the attempts in one transaction; True if a failure was published."""
        with session_factory(self._engine)() as session:
            published = webhook_commands.record_attempts(session, results, self._settings.failure)
            session.commit()
        return published

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        delivery: WebhookDelivery,
        endpoint: WebhookEndpoint,
        subscription: FhirSubscription | None = None,
    ) -> AttemptResult:
        target = await target_of(
            endpoint.url, allow_loopback=self._settings.allow_loopback, resolve=self._resolve
        )
        status_code: int | None = None
        error: str | None
        if isinstance(target, str):
            succeeded, error = False, target
        else:
            try:
                response = await self._post(client, target, delivery, endpoint, subscription)
                status_code = response.status_code
                succeeded = 200 <= status_code < 300
                error = None if succeeded else f"HTTP {status_code}"
            except httpx.HTTPError as failure:
                succeeded, error = False, f"{type(failure).__name__}: {failure}"[:1000]
            except InvalidToken:  # a key dropped from the ring before `rekey` ran: an operator's fix
                succeeded, error = False, "its secret is encrypted under none of the WEBHOOK_SECRET_KEY keys"
        log.info(
            "webhook.attempt",
            delivery_id=str(delivery.id),
            endpoint_id=str(endpoint.id),
            kind=delivery.kind,
            attempt=delivery.attempts + 1,
            succeeded=succeeded,
            http_status=status_code,
            error=error,
        )
        return AttemptResult(delivery.id, endpoint.id, succeeded, status_code, error)

    async def _post(
        self,
        client: httpx.AsyncClient,
        target: Target,
        delivery: WebhookDelivery,
        endpoint: WebhookEndpoint,
        subscription: FhirSubscription | None = None,
    ) -> httpx.Response:
        body = delivery.payload.encode()
        key = str(delivery.id)
        headers = {
            "Host": target.host_header,
            IDEMPOTENCY_HEADER: key,
            "User-Agent": "cgt-logistics-scheduling/1",
        }
        if endpoint.channel == subscription_commands.FHIR_CHANNEL:
            # A FHIR notification Bundle: the subscriber's own channel headers authenticate it (no signature).
            headers |= dict(subscription_commands.channel_headers(subscription, self._settings))
            headers["Content-Type"] = FHIR_JSON
        else:
            timestamp = int(time.time())
            secrets = webhook_commands.signing_secrets(endpoint, self._settings, utc_now())
            headers |= {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: webhook_domain.signature_header(secrets, timestamp, key, body),
            }
        extensions: dict[str, Any] = {}
        if target.sni_hostname is not None:
            extensions["sni_hostname"] = target.sni_hostname
        return await client.post(target.url, content=body, headers=headers, extensions=extensions)
