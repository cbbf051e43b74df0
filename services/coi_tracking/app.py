"""COI tracking: wiring of settings, database, broker and routes. Run: uvicorn services.coi_tracking.app:app"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import structlog
from fastapi import FastAPI
from pydantic import Field, SecretStr

from services.coi_tracking import api, epcis, handlers
from services.coi_tracking.models import TABLES
from services.coi_tracking.scan_writer import ScanWriter
from services.coi_tracking.seed import seed_couriers, seed_signing_pins
from services.common.service import Runtime, build_service
from services.common.settings import ServiceSettings

COI_TRACKING = (
    "Cryogenic shipment chain-of-identity tracking. Couriers declare the dry shipper, post scans "
    "(pick-up, hand-off, checkpoint, delay, delivery, receipt), logger readings and GS1 EPCIS 2.0 "
    "documents; every bag's COI and every temperature is checked, every hand-off is recorded in a "
    "hash-chained custody ledger, and a shipment is quarantined at once on a COI break or a warm reading. "
    "QA releases or rejects a quarantined shipment with a signed disposition."
)


class TrackingSettings(ServiceSettings):
    service_name: str = "coi-tracking"
    default_courier_company: str = "CRYO-EXPRESS"
    manufacturing_site: str = "manufacturer:AGC-MILAN"
    bags_per_shipment: int = Field(default=1, ge=1, le=20)
    fresh_max_transit_hours: float = Field(default=72.0, gt=0, description="Fresh apheresis: 72 h at 2-8 °C")
    epcis_schema_path: Path = epcis.DEFAULT_SCHEMA_PATH
    seed_couriers: bool = True
    seed_signing_pins: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Development QA signers' signing PINs, JSON {signer id: PIN}; none by default",
    )


def create_app(settings: TrackingSettings | None = None) -> FastAPI:
    settings = settings or TrackingSettings()
    validator = epcis.service_validator(settings.epcis_schema_path)  # SchemaUnavailable: refuse to start

    async def start_scan_writer(runtime: Runtime) -> None:
        if settings.seed_couriers:
            seed_couriers(runtime.engine)
        seed_signing_pins(
            runtime.engine,
            {signer: pin.get_secret_value() for signer, pin in settings.seed_signing_pins.items()},
        )
        writer = ScanWriter(runtime.engine, runtime.relay.notify)
        writer.start()
        app.state.scan_writer = writer

    async def stop_scan_writer(runtime: Runtime) -> None:
        await asyncio.to_thread(app.state.scan_writer.stop)

    app = build_service(
        name=settings.service_name,
        tables=TABLES,
        routers=[api.router],
        description=COI_TRACKING,
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
        on_startup=start_scan_writer,
        on_shutdown=stop_scan_writer,
    )
    app.state.epcis_validator = validator
    return app


def _app() -> FastAPI:
    """The app uvicorn serves; without its EPCIS schema the service refuses to start, saying why."""
    try:
        return create_app()
    except epcis.SchemaUnavailable as error:
        structlog.get_logger().error("epcis.schema_unavailable", reason=str(error))
        raise SystemExit(f"coi-tracking does not start: {error}") from None


app = _app()
