"""Order intake: wiring of settings, database, broker and routes. Run: uvicorn services.order_intake.app:app"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import Field

from services.common.service import Runtime, build_service
from services.common.settings import ServiceSettings
from services.order_intake import api, commands, handlers, registry
from services.order_intake.models import TABLES
from services.order_intake.seed import seed_registry

ORDER_INTAKE = (
    "Order intake for autologous cell and gene therapies. Coordinators and treatment centers place a "
    "therapy order; it is checked (site qualified for the therapy, prescriber, consent, payer "
    "authorization, eligibility, no other active order) and gets its ISBT 128 chain-of-identity (COI) "
    "identifier. Coordinators record collections (each with its DIN) and the order's steps, and keep the "
    "registry of therapies, treatment centers and prescribers. Patient identity stays here, encrypted."
)


class OrderIntakeSettings(ServiceSettings):
    service_name: str = "order-intake"
    issuer_fin: str = Field(default="W4321", pattern=r"^[A-NP-Z][0-9]{4}$")
    phi_encryption_key: str = Field(min_length=44, description="Fernet key (urlsafe base64 of 32 bytes)")
    seed_registry: bool = True


def create_app(settings: OrderIntakeSettings | None = None) -> FastAPI:
    settings = settings or OrderIntakeSettings()

    async def on_startup(runtime: Runtime) -> None:
        if settings.seed_registry:
            seed_registry(runtime.engine)

    app = build_service(
        name=settings.service_name,
        tables=TABLES,
        routers=[api.router, registry.router],
        description=ORDER_INTAKE,
        wire=handlers.wire,
        settings=settings,
        on_startup=on_startup,
    )
    app.state.order_issuer = commands.Issuer(
        fin=settings.issuer_fin, phi_key=settings.phi_encryption_key.encode()
    )
    return app


app = create_app()
