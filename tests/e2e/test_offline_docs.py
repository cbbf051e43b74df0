"""The running services' /docs and /redoc need no network: every asset they name is served by the service."""

from __future__ import annotations

import httpx
import pytest

from deploy.stack import SERVICES
from tests.e2e.conftest import RunningStack
from tests.unit.test_offline_docs import offline_docs_assets

pytestmark = pytest.mark.e2e


async def test_every_service_serves_its_own_docs_assets(stack: RunningStack, http: httpx.AsyncClient) -> None:
    for name in SERVICES:
        base = stack.stack.url(name)
        assets = await offline_docs_assets(lambda path, base=base: http.get(f"{base}{path}"))  # type: ignore[misc]
        assert assets["/docs"] and assets["/redoc"], name
