"""No secret has a usable default: outside development mode (CGT_DEV_MODE) each service refuses to start
with any of the published development secrets, naming the variable and never the value; with secrets of
its own it starts; `make up`'s stack and the tests set the mode. In process (each variable, each service)
and as real processes (uvicorn, the way a service is run)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.stack import DEV_TOKENS_FILE, ROOT, SERVICES, ConfiguredKafka, Stack, free_port, sqlite_urls
from services.coi_tracking.runtime import TrackingSettings
from services.common import development
from services.common.kafka_access import KafkaAccess
from services.common.settings import ServiceSettings
from services.order_intake.runtime import OrderIntakeSettings
from services.scheduling.runtime import SchedulingSettings

OWN_TOKENS = json.dumps({"tokens": {secrets.token_urlsafe(24): {"subject": "coord", "role": "coordinator"}}})
DEV_TOKENS = DEV_TOKENS_FILE.read_text()


@pytest.fixture(autouse=True)
def no_inherited_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own environment carries development keys (tests/conftest.py), and pydantic-settings
    merges a JSON object from the environment into the one given: each test states every secret itself."""
    for variable in ("LEDGER_SIGNING_KEYS", "COURIER_VERIFY_KEYS", "WEBHOOK_SECRET_KEY", "SEED_SIGNING_PINS"):
        monkeypatch.delenv(variable, raising=False)


def own_seed() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def own_public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return base64.b64encode(key).decode()


def own_secrets(settings_class: type[ServiceSettings]) -> dict[str, Any]:
    """Settings of a production run: every secret the operator's own."""
    common: dict[str, Any] = {"cgt_api_tokens": OWN_TOKENS, "cgt_dev_mode": False}
    if settings_class is OrderIntakeSettings:
        return {
            **common,
            "phi_encryption_key": Fernet.generate_key().decode(),
            "patient_match_key": secrets.token_urlsafe(32),
        }
    if settings_class is SchedulingSettings:
        return {**common, "webhook_secret_key": Fernet.generate_key().decode()}
    return {
        **common,
        "ledger_signing_keys": {"prod-1": own_seed()},
        "ledger_verify_keys": {"prod-0": own_public_key()},
        "courier_verify_keys": {"cx-1": {"company": "CRYO-EXPRESS", "public_key": own_public_key()}},
        "seed_signing_pins": {"qa-jr": "97531864"},
    }


DEV_LEDGER_PUBLIC = development.public_key_of(development.DEV_LEDGER_SIGNING_KEYS["dev-ledger-1"])
DEV_COURIER_KEY_ID, DEV_COURIER_SEED = development.DEV_COURIER_SIGNING_KEYS["CRYO-EXPRESS"]
DEVELOPMENT_SETTINGS: list[tuple[type[ServiceSettings], str, str, Any, str]] = [
    # (settings, field, variable, the development value as configured, the secret in it)
    (OrderIntakeSettings, "cgt_api_tokens", "CGT_API_TOKENS", DEV_TOKENS, "dev-coordinator-token"),
    (
        OrderIntakeSettings,
        "phi_encryption_key",
        "PHI_ENCRYPTION_KEY",
        development.DEV_PHI_KEY,
        development.DEV_PHI_KEY,
    ),
    (
        OrderIntakeSettings,
        "phi_encryption_key",
        "PHI_ENCRYPTION_KEY",
        f"{Fernet.generate_key().decode()},{development.DEV_PHI_KEY}",  # kept as an old key of the ring
        development.DEV_PHI_KEY,
    ),
    (
        OrderIntakeSettings,
        "patient_match_key",
        "PATIENT_MATCH_KEY",
        development.DEV_PATIENT_MATCH_KEY,
        development.DEV_PATIENT_MATCH_KEY,
    ),
    (
        SchedulingSettings,
        "webhook_secret_key",
        "WEBHOOK_SECRET_KEY",
        development.DEV_WEBHOOK_SECRET_KEY,
        development.DEV_WEBHOOK_SECRET_KEY,
    ),
    (SchedulingSettings, "cgt_api_tokens", "CGT_API_TOKENS", DEV_TOKENS, "dev-qa-token"),
    (
        TrackingSettings,
        "ledger_signing_keys",
        "LEDGER_SIGNING_KEYS",
        development.DEV_LEDGER_SIGNING_KEYS,
        development.DEV_LEDGER_SIGNING_KEYS["dev-ledger-1"],
    ),
    (
        TrackingSettings,
        "ledger_verify_keys",
        "LEDGER_VERIFY_KEYS",
        {"old": DEV_LEDGER_PUBLIC},
        DEV_LEDGER_PUBLIC,
    ),
    (
        TrackingSettings,
        "courier_verify_keys",
        "COURIER_VERIFY_KEYS",
        {
            DEV_COURIER_KEY_ID: {
                "company": "CRYO-EXPRESS",
                "public_key": development.public_key_of(DEV_COURIER_SEED),
            }
        },
        development.public_key_of(DEV_COURIER_SEED),
    ),
    (
        TrackingSettings,
        "seed_signing_pins",
        "SEED_SIGNING_PINS",
        development.DEV_SIGNING_PINS,
        development.DEV_QA_SIGNING_PIN,
    ),
    (TrackingSettings, "cgt_api_tokens", "CGT_API_TOKENS", DEV_TOKENS, "dev-courier-token"),
]


@pytest.mark.parametrize(
    ("settings_class", "field", "variable", "configured", "secret"),
    DEVELOPMENT_SETTINGS,
    ids=[f"{row[0].__name__}-{row[2]}-{i}" for i, row in enumerate(DEVELOPMENT_SETTINGS)],
)
def test_each_development_secret_stops_the_start_outside_development_mode(
    settings_class: type[ServiceSettings], field: str, variable: str, configured: Any, secret: str
) -> None:
    settings = {**own_secrets(settings_class), field: configured}
    with pytest.raises(SystemExit) as stopped:
        settings_class(**settings)
    message = str(stopped.value)
    assert f"published development secrets in {variable}." in message
    assert secret not in message
    assert settings_class(**{**settings, "cgt_dev_mode": True}).cgt_dev_mode  # a development run may


@pytest.mark.parametrize("settings_class", [OrderIntakeSettings, SchedulingSettings, TrackingSettings])
def test_secrets_of_the_operators_own_start_outside_development_mode(
    settings_class: type[ServiceSettings],
) -> None:
    settings = settings_class(**own_secrets(settings_class))
    assert not settings.cgt_dev_mode
    assert not development.variables_holding_development_values(settings.secret_values())


def test_the_published_tokens_are_the_development_tokens() -> None:
    assert set(json.loads(DEV_TOKENS)["tokens"]) == development.DEV_TOKENS


def _stack_environment(name: str, tmp_path: Path, **changes: str | None) -> dict[str, str]:
    """What `make up`'s stack gives a service (the development secrets), then the changes (None removes)."""
    kafka = ConfiguredKafka(KafkaAccess(bootstrap_servers="127.0.0.1:1", security_protocol="PLAINTEXT"))
    stack = Stack(kafka=kafka, database_urls=sqlite_urls(tmp_path / "db"), workdir=tmp_path / "logs")
    env = dict(stack.services[name].env)
    for variable, value in changes.items():
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = value
    return env


def _command(name: str) -> list[str]:
    """The service as `uvicorn` runs it."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        SERVICES[name],
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]


def _run_service(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(name),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_service_run_with_the_stacks_secrets_outside_development_mode_exits_saying_which(
    name: str, tmp_path: Path
) -> None:
    env = _stack_environment(name, tmp_path, **{development.DEV_MODE_VARIABLE: None})
    assert (
        development.DEV_MODE_VARIABLE not in env and os.environ.get(development.DEV_MODE_VARIABLE) == "true"
    )
    started = _run_service(name, env)
    output = started.stderr + started.stdout
    assert started.returncode != 0
    assert f"{name} does not start: published development secrets in CGT_API_TOKENS" in output
    expected = {
        "order-intake": ["PATIENT_MATCH_KEY", "PHI_ENCRYPTION_KEY"],
        "coi-tracking": ["COURIER_VERIFY_KEYS", "LEDGER_SIGNING_KEYS", "SEED_SIGNING_PINS"],
        "scheduling": ["WEBHOOK_SECRET_KEY"],
    }[name]
    assert all(variable in output for variable in expected)
    assert "Uvicorn running" not in output
    assert not any(value in output for value in development.DEVELOPMENT_VALUES)
    assert not list((tmp_path / "db").glob("*.db"))  # refused before a database is touched


def test_a_service_outside_development_mode_with_its_own_secrets_gets_past_them(tmp_path: Path) -> None:
    """The same process with the operator's own secrets passes the check and opens its database (then it
    waits for a broker, which this test's bootstrap address never is, and is stopped)."""
    env = _stack_environment(
        "scheduling",
        tmp_path,
        **{
            development.DEV_MODE_VARIABLE: "false",
            "CGT_API_TOKENS_FILE": None,
            "CGT_API_TOKENS": OWN_TOKENS,
            "WEBHOOK_SECRET_KEY": Fernet.generate_key().decode(),
        },
    )
    database = tmp_path / "db" / "scheduling.db"
    process = subprocess.Popen(
        _command("scheduling"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not database.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert database.exists(), "the service did not get as far as its database"
    finally:
        process.kill()  # it would wait for the broker to stop gracefully
        output, _ = process.communicate(timeout=30)
    assert b"published development secrets" not in output
