"""The console's configuration from its environment (12-factor), like the services'."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import development


class ConsoleSettings(BaseSettings):
    """Where the services answer, the key that signs the console's cookies, how long a session lasts.

    The console holds no credentials of its own and no domain data: it calls the services with the
    signed-in user's token."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    service_name: str = "console"
    order_intake_url: str = "http://127.0.0.1:8001"
    coi_tracking_url: str = "http://127.0.0.1:8002"
    scheduling_url: str = "http://127.0.0.1:8003"
    console_session_key: SecretStr = Field(min_length=32)
    """CONSOLE_SESSION_KEY: signs the session and sign-in cookies. Required; at least 32 characters."""
    console_session_hours: float = Field(default=8.0, gt=0, le=24)
    """A session ends this long after sign-in, whatever is done meanwhile."""
    console_cookie_secure: bool = True
    """`Secure` on the console's cookies: off only for a loopback development run over plain HTTP."""
    service_timeout_seconds: float = Field(default=10.0, gt=0)
    log_level: str = "INFO"
    cgt_dev_mode: bool = False

    def model_post_init(self, context: object, /) -> None:
        self.refuse_development_secrets()

    @property
    def session_seconds(self) -> int:
        return int(self.console_session_hours * 3600)

    def refuse_development_secrets(self) -> None:
        """Outside development mode the published development key stops the start (naming the variable,
        never the value): with it, anyone could forge a session cookie's signature."""
        if self.cgt_dev_mode:
            return
        secrets = {"CONSOLE_SESSION_KEY": [self.console_session_key.get_secret_value()]}
        found = development.variables_holding_development_values(secrets)
        if found:
            raise SystemExit(
                f"{self.service_name} does not start: published development secrets in {', '.join(found)}. "
                f"Configure your own, or set {development.DEV_MODE_VARIABLE}=true for a development run."
            )
