"""Browser tests: Playwright driving Debian's chromium (headless, one per session), a fresh page per test,
a screenshot in test-artifacts/screenshots/ when a test fails, and the axe-core check `assert_accessible`.
The machinery is tests/support/browser.py's (importable, so a sub-run can load it as a plugin); the names
imported here are what pytest registers for this folder.

`console_stack`: the console in front of the real stack (a broker, the three services as processes on
SQLite, the console as a process; tests/support/console_stack.py), one for the whole session, started only
when a test asks for it.

`console_site`: lighter, no broker — the three real service apps (lifespan off) and the console under
uvicorn in threads on loopback ports, with the services' apps and databases in process so a test makes its
facts through their APIs (tests/support/console.py); the QA and Sites page tests use it.

`console_relay_site`: the same with each service's outbox carried to the others' handlers by a relay in
the test (`.stack.relay()`), so a case moves between services without a broker
(tests/support/console_relay.py); the case page's test uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.browser import browser, loopback_guard, page, playwright, pytest_runtest_makereport
from tests.support.console import ConsoleSite, running_console
from tests.support.console_relay import ConsoleSite as RelaySite
from tests.support.console_relay import console_site_running
from tests.support.console_stack import ConsoleStack, console_on_stack

__all__ = [
    "browser",
    "console_relay_site",
    "console_site",
    "console_stack",
    "loopback_guard",
    "page",
    "playwright",
    "pytest_runtest_makereport",
]


@pytest.fixture(scope="session")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    with console_on_stack(tmp_path_factory.mktemp("console-stack")) as running:
        yield running


@pytest.fixture(scope="session")
def console_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    """The console's base URL (`.url`), the services' (`.service_urls`), and the services in process."""
    with running_console(tmp_path_factory.mktemp("console-site")) as site:
        yield site


@pytest.fixture(scope="session")
def console_relay_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelaySite]:
    """The console's base URL (`.url`), the services' (`.services`) and their stack (`.stack.relay()`)."""
    with console_site_running(tmp_path_factory.mktemp("console-relay-site")) as site:
        yield site
