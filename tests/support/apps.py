"""The three services' apps as their modules build them, from an environment of the test's own, never
started (no broker): for tests of the documents and the edge that need every route."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "order_intake": "OrderIntakeSettings",
    "coi_tracking": "TrackingSettings",
    "scheduling": "SchedulingSettings",
}
"""Each service's package and its settings class."""


@contextmanager
def every_app(scratch: Path) -> Iterator[dict[str, FastAPI]]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CGT_API_TOKENS_FILE", str(ROOT / "deploy" / "dev-tokens.json"))
        env.setenv("PHI_ENCRYPTION_KEY", Fernet.generate_key().decode())
        env.setenv("PATIENT_MATCH_KEY", "test-patient-match-key-of-32-chars-or-more")
        env.setenv("DATABASE_URL", f"sqlite:///{scratch / 'x.db'}")
        env.setenv("LOG_LEVEL", "WARNING")
        built = {}
        for service, settings_class in SERVICES.items():
            module = importlib.import_module(f"services.{service}.app")
            built[service] = module.create_app(getattr(module, settings_class)())
        yield built


@contextmanager
def scheduling_client(engine: Engine, scratch: Path, tokens: dict[str, Any]) -> Iterator[TestClient]:
    """Scheduling's app on the test's database, never started (no broker), for `tokens`' callers."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CGT_API_TOKENS", json.dumps(tokens))
        env.setenv("DATABASE_URL", f"sqlite:///{scratch / 'unused.db'}")
        module = importlib.import_module("services.scheduling.app")
        settings = module.SchedulingSettings(
            database_url=engine.url.render_as_string(hide_password=False),
            cgt_api_tokens=json.dumps(tokens),
            log_level="WARNING",
        )
        client = TestClient(module.create_app(settings))
        try:
            yield client
        finally:
            client.close()
