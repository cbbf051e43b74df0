"""The three services' apps as their modules build them, from an environment of the test's own, never
started (no broker): for tests of the documents and the edge that need every route."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

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
