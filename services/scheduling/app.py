"""Infusion scheduling: wiring of settings, database, broker and routes.

A factory, nothing built at import. Run: uvicorn --factory services.scheduling.app:create_app
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.common.service import build_service
from services.scheduling import api, fhir_api, handlers, network_api, webhook_api
from services.scheduling.models import TABLES
from services.scheduling.runtime import SchedulingRuntime, SchedulingSettings

__all__ = ["SchedulingSettings", "create_app"]

SCHEDULING = (
    "Infusion-site scheduling. Coordinators keep each treatment center's calendar and capacity and book "
    "an infusion option; the appointment stays tentative until the product is delivered with its COI "
    "verified and a clean temperature record, and is held or moved when the shipment is quarantined or "
    "delayed. Treatment centers register signed webhooks and read their cases, appointments and FHIR R4 "
    "Schedule, Slot and Appointment resources."
)


def create_app(settings: SchedulingSettings | None = None) -> FastAPI:
    """A new app with its own runtime from `settings`, else the environment."""
    runtime = SchedulingRuntime(settings=settings or SchedulingSettings())
    return build_service(
        runtime,
        tables=TABLES,
        routers=[api.router, network_api.router, webhook_api.router, fhir_api.router],
        description=SCHEDULING,
        wire=partial(handlers.wire, receipt_buffer_hours=runtime.settings.receipt_buffer_hours),
    )
