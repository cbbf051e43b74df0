"""Infusion scheduling: wiring of settings, database, broker and routes.

A factory, nothing built at import. Run: uvicorn --factory services.scheduling.app:create_app
"""

from __future__ import annotations

from functools import partial

from cgt_contracts.events import (
    FollowUpVisitOverdue,
    InfusionRecorded,
    PlanReplanned,
    SlotAtRiskV2,
    SlotCancelledV2,
    SlotConfirmed,
    SlotHeldV2,
    SlotOptionsOffered,
    SlotProposed,
    SlotRescheduledV2,
    SlotResumedV2,
    WebhookDeliveryFailedV2,
)
from fastapi import FastAPI

from services.common.service import build_service
from services.common.topics import SCHEDULING as SCHEDULING_EVENTS
from services.scheduling import api, fhir_api, handlers, network_api, subscription_api, webhook_api
from services.scheduling.models import TABLES
from services.scheduling.runtime import SchedulingRuntime, SchedulingSettings

__all__ = ["SchedulingSettings", "create_app"]

SCHEDULING = (
    "Infusion-site scheduling. Coordinators keep each treatment center's calendar and capacity and book "
    "an infusion option; the appointment stays tentative until the product is delivered with its COI "
    "verified and a clean temperature record, and is held or moved when the shipment is quarantined or "
    "delayed. Treatment centers register signed webhooks (or FHIR Subscriptions) and read their cases, "
    "appointments and FHIR R4 Schedule, Slot and Appointment resources."
)

PUBLISHES = {
    SCHEDULING_EVENTS: (
        SlotOptionsOffered,
        SlotProposed,
        SlotConfirmed,
        SlotHeldV2,
        SlotResumedV2,
        SlotRescheduledV2,
        SlotCancelledV2,
        SlotAtRiskV2,
        PlanReplanned,
        InfusionRecorded,
        FollowUpVisitOverdue,
        WebhookDeliveryFailedV2,
    )
}
"""The event types scheduling's outbox writes, by topic (tests/unit/test_asyncapi.py holds it to the events
the package builds)."""


def create_app(settings: SchedulingSettings | None = None) -> FastAPI:
    """A new app with its own runtime from `settings`, else the environment."""
    runtime = SchedulingRuntime(settings=settings or SchedulingSettings())
    return build_service(
        runtime,
        tables=TABLES,
        routers=[
            api.router,
            network_api.router,
            webhook_api.router,
            fhir_api.router,
            subscription_api.router,
        ],
        description=SCHEDULING,
        wire=partial(handlers.wire, receipt_buffer_hours=runtime.settings.receipt_buffer_hours),
        publishes=PUBLISHES,
    )
