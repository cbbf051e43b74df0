"""Order intake: wiring of settings, database, broker and routes.

A factory, nothing built at import. Run: uvicorn --factory services.order_intake.app:create_app
"""

from __future__ import annotations

from cgt_contracts.events import (
    CollectionRecorded,
    ManufacturingDelayed,
    ManufacturingFailed,
    ManufacturingStarted,
    OosFileCompleted,
    OrderAcceptedV2,
    OrderCancelledV2,
    OrderRejectedV2,
    PayerAuthorizationRenewed,
    ProductReleasedForShipmentV2,
    SiteQualificationChanged,
)
from fastapi import FastAPI

from services.common.service import build_service
from services.common.topics import ORDERS
from services.order_intake import api, fhir_api, handlers, registry
from services.order_intake.models import TABLES
from services.order_intake.runtime import OrderIntakeRuntime, OrderIntakeSettings

__all__ = ["OrderIntakeSettings", "create_app"]

ORDER_INTAKE = (
    "Order intake for autologous cell and gene therapies. Coordinators and treatment centers place a "
    "therapy order; it is checked (site qualified for the therapy, prescriber, consent, payer "
    "authorization, eligibility, no other active order) and gets its ISBT 128 chain-of-identity (COI) "
    "identifier. Coordinators record collections (each with its DIN) and the order's steps, and keep the "
    "registry of therapies, treatment centers and prescribers. Patient identity stays here, encrypted."
)

PUBLISHES = {
    ORDERS: (
        OrderAcceptedV2,
        OrderRejectedV2,
        OrderCancelledV2,
        SiteQualificationChanged,
        PayerAuthorizationRenewed,
        CollectionRecorded,
        ManufacturingStarted,
        ManufacturingDelayed,
        ManufacturingFailed,
        ProductReleasedForShipmentV2,
        OosFileCompleted,
    )
}
"""The event types order intake's outbox writes, by topic (tests/unit/test_asyncapi.py holds it to the events
the package builds)."""


def create_app(settings: OrderIntakeSettings | None = None) -> FastAPI:
    """A new app with its own runtime (database, broker, relay) from `settings`, else the environment."""
    runtime = OrderIntakeRuntime(settings=settings or OrderIntakeSettings())
    return build_service(
        runtime,
        tables=TABLES,
        routers=[api.router, registry.router, fhir_api.router],
        description=ORDER_INTAKE,
        wire=handlers.wire,
        publishes=PUBLISHES,
    )
