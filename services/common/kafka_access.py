"""How every Kafka client of the project reaches the broker: address, and who it is (SASL over TLS).

Each service authenticates as its own principal (SCRAM-SHA-512 over TLS); the broker's ACLs then decide
what it may write and read (`deploy/kafka/acls.py`). Every client the project builds (FastStream broker,
outbox producer, topic admin, the command-line tools, the tests' and benchmarks' raw clients) takes its
options from `KafkaAccess.client_options()`, so none can be built without the security the others have.

PLAINTEXT exists for a broker the operator has decided to trust by its network alone; it must be asked for.
"""

from __future__ import annotations

import ssl
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from faststream.security import BaseSecurity, SASLScram512
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SASL_MECHANISM = "SCRAM-SHA-512"
SecurityProtocol = Literal["SASL_SSL", "PLAINTEXT"]


class KafkaAccess(BaseModel):
    """One principal's way to the broker."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str
    security_protocol: SecurityProtocol = "SASL_SSL"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    """The certificate authority that signed the broker's certificate (else the system's trust store)."""

    @model_validator(mode="after")
    def _credentials_for_sasl(self) -> KafkaAccess:
        if self.security_protocol == "SASL_SSL" and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                "(or KAFKA_SECURITY_PROTOCOL=PLAINTEXT for a broker trusted by its network alone)"
            )
        return self

    def as_user(self, username: str, password: str) -> KafkaAccess:
        """The same broker, as another principal."""
        return self.model_copy(update={"sasl_username": username, "sasl_password": SecretStr(password)})

    @property
    def servers(self) -> list[str]:
        return self.bootstrap_servers.split(",")

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the broker's certificate and host name (the broker's address is in its certificate)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"bootstrap_servers": self.servers}
        if self.security_protocol == "SASL_SSL":
            assert self.sasl_password is not None
            options.update(
                security_protocol="SASL_SSL",
                sasl_mechanism=SASL_MECHANISM,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
                ssl_context=self.ssl_context,
            )
        return options

    def broker_security(self) -> BaseSecurity | None:
        """The same, for FastStream's `KafkaBroker(security=...)`."""
        if self.security_protocol == "PLAINTEXT":
            return None
        assert self.sasl_username is not None and self.sasl_password is not None
        return SASLScram512(
            self.sasl_username,
            self.sasl_password.get_secret_value(),
            ssl_context=self.ssl_context,
            use_ssl=True,
        )

    def environment(self) -> dict[str, str]:
        """KAFKA_* variables that give a child process (a service, a tool) this access."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": self.security_protocol,
        }
        if self.sasl_username and self.sasl_password:
            env["KAFKA_SASL_USERNAME"] = self.sasl_username
            env["KAFKA_SASL_PASSWORD"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            env["KAFKA_SSL_CAFILE"] = str(self.ssl_cafile)
        return env


class KafkaSettings(BaseSettings):
    """The KAFKA_* variables, read once here for the services (`ServiceSettings` extends it) and the CLIs."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "SASL_SSL"
    kafka_sasl_username: str | None = None
    """A service's own principal on the broker (its ACLs: `deploy/principals.py`)."""
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    def kafka_access(self) -> KafkaAccess:
        """Refuses (at start-up) SASL without credentials: nothing falls back to plaintext."""
        return KafkaAccess(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
        )


def kafka_from_environment() -> KafkaAccess:
    """The command-line tools' access: the same KAFKA_* variables the services read."""
    return KafkaSettings().kafka_access()
