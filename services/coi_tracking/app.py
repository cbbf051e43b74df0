"""COI tracking: wiring of settings, database, broker and routes.

A factory, nothing built at import. Run: uvicorn --factory services.coi_tracking.app:create_app
"""

from __future__ import annotations

from functools import partial

import structlog
from cgt_contracts.events import (
    CoiBreak,
    CustodyTransferredV2,
    LedgerHeadPublished,
    ShipmentCreated,
    ShipmentDelayedV2,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentQuarantinedV2,
    ShipmentRejectedV2,
    ShipmentReleasedV2,
    ShipmentScannedV2,
    TemperatureExcursion,
)
from fastapi import FastAPI

from services.coi_tracking import api, epcis, epcis_query_api, handlers
from services.coi_tracking.models import TABLES
from services.coi_tracking.runtime import TrackingRuntime, TrackingSettings
from services.common.service import build_service
from services.common.topics import LEDGER_HEADS, SHIPMENTS

__all__ = ["TrackingSettings", "create_app"]

COI_TRACKING = (
    "Cryogenic shipment chain-of-identity tracking. Couriers declare the dry shipper, post scans "
    "(pick-up, hand-off, checkpoint, delay, delivery, receipt), logger readings and GS1 EPCIS 2.0 "
    "documents; every bag's COI and every temperature is checked, every hand-off is recorded in a "
    "hash-chained custody ledger, and a shipment is quarantined at once on a COI break or a warm reading. "
    "QA releases or rejects a quarantined shipment with a signed disposition."
)

PUBLISHES = {
    SHIPMENTS: (
        ShipmentCreated,
        ShipmentDispatched,
        ShipmentScannedV2,
        CustodyTransferredV2,
        ShipmentDelayedV2,
        ShipmentDelivered,
        CoiBreak,
        TemperatureExcursion,
        ShipmentQuarantinedV2,
        ShipmentReleasedV2,
        ShipmentRejectedV2,
    ),
    LEDGER_HEADS: (LedgerHeadPublished,),
}
"""The event types COI tracking's outbox writes, by topic (tests/unit/test_asyncapi.py holds it to the events
the package builds)."""


def create_app(settings: TrackingSettings | None = None) -> FastAPI:
    """A new app with its own runtime from `settings`, else the environment. Without its EPCIS schema the
    service refuses to start, saying why (SystemExit: uvicorn stops; nothing was created)."""
    settings = settings or TrackingSettings()
    try:
        runtime = TrackingRuntime(settings=settings)
    except epcis.SchemaUnavailable as error:
        structlog.get_logger().error("epcis.schema_unavailable", reason=str(error))
        raise SystemExit(f"coi-tracking does not start: {error}") from None
    planning = handlers.Planning(
        courier_company=settings.default_courier_company,
        manufacturing_site=settings.manufacturing_site,
        bag_count=settings.bags_per_shipment,
        fresh_max_transit_hours=settings.fresh_max_transit_hours,
    )
    return build_service(
        runtime,
        tables=TABLES,
        routers=[api.router, epcis_query_api.router],
        description=COI_TRACKING,
        wire=partial(handlers.wire, planning=planning),
        publishes=PUBLISHES,
    )
