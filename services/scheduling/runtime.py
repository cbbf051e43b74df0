"""Scheduling's settings and its one typed runtime (webhook deliverer, follow-up check), handed to routes
by `RuntimeDep`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import structlog
from cgt_contracts.envelope import utc_now
from cryptography.fernet import MultiFernet
from fastapi import Depends
from pydantic import Field, SecretStr, model_validator
from pydantic.config import JsonDict
from sqlalchemy.engine import Engine

from services.common.db import tables_of
from services.common.encryption import KeyRingError, key_ring, ring_keys
from services.common.service import Runtime, runtime_dependency
from services.common.settings import ServiceSettings
from services.common.unit_of_work import session_factory, wake_after_commit
from services.scheduling import commands
from services.scheduling.models import (
    CollectionCenter,
    ManufacturingCapacity,
    ManufacturingSite,
    Site,
    TherapyProtocol,
    WebhookDelivery,
)
from services.scheduling.webhook_commands import WebhookSettings
from services.scheduling.webhook_domain import FailurePolicy
from services.scheduling.webhooks import WebhookDeliverer

log = structlog.get_logger()
WEBHOOK_DELIVERY_TABLE = tables_of(WebhookDelivery)[0]


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
    public_base_url: str | None = Field(default=None, max_length=1024, pattern=r"^https?://[^\s]+$")
    """PUBLIC_BASE_URL: the service's address as subscribers reach it (behind a proxy); a FHIR
    notification's `fullUrl`s are under `<it>/fhir`. Unset: the address the Subscription was created at."""
    seed_sites: bool = True
    webhook_secret_key: SecretStr = Field(
        min_length=44,
        description="WEBHOOK_SECRET_KEY: the Fernet key the webhook secrets are stored under, or several "
        "separated by commas, newest first (rotation; `python -m services.scheduling.rekey`); no default",
    )

    def secret_values(self) -> dict[str, list[str]]:
        return {
            **super().secret_values(),
            "WEBHOOK_SECRET_KEY": ring_keys(self.webhook_secret_key.get_secret_value()),
        }

    def webhook_secret_ring(self) -> MultiFernet:
        try:
            return key_ring(self.webhook_secret_key.get_secret_value(), "WEBHOOK_SECRET_KEY")
        except KeyRingError as error:
            raise SystemExit(f"{self.service_name} does not start: {error}") from None

    @model_validator(mode="after")
    def _disable_within_attempts(self) -> SchedulingSettings:
        self.webhook_settings()  # refuses a threshold a single message could never reach
        return self

    def webhook_settings(self) -> WebhookSettings:
        return WebhookSettings(
            allow_loopback=self.webhook_allow_loopback,
            secret_overlap_hours=self.webhook_secret_overlap_hours,
            secret_keys=self.webhook_secret_ring(),
            failure=FailurePolicy(
                max_attempts=self.webhook_max_attempts,
                disable_after_failures=self.webhook_disable_after_failures,
                backoff_base_seconds=self.webhook_backoff_seconds,
            ),
        )


WASKYRA_MANUFACTURING: JsonDict = {
    "manufacturing_days": 45,
    "starting_material": "fresh",
    "outbound_transit_hours": 36.0,
    "max_fresh_transit_hours": 72.0,
    "max_cryopreserved_age_days": 365,
    "return_transit_hours": 48.0,
}
"""Demo figures: fresh apheresis at 2-8 °C reaches Milan within 72 h (docs/planning.md)."""


def seed(engine: Engine) -> None:
    """Demo calendars and protocol (the same site and therapy ids as order intake's seed registry): TC-BOSTON
    is its own collection center; Waskyra is made at MFG-AGC-MILAN."""
    with session_factory(engine)() as session:
        for row in (
            Site(
                id="TC-BOSTON",
                timezone="America/New_York",
                infusions_per_day=2,
                admissions_capacity=4,
                collection_center_id="TC-BOSTON",
            ),
            Site(id="TC-DENVER", timezone="America/Denver", infusions_per_day=1, admissions_capacity=2),
            CollectionCenter(id="TC-BOSTON", timezone="America/New_York", chairs_per_day=2),
            ManufacturingSite(id="MFG-AGC-MILAN", timezone="Europe/Rome"),
        ):
            if session.get(type(row), row.id) is None:
                session.add(row)
        boston = session.get(Site, "TC-BOSTON")
        if boston is not None and boston.collection_center_id is None:  # a database seeded before plans
            boston.collection_center_id = "TC-BOSTON"
        if session.get(ManufacturingCapacity, ("MFG-AGC-MILAN", "WASKYRA")) is None:
            session.add(
                ManufacturingCapacity(site_id="MFG-AGC-MILAN", therapy_code="WASKYRA", slots_per_week=2)
            )
        protocol = session.get(TherapyProtocol, "WASKYRA")
        if protocol is None:
            protocol = TherapyProtocol(code="WASKYRA", conditioning_days=4, receipt_buffer_hours=24.0)
        if protocol.manufacturing_days is None:
            for name, value in WASKYRA_MANUFACTURING.items():
                setattr(protocol, name, value)
        session.add(protocol)
        session.commit()


async def _every(seconds: float, work: Callable[[], object]) -> None:
    while True:
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.exception("scheduling.periodic_failed")
        await asyncio.sleep(seconds)


@dataclass(kw_only=True, eq=False)
class SchedulingRuntime(Runtime[SchedulingSettings]):
    webhooks: WebhookSettings = field(init=False)
    """URL policy, secret overlap and failure policy of webhook endpoints."""
    deliverer: WebhookDeliverer = field(init=False)
    """Sends queued webhooks; woken after each commit that wrote delivery rows."""
    periodic: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.webhooks = self.settings.webhook_settings()
        self.deliverer = WebhookDeliverer(
            self.engine, self.webhooks, timeout_seconds=self.settings.webhook_timeout_seconds
        )
        # Queued (inserted) and resumed (updated to pending) deliveries go out at once, not at the next poll.
        wake_after_commit(self.engine, WEBHOOK_DELIVERY_TABLE, self.deliverer.notify, on=("insert", "update"))

    def check_follow_up(self) -> None:
        with session_factory(self.engine)() as session:
            commands.publish_overdue_visits(session, utc_now().date(), correlation_id="follow-up-check")
            session.commit()

    async def on_startup(self) -> None:
        if self.settings.seed_sites:
            seed(self.engine)
        self.deliverer.start()
        self.periodic.append(
            asyncio.create_task(_every(self.settings.follow_up_check_seconds, self.check_follow_up))
        )

    async def on_shutdown(self) -> None:
        for task in self.periodic:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.deliverer.stop()


RuntimeDep = Annotated[SchedulingRuntime, Depends(runtime_dependency(SchedulingRuntime))]
