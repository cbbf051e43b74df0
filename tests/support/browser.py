"""Real-browser testing: Playwright driving Debian's chromium, axe-core's accessibility check, a loopback
static site, and the screenshot a failing test leaves behind.

tests/browser/conftest.py imports the fixtures and the hook from here (so a sub-run of pytest can load this
module as a plugin with `-p tests.support.browser`). The API is Playwright's async one: the browser lives on
pytest-asyncio's session loop, beside the e2e stack's async fixtures. (Playwright's sync API keeps its own
loop marked as running on the main thread for as long as it is started, which breaks every async test and
fixture after it in the same session.)

Traffic stays on loopback: every context routes each request through `LoopbackOnly`, which aborts and records
any request to another host; the `page` fixture fails the test that made one.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Generator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Playwright, Route, async_playwright

from deploy import fetch_browser_assets, npm_fetch

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (`make browser` installs it); Playwright's own browser download is not used."""
AXE_JS = fetch_browser_assets.AXE.path
SCREENSHOT_DIR = Path("test-artifacts") / "screenshots"
"""Under the pytest root directory (git-ignored)."""
TIMEOUT_MS = 10_000
"""Every wait of a page (a locator, a navigation, an `expect`) gives up after this: failures don't hang."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
FAILING_IMPACTS = ("serious", "critical")

REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


# --- the screenshot on failure -----------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so that the `page` fixture's teardown knows the test failed."""
    report: pytest.TestReport = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def screenshot_path(root: Path, nodeid: str) -> Path:
    """`test-artifacts/screenshots/<test>.png`, the test named by its node id made into a file name."""
    name = re.sub(r"[^A-Za-z0-9_.\[\]-]+", "_", nodeid.replace("::", "__")).strip("_")
    return root / SCREENSHOT_DIR / f"{name}.png"


def failed(item: pytest.Item) -> bool:
    reports = item.stash.get(REPORTS, {})
    return any(report.failed for report in reports.values())


# --- the browser -------------------------------------------------------------------------------------------


def launch_arguments() -> list[str]:
    # Chromium refuses to start its sandbox as root (CI runs as root): there it runs without.
    return ["--no-sandbox"] if os.geteuid() == 0 else []


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as driver:
        yield driver


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """One headless Debian chromium for the whole session; each test gets its own context (cookies, storage)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)", pytrace=False)
    launched = await playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=launch_arguments()
    )
    yield launched
    await launched.close()


@dataclass
class LoopbackOnly:
    """Lets requests to loopback through; aborts and records every other one."""

    refused: list[str] = field(default_factory=list)

    @staticmethod
    def allowed(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("data", "blob", "about") or (parts.hostname or "") in LOOPBACK_HOSTS

    async def route(self, route: Route) -> None:
        url = route.request.url
        if self.allowed(url):
            await route.continue_()
        else:
            self.refused.append(url)
            await route.abort("blockedbyclient")


async def new_context(browser: Browser, guard: LoopbackOnly, **options: Any) -> BrowserContext:
    """A context whose traffic `guard` keeps on loopback, with bounded waits.

    `bypass_csp` lets the accessibility check inject axe-core into pages that serve a strict
    Content-Security-Policy (the console does); a test of the policy itself opens its own context without it.
    """
    context = await browser.new_context(**{"bypass_csp": True, **options})
    context.set_default_timeout(TIMEOUT_MS)
    await context.route("**/*", guard.route)
    return context


@pytest.fixture
def loopback_guard() -> LoopbackOnly:
    return LoopbackOnly()


@pytest_asyncio.fixture(loop_scope="session")
async def page(
    browser: Browser, loopback_guard: LoopbackOnly, request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    """A fresh page in its own context; a screenshot of it when the test fails; no traffic off loopback."""
    context = await new_context(browser, loopback_guard)
    opened = await context.new_page()
    try:
        yield opened
        if failed(request.node):
            path = screenshot_path(request.config.rootpath, request.node.nodeid)
            path.parent.mkdir(parents=True, exist_ok=True)
            await opened.screenshot(path=str(path), full_page=True)
    finally:
        await context.close()
    if loopback_guard.refused:
        pytest.fail(f"the page asked for hosts other than loopback: {loopback_guard.refused}", pytrace=False)


# --- the accessibility check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One axe-core rule a page breaks, with the CSS selectors of the elements that break it."""

    rule: str
    impact: Literal["minor", "moderate", "serious", "critical"] | None
    help: str
    help_url: str
    targets: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.rule} ({self.impact}): {self.help} — {', '.join(self.targets)} [{self.help_url}]"


class AccessibilityViolations(AssertionError):
    def __init__(self, url: str, violations: list[Violation]) -> None:
        self.violations = violations
        lines = "\n".join(f"  - {violation}" for violation in violations)
        super().__init__(f"{len(violations)} serious or critical accessibility violations on {url}:\n{lines}")


_AXE_RUN = """async () => {
  const results = await axe.run(document, {resultTypes: ["violations"]});
  return results.violations.map((v) => ({
    rule: v.id, impact: v.impact, help: v.help, help_url: v.helpUrl,
    targets: v.nodes.map((node) => node.target.map(String).join(" ")),
  }));
}"""


async def axe_violations(page: Page) -> list[Violation]:
    """Every violation axe-core finds on the page as it is now, whatever its impact."""
    if not npm_fetch.cached_ok(AXE_JS, fetch_browser_assets.AXE.sha256):
        pytest.fail(f"{AXE_JS} is missing or not the pinned file: run `make install`", pytrace=False)
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(AXE_JS))
    found: list[dict[str, Any]] = await page.evaluate(_AXE_RUN)
    return [
        Violation(item["rule"], item["impact"], item["help"], item["help_url"], tuple(item["targets"]))
        for item in found
    ]


async def assert_accessible(page: Page) -> list[Violation]:
    """Fail listing every serious or critical violation; return the milder ones (for a test to look at)."""
    violations = await axe_violations(page)
    failing = [violation for violation in violations if violation.impact in FAILING_IMPACTS]
    if failing:
        raise AccessibilityViolations(page.url, failing)
    return violations


# --- a loopback static site --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    body: str
    content_type: str = "text/html; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


class StaticSite:
    """Pages served from memory by a threaded HTTP server on 127.0.0.1, on a free port."""

    def __init__(self, resources: Mapping[str, Resource | str]) -> None:
        self.resources = {
            path: resource if isinstance(resource, Resource) else Resource(resource)
            for path, resource in resources.items()
        }
        self.requested: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requested.append(self.path)
                resource = site.resources.get(self.path)
                if resource is None:
                    self.send_error(404)
                    return
                body = resource.body.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", resource.content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in resource.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="static-site", daemon=True)

    def url(self, path: str = "/") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def __enter__(self) -> StaticSite:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
