"""Infusion scheduling: wiring. Run: uvicorn services.scheduling.app:app"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import Field
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.common.service import Runtime, build_service
from services.common.settings import ServiceSettings
from services.scheduling import api, handlers
from services.scheduling.models import TABLES, Site
from services.scheduling.webhooks import WebhookDeliverer


class SchedulingSettings(ServiceSettings):
    service_name: str = "scheduling"
    receipt_buffer_hours: float = Field(default=24.0, ge=0)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    seed_sites: bool = True


def seed_sites(engine: Engine) -> None:
    """Demo site calendars (the same site ids as order intake's seed registry)."""
    with Session(engine) as session:
        for site in (
            Site(id="TC-BOSTON", timezone="America/New_York", infusions_per_day=2),
            Site(id="TC-DENVER", timezone="America/Denver", infusions_per_day=1),
        ):
            if session.get(Site, site.id) is None:
                session.add(site)
        session.commit()


def create_app(settings: SchedulingSettings | None = None) -> FastAPI:
    settings = settings or SchedulingSettings()
    deliverer: WebhookDeliverer | None = None

    def wire(runtime: Runtime) -> None:
        nonlocal deliverer
        deliverer = WebhookDeliverer(
            runtime.engine,
            timeout_seconds=settings.webhook_timeout_seconds,
            backoff_base_seconds=settings.webhook_backoff_seconds,
            max_attempts=settings.webhook_max_attempts,
        )
        active = deliverer

        def after_commit() -> None:
            runtime.relay.notify()
            active.notify()

        handlers.wire(runtime, receipt_buffer_hours=settings.receipt_buffer_hours, after_commit=after_commit)

    async def on_startup(runtime: Runtime) -> None:
        if settings.seed_sites:
            seed_sites(runtime.engine)
        assert deliverer is not None
        deliverer.start()

    async def on_shutdown(runtime: Runtime) -> None:
        assert deliverer is not None
        await deliverer.stop()

    return build_service(
        name=settings.service_name,
        tables=TABLES,
        routers=[api.router],
        wire=wire,
        settings=settings,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )


app = create_app()
