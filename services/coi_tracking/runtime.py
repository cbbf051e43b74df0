"""COI tracking's settings and its one typed runtime, handed to routes by `RuntimeDep`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from jsonschema.protocols import Validator
from pydantic import Field, SecretStr

from services.coi_tracking import epcis, ledger
from services.coi_tracking.courier_keys import CourierKeyConfig, CourierSignatures, load_keys
from services.coi_tracking.domain import LedgerKeyError
from services.coi_tracking.scan_writer import ScanWriter
from services.coi_tracking.seed import seed_couriers, seed_signing_pins
from services.common.service import Runtime, runtime_dependency
from services.common.settings import ServiceSettings


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
    ledger_signing_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="LEDGER_SIGNING_KEYS: JSON {key id: base64 Ed25519 private key}; the last listed signs "
        "every ledger entry and head, all verify. None by default: the service refuses to start without one",
    )
    courier_verify_keys: dict[str, CourierKeyConfig] = Field(
        default_factory=dict,
        description="COURIER_VERIFY_KEYS: JSON {key id: {company, public_key}}, the Ed25519 public keys that "
        "courier companies sign their couriers.scans records with; none by default (every Kafka scan refused)",
    )
    ledger_verify_keys: dict[str, str] = Field(
        default_factory=dict,
        description="LEDGER_VERIFY_KEYS: JSON {key id: base64 Ed25519 public key} of retired ledger keys",
    )

    def secret_values(self) -> dict[str, list[str]]:
        # Public keys too: one whose private half is published would let anyone sign as the ledger or a company.
        return {
            **super().secret_values(),
            "LEDGER_SIGNING_KEYS": [key.get_secret_value() for key in self.ledger_signing_keys.values()],
            "LEDGER_VERIFY_KEYS": list(self.ledger_verify_keys.values()),
            "COURIER_VERIFY_KEYS": [config.public_key for config in self.courier_verify_keys.values()],
            "SEED_SIGNING_PINS": [pin.get_secret_value() for pin in self.seed_signing_pins.values()],
        }


def install_ledger_keys(settings: TrackingSettings) -> None:
    """No entry is written unsigned: without a signing key the service does not start (I3)."""
    private = {key_id: key.get_secret_value() for key_id, key in settings.ledger_signing_keys.items()}
    try:
        ledger.install_configured_keys(private, settings.ledger_verify_keys)
    except LedgerKeyError as error:
        raise SystemExit(f"coi-tracking does not start: {error}") from None


@dataclass(kw_only=True, eq=False)
class TrackingRuntime(Runtime[TrackingSettings]):
    epcis_validator: Validator = field(init=False)
    """The EPCIS 2.0 JSON Schema validator; without its schema the runtime is not built (SchemaUnavailable)."""
    scan_writer: ScanWriter = field(init=False)
    courier_signatures: CourierSignatures = field(init=False)
    """The registered courier companies' keys, checked on every record of couriers.scans."""
    """Applies the scans that arrive together in one transaction (started with the service)."""

    def __post_init__(self) -> None:
        # First: a missing schema refuses to start before a database or a broker is touched.
        self.epcis_validator = epcis.service_validator(self.settings.epcis_schema_path)
        install_ledger_keys(self.settings)
        try:
            self.courier_signatures = CourierSignatures(load_keys(self.settings.courier_verify_keys))
        except ValueError as error:
            raise SystemExit(f"coi-tracking does not start: {error}") from None
        super().__post_init__()
        self.scan_writer = ScanWriter(self.engine)

    async def on_startup(self) -> None:
        if self.settings.seed_couriers:
            seed_couriers(self.engine)
        seed_signing_pins(
            self.engine,
            {signer: pin.get_secret_value() for signer, pin in self.settings.seed_signing_pins.items()},
        )
        self.scan_writer.start()

    async def on_shutdown(self) -> None:
        await asyncio.to_thread(self.scan_writer.stop)


RuntimeDep = Annotated[TrackingRuntime, Depends(runtime_dependency(TrackingRuntime))]
