"""/docs (Swagger UI) and /redoc (ReDoc) work without a network: their pages name only assets the service
serves itself (from the PyPI package fastapi-offline), and every one of them answers. On the app every service
is built with (services.common.service.build_service), through its ASGI interface; the e2e suite checks the
running services the same way (tests/e2e/test_offline_docs.py)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from deploy.stack import DEV_TOKENS_FILE
from services.common.service import DOCS_ASSETS_URL, Runtime, build_service
from services.common.settings import ServiceSettings

REFERENCE = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")
ANY_URL = re.compile(r"""https?://[^\s'"<>)]+""")
SMALLEST = {".js": 100_000, ".css": 10_000, ".png": 1_000}
"""A real bundle, not an error page: swagger-ui-bundle.js is ~1.5 MB, redoc.standalone.js ~1 MB."""


async def offline_docs_assets(get: Callable[[str], Awaitable[httpx.Response]]) -> dict[str, list[str]]:
    """Per page, the assets it references; raises AssertionError on anything that needs a network."""
    found: dict[str, list[str]] = {}
    for page in ("/docs", "/redoc"):
        response = await get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), page
        html = response.text
        assert ANY_URL.findall(html) == [], f"{page} names another host: {ANY_URL.findall(html)}"
        assets = [url for url in REFERENCE.findall(html) if url.startswith(DOCS_ASSETS_URL)]
        for url in assets:
            asset = await get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) >= SMALLEST[Path(url).suffix], (url, len(asset.content))
        found[page] = sorted(Path(url).name for url in assets)
    return found


def _client(app: FastAPI) -> httpx.AsyncClient:
    # The ASGI interface without the lifespan: no broker and no database are needed to serve the pages.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service.test")


async def test_docs_and_redoc_reference_only_assets_the_service_serves(tmp_path: Path) -> None:
    settings = ServiceSettings(
        service_name="docs-check",
        database_url=f"sqlite:///{tmp_path / 'docs.db'}",
        cgt_api_tokens_file=DEV_TOKENS_FILE,
        log_level="WARNING",
    )
    app = build_service(
        Runtime(settings=settings), tables=[], routers=[], wire=lambda runtime: None, publishes={}
    )
    async with _client(app) as client:
        assert await offline_docs_assets(client.get) == {
            "/docs": ["favicon.png", "swagger-ui-bundle.js", "swagger-ui.css"],
            "/redoc": ["favicon.png", "redoc.standalone.js"],
        }
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "CGT Logistics — docs-check"
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200


async def test_the_check_refuses_fastapis_default_pages_which_load_from_a_cdn() -> None:
    async with _client(FastAPI()) as client:
        with pytest.raises(AssertionError, match=r"/docs names another host: \['https://cdn\.jsdelivr\.net/"):
            await offline_docs_assets(client.get)
