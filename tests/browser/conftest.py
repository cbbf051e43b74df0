"""Browser tests: Playwright driving Debian's chromium (headless, one per session), a fresh page per test,
a screenshot in test-artifacts/screenshots/ when a test fails, and the axe-core check `assert_accessible`.
The machinery is tests/support/browser.py's (importable, so a sub-run can load it as a plugin); the names
imported here are what pytest registers for this folder."""

from __future__ import annotations

from tests.support.browser import browser, loopback_guard, page, playwright, pytest_runtest_makereport

__all__ = ["browser", "loopback_guard", "page", "playwright", "pytest_runtest_makereport"]
