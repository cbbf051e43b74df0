"""Settings every service reads from its environment (12-factor): database, broker, callers."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from services.common import development
from services.common.auth import Principal
from services.common.kafka_access import KafkaSettings


class ServiceSettings(KafkaSettings):
    """One service's configuration. Environment variables win; defaults suit a local run."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    service_name: str = "cgt"
    database_url: str = ""
    kafka_replication_factor: int = Field(default=1, ge=1, le=5)
    cgt_api_tokens_file: Path | None = None
    cgt_api_tokens: str | None = None
    log_level: str = "INFO"
    outbox_poll_seconds: float = Field(default=0.5, gt=0)
    consumer_max_attempts: int = Field(default=5, ge=1)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    rate_limit_per_minute: int = Field(default=600, ge=1)
    rate_limit_failed_auth_per_minute: int = Field(default=10, ge=1)
    cgt_dev_mode: bool = False
    """CGT_DEV_MODE: a development run (`make up`, the tests), allowed the published development secrets."""

    @model_validator(mode="after")
    def _default_database(self) -> ServiceSettings:
        if not self.database_url:
            Path("var").mkdir(exist_ok=True)
            self.database_url = f"sqlite:///var/{self.service_name}.db"
        return self

    def model_post_init(self, context: object, /) -> None:
        # Here, so that no path builds settings around a development secret: the services, the CLIs.
        self.refuse_development_secrets()

    def secret_values(self) -> dict[str, list[str]]:
        """Each configured secret's values by the variable that holds it; a service adds its own."""
        configured = bool(self.cgt_api_tokens or self.cgt_api_tokens_file)
        return {"CGT_API_TOKENS": list(self.principals()) if configured else []}

    def refuse_development_secrets(self) -> None:
        """Outside development mode a published development secret stops the start (naming the variable,
        never the value): with it, anyone could read patients' identities, sign, or call as any role."""
        if self.cgt_dev_mode:
            return
        found = development.variables_holding_development_values(self.secret_values())
        if found:
            raise SystemExit(
                f"{self.service_name} does not start: published development secrets in {', '.join(found)}. "
                f"Configure your own, or set {development.DEV_MODE_VARIABLE}=true for a development run."
            )

    def principals(self) -> dict[str, Principal]:
        """Callers by token, from CGT_API_TOKENS (JSON) or CGT_API_TOKENS_FILE. No default: refuse to start."""
        if self.cgt_api_tokens:
            raw = self.cgt_api_tokens
        elif self.cgt_api_tokens_file:
            raw = self.cgt_api_tokens_file.read_text()
        else:
            raise RuntimeError("no callers configured: set CGT_API_TOKENS or CGT_API_TOKENS_FILE")
        try:
            return _TokenFile.model_validate(json.loads(raw)).tokens
        except (ValidationError, json.JSONDecodeError) as error:
            raise RuntimeError(f"invalid caller configuration: {error}") from error


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: dict[str, Principal]
