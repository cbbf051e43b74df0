"""Browser tests: Playwright driving Debian's chromium (headless, one per session), a fresh page per test,
a screenshot in test-artifacts/screenshots/ when a test fails, and the axe-core check `assert_accessible`.
The machinery is tests/support/browser.py's (importable, so a sub-run can load it as a plugin); the names
imported here are what pytest registers for this folder. `console_site`: the console over the three real
service apps under uvicorn on loopback (tests/support/console.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.browser import browser, loopback_guard, page, playwright, pytest_runtest_makereport
from tests.support.console import ConsoleSite, console_site_running

__all__ = ["browser", "console_site", "loopback_guard", "page", "playwright", "pytest_runtest_makereport"]


@pytest.fixture(scope="session")
def console_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    """The console's base URL (`.url`), the services' (`.services`) and their stack (`.stack.relay()`)."""
    with console_site_running(tmp_path_factory.mktemp("console-site")) as site:
        yield site
