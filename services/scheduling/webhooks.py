"""Delivers queued webhooks to treatment centers: signed, with an idempotency key, retried with backoff.

Invariant: a delivery row is written in the same transaction as the change it reports, so a restart
loses nothing; each row is POSTed until a 2xx answer (at least once; the receiver de-duplicates on the
Idempotency-Key, which is the row id) or until its last attempt, when it is marked failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import timedelta

import httpx
import structlog
from cgt_contracts.envelope import utc_now
from cgt_contracts.events import WebhookDeliveryFailed, WebhookDeliveryFailedData
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.outbox import enqueue
from services.common.topics import SCHEDULING
from services.scheduling.domain import retry_delay_seconds
from services.scheduling.models import WebhookDelivery, WebhookEndpoint
from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_header,
)

log = structlog.get_logger()


class WebhookDeliverer:
    def __init__(
        self,
        engine: Engine,
        *,
        timeout_seconds: float,
        backoff_base_seconds: float,
        max_attempts: int,
        on_failure_committed: Callable[[], None],
        poll_seconds: float = 0.5,
    ) -> None:
        self._on_failure_committed = on_failure_committed
        self._engine = engine
        self._timeout = timeout_seconds
        self._backoff = backoff_base_seconds
        self._max_attempts = max_attempts
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout) as client:
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
        by_case: dict[str, list[tuple[WebhookDelivery, WebhookEndpoint]]] = {}
        for delivery, endpoint in due:
            by_case.setdefault(delivery.coi, []).append((delivery, endpoint))

        async def deliver_in_order(deliveries: list[tuple[WebhookDelivery, WebhookEndpoint]]) -> None:
            # A patient's deliveries go out in the order they were queued; different patients' at once.
            for delivery, endpoint in deliveries:
                await self._attempt(client, delivery, endpoint)

        await asyncio.gather(*(deliver_in_order(deliveries) for deliveries in by_case.values()))
        if due:
            failed_for_good = await asyncio.to_thread(self._save, due)
            if failed_for_good:
                self._on_failure_committed()
        return len(due)

    def _due(self) -> list[tuple[WebhookDelivery, WebhookEndpoint]]:
        with Session(self._engine, expire_on_commit=False) as session:
            rows = session.exec(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .where(WebhookDelivery.status == "pending")
                .where(col(WebhookDelivery.next_attempt_at) <= utc_now())
                .order_by(col(WebhookDelivery.created_at))
                .limit(50)
            ).all()
            session.expunge_all()
            return [(delivery, endpoint) for delivery, endpoint in rows]

    def _save(self, attempted: list[tuple[WebhookDelivery, WebhookEndpoint]]) -> bool:
        """Record the attempts in one transaction; True if a delivery failed for good (and was published)."""
        failed = False
        with Session(self._engine) as session:
            for delivery, endpoint in attempted:
                session.merge(delivery)
                if delivery.status == "failed":
                    failed = True
                    self._publish_failure(session, delivery, endpoint)
            session.commit()
        return failed

    @staticmethod
    def _publish_failure(session: Session, delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> None:
        """After the last attempt the failure is published (and the worklist shows it)."""
        enqueue(
            session,
            SCHEDULING,
            WebhookDeliveryFailed(
                source="cgt/scheduling",
                subject=delivery.coi,
                correlationid=str(delivery.id),
                data=WebhookDeliveryFailedData(
                    delivery_id=delivery.id,
                    appointment_id=delivery.appointment_id,
                    coi=delivery.coi,
                    treatment_center_id=endpoint.treatment_center_id,
                    kind=delivery.kind,
                    attempts=delivery.attempts,
                    last_error=(delivery.last_error or "")[:1000],
                ),
            ),
        )

    async def _attempt(
        self, client: httpx.AsyncClient, delivery: WebhookDelivery, endpoint: WebhookEndpoint
    ) -> None:
        body = delivery.payload.encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: str(delivery.id),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header([endpoint.secret], timestamp, str(delivery.id), body),
            "User-Agent": "cgt-logistics-scheduling/1",
        }
        delivery.attempts += 1
        try:
            response = await client.post(endpoint.url, content=body, headers=headers)
            delivery.last_status_code = response.status_code
            ok = 200 <= response.status_code < 300
            delivery.last_error = None if ok else f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            ok = False
            delivery.last_error = repr(error)[:1000]
        if ok:
            delivery.status = "delivered"
            delivery.delivered_at = utc_now()
        elif delivery.attempts >= self._max_attempts:
            delivery.status = "failed"
        else:
            delay = retry_delay_seconds(delivery.attempts, self._backoff)
            delivery.next_attempt_at = utc_now() + timedelta(seconds=delay)
        log.info(
            "webhook.attempt",
            delivery_id=str(delivery.id),
            kind=delivery.kind,
            attempt=delivery.attempts,
            status=delivery.status,
            http_status=delivery.last_status_code,
        )
