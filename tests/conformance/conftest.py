"""Conformance suite: the project's behaviour on official GS1 and HL7 documents (`make conformance`)."""

from __future__ import annotations

import pytest

from tests.conformance import material
from tests.e2e.conftest import http, stack

__all__ = ["http", "stack"]


def pytest_configure(config: pytest.Config) -> None:
    if (reason := material.missing()) is not None:
        raise pytest.UsageError(reason)
