"""docker-compose.yml, read as compose reads it (no engine needed): the services bind loopback only, the
broker and PostgreSQL publish nothing, and every secret comes from the operator's environment, required,
with no default and none of the published development values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML from the lock (schemathesis), no stubs

from services.common.development import DEVELOPMENT_VALUES

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
SECRETS = (
    "PHI_ENCRYPTION_KEY",
    "PATIENT_MATCH_KEY",
    "WEBHOOK_SECRET_KEY",
    "LEDGER_SIGNING_KEYS",
    "COURIER_VERIFY_KEYS",
)
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_services_listen_on_loopback_and_the_broker_and_database_publish_nothing() -> None:
    services = compose()["services"]
    for name in ("order-intake", "coi-tracking", "scheduling"):
        assert services[name]["ports"] and all(
            port.startswith("127.0.0.1:") for port in services[name]["ports"]
        )
    assert "ports" not in services["kafka"] and "ports" not in services["postgres"]


def test_every_secret_is_required_from_the_operators_environment() -> None:
    services = compose()["services"]
    for name in ("order-intake", "coi-tracking", "scheduling"):
        environment = services[name]["environment"]
        for secret in SECRETS:
            required = REQUIRED.match(environment[secret])
            assert required and required["name"] == secret, (name, secret)
        assert "CGT_DEV_MODE" not in environment and "SEED_SIGNING_PINS" not in environment
    assert REQUIRED.match(services["postgres"]["environment"]["POSTGRES_PASSWORD"])


def test_no_published_development_value_is_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    assert [value for value in DEVELOPMENT_VALUES if value in text] == []
    assert "dev-tokens.json" not in text
