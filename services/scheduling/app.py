"""Infusion scheduling: wiring. Run: uvicorn services.scheduling.app:app"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from cgt_contracts.envelope import utc_now
from fastapi import FastAPI
from pydantic import Field, model_validator
from sqlalchemy.engine import Engine

from services.common.service import Runtime, build_service
from services.common.settings import ServiceSettings
from services.common.unit_of_work import session_factory
from services.scheduling import api, commands, handlers, webhook_api
from services.scheduling.models import TABLES, Site, TherapyProtocol
from services.scheduling.webhook_commands import WebhookSettings
from services.scheduling.webhook_domain import FailurePolicy
from services.scheduling.webhooks import WebhookDeliverer

log = structlog.get_logger()


SCHEDULING = (
    "Infusion-site scheduling. Coordinators keep each treatment center's calendar and capacity and book "
    "an infusion option; the appointment stays tentative until the product is delivered with its COI "
    "verified and a clean temperature record, and is held or moved when the shipment is quarantined or "
    "delayed. Treatment centers register signed webhooks and read their cases, appointments and FHIR R4 "
    "Schedule, Slot and Appointment resources."
)


class SchedulingSettings(ServiceSettings):
    service_name: str = "scheduling"
    receipt_buffer_hours: float = Field(default=24.0, ge=0)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_disable_after_failures: int = Field(default=8, ge=1)
    """Consecutive failed attempts that disable an endpoint (at most webhook_max_attempts)."""
    webhook_secret_overlap_hours: float = Field(default=24.0, ge=0, le=24 * 30)
    """How long a rotated-out secret still signs deliveries (beside the new one)."""
    webhook_allow_loopback: bool = False
    """Development and tests only: webhooks to loopback hosts, over http too."""
    follow_up_check_seconds: float = Field(default=60.0, gt=0)
    seed_sites: bool = True

    @model_validator(mode="after")
    def _disable_within_attempts(self) -> SchedulingSettings:
        self.webhook_settings()  # refuses a threshold a single message could never reach
        return self

    def webhook_settings(self) -> WebhookSettings:
        return WebhookSettings(
            allow_loopback=self.webhook_allow_loopback,
            secret_overlap_hours=self.webhook_secret_overlap_hours,
            failure=FailurePolicy(
                max_attempts=self.webhook_max_attempts,
                disable_after_failures=self.webhook_disable_after_failures,
                backoff_base_seconds=self.webhook_backoff_seconds,
            ),
        )


def seed(engine: Engine) -> None:
    """Demo calendars and protocol (the same site and therapy ids as order intake's seed registry)."""
    with session_factory(engine)() as session:
        for row in (
            Site(id="TC-BOSTON", timezone="America/New_York", infusions_per_day=2, admissions_capacity=4),
            Site(id="TC-DENVER", timezone="America/Denver", infusions_per_day=1, admissions_capacity=2),
        ):
            if session.get(Site, row.id) is None:
                session.add(row)
        if session.get(TherapyProtocol, "WASKYRA") is None:
            session.add(TherapyProtocol(code="WASKYRA", conditioning_days=4, receipt_buffer_hours=24.0))
        session.commit()


async def _every(seconds: float, work: Callable[[], object]) -> None:
    while True:
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.exception("scheduling.periodic_failed")
        await asyncio.sleep(seconds)


def create_app(settings: SchedulingSettings | None = None) -> FastAPI:
    settings = settings or SchedulingSettings()
    parts: dict[str, WebhookDeliverer] = {}
    hooks: dict[str, Callable[[], None]] = {}
    tasks: list[asyncio.Task[None]] = []

    def wire(runtime: Runtime) -> None:
        deliverer = WebhookDeliverer(
            runtime.engine,
            settings.webhook_settings(),
            timeout_seconds=settings.webhook_timeout_seconds,
            on_failure_committed=runtime.relay.notify,
        )
        parts["deliverer"] = deliverer

        def after_commit() -> None:
            runtime.relay.notify()
            deliverer.notify()

        hooks["after_commit"] = after_commit
        handlers.wire(runtime, receipt_buffer_hours=settings.receipt_buffer_hours, after_commit=after_commit)

    def check_follow_up(runtime: Runtime) -> None:
        with session_factory(runtime.engine)() as session:
            published = commands.publish_overdue_visits(
                session, utc_now().date(), correlation_id="follow-up-check"
            )
            session.commit()
        if published:
            runtime.relay.notify()

    async def on_startup(runtime: Runtime) -> None:
        if settings.seed_sites:
            seed(runtime.engine)
        parts["deliverer"].start()
        tasks.append(
            asyncio.create_task(_every(settings.follow_up_check_seconds, lambda: check_follow_up(runtime)))
        )

    async def on_shutdown(runtime: Runtime) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await parts["deliverer"].stop()

    app = build_service(
        name=settings.service_name,
        tables=TABLES,
        routers=[api.router, webhook_api.router],
        description=SCHEDULING,
        wire=wire,
        settings=settings,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    app.state.scheduling_settings = settings
    app.state.after_commit = hooks["after_commit"]
    app.state.webhook_settings = settings.webhook_settings()
    return app


app = create_app()
