"""Order intake's settings and its one typed runtime, handed to routes by `RuntimeDep`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from cryptography.fernet import MultiFernet
from fastapi import Depends
from pydantic import Field, SecretStr

from services.common.encryption import KeyRingError, key_ring, ring_keys
from services.common.service import Runtime, runtime_dependency
from services.common.settings import ServiceSettings
from services.order_intake.commands import Issuer
from services.order_intake.seed import seed_registry


class OrderIntakeSettings(ServiceSettings):
    service_name: str = "order-intake"
    issuer_fin: str = Field(default="W4321", pattern=r"^[A-NP-Z][0-9]{4}$")
    phi_encryption_key: SecretStr = Field(
        min_length=44,
        description="PHI_ENCRYPTION_KEY: a Fernet key (urlsafe base64 of 32 bytes), or several separated by "
        "commas, newest first: the first encrypts, all decrypt (rotation; `python -m services.order_intake.rekey`)",
    )
    patient_match_key: SecretStr = Field(
        min_length=32, description="PATIENT_MATCH_KEY: the HMAC key of the patient match; no default"
    )
    seed_registry: bool = True

    def secret_values(self) -> dict[str, list[str]]:
        return {
            **super().secret_values(),
            "PHI_ENCRYPTION_KEY": ring_keys(self.phi_encryption_key.get_secret_value()),
            "PATIENT_MATCH_KEY": [self.patient_match_key.get_secret_value()],
        }

    def phi_key_ring(self) -> MultiFernet:
        try:
            return key_ring(self.phi_encryption_key.get_secret_value(), "PHI_ENCRYPTION_KEY")
        except KeyRingError as error:
            raise SystemExit(f"{self.service_name} does not start: {error}") from None


@dataclass(kw_only=True, eq=False)
class OrderIntakeRuntime(Runtime[OrderIntakeSettings]):
    issuer: Issuer = field(init=False)
    """The service's identity for identifiers and the key of the patients' identities."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.issuer = Issuer(
            fin=self.settings.issuer_fin,
            phi_keys=self.settings.phi_key_ring(),
            patient_match_key=self.settings.patient_match_key.get_secret_value().encode(),
        )

    async def on_startup(self) -> None:
        if self.settings.seed_registry:
            seed_registry(self.engine)


RuntimeDep = Annotated[OrderIntakeRuntime, Depends(runtime_dependency(OrderIntakeRuntime))]
