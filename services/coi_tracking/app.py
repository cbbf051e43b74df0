"""COI tracking: wiring of settings, database, broker and routes. Run: uvicorn services.coi_tracking.app:app"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI
from pydantic import Field

from services.coi_tracking import api, handlers
from services.coi_tracking.models import TABLES
from services.common.service import build_service
from services.common.settings import ServiceSettings


class TrackingSettings(ServiceSettings):
    service_name: str = "coi-tracking"
    default_courier_company: str = "CRYO-EXPRESS"
    manufacturing_site: str = "manufacturer:AGC-MILAN"
    bags_per_shipment: int = Field(default=1, ge=1, le=20)
    fresh_max_transit_hours: float = Field(default=72.0, gt=0, description="Fresh apheresis: 72 h at 2-8 °C")


def create_app(settings: TrackingSettings | None = None) -> FastAPI:
    settings = settings or TrackingSettings()
    return build_service(
        name=settings.service_name,
        tables=TABLES,
        routers=[api.router],
        wire=partial(
            handlers.wire,
            planning=handlers.Planning(
                courier_company=settings.default_courier_company,
                manufacturing_site=settings.manufacturing_site,
                bag_count=settings.bags_per_shipment,
                fresh_max_transit_hours=settings.fresh_max_transit_hours,
            ),
        ),
        settings=settings,
    )


app = create_app()
