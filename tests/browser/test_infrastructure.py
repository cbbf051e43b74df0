"""The browser-test machinery itself, on small pages served from loopback (no console needed): chromium
loads a page and is driven by keyboard alone; the accessibility check passes a clean page and fails each
serious or critical violation; a failing test leaves its screenshot; traffic off loopback is refused."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, expect

from deploy import fetch_browser_assets
from tests.support.browser import (
    AccessibilityViolations,
    LoopbackOnly,
    Resource,
    StaticSite,
    assert_accessible,
    axe_violations,
    screenshot_path,
)

ROOT = Path(__file__).resolve().parents[2]

BOOKING_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Book a slot</title></head>
<body>
<main>
  <h1>Book a slot</h1>
  <form id="booking">
    <label for="reference">Case reference</label>
    <input id="reference" name="reference" type="text">
    <button type="submit">Confirm booking</button>
  </form>
  <p id="result" role="status" aria-live="polite"></p>
</main>
<script>
  document.getElementById("booking").addEventListener("submit", (event) => {
    event.preventDefault();
    const reference = document.getElementById("reference").value;
    document.getElementById("result").textContent = "Booked " + reference;
  });
</script>
</body>
</html>"""

BROKEN_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Broken</title></head>
<body>
<main>
  <h1>Broken</h1>
  <input id="unlabelled" type="text">
  <img id="no-alt" src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7">
  <p id="faint" style="color: #c8c8c8; background: #ffffff">Hard to read</p>
</main>
</body>
</html>"""

MILD_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>No heading</title></head>
<body><p>Only a paragraph, outside any landmark, and no heading.</p></body>
</html>"""

OFF_LOOPBACK_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Off loopback</title></head>
<body><main><h1>Off loopback</h1><img alt="remote" src="http://192.0.2.1/remote.png"></main></body>
</html>"""

STRICT_CSP = {"Content-Security-Policy": "default-src 'self'"}


@pytest.fixture(scope="module")
def site() -> Iterator[StaticSite]:
    with StaticSite(
        {
            "/booking": BOOKING_PAGE,
            "/broken": BROKEN_PAGE,
            "/mild": MILD_PAGE,
            "/off-loopback": OFF_LOOPBACK_PAGE,
            "/strict": Resource(BOOKING_PAGE, headers=STRICT_CSP),
        }
    ) as served:
        yield served


async def test_chromium_loads_the_page_and_a_keyboard_alone_books(page: Page, site: StaticSite) -> None:
    response = await page.goto(site.url("/booking"))
    assert response is not None and response.status == 200
    assert await page.title() == "Book a slot"
    assert page.url.startswith("http://127.0.0.1:")

    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Case reference")).to_be_focused()
    await page.keyboard.type("COI-0007")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Confirm booking")).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page.get_by_role("status")).to_have_text("Booked COI-0007")
    assert site.requested.count("/booking") == 1


async def test_a_clean_page_passes_the_check_with_no_violation_at_all(page: Page, site: StaticSite) -> None:
    await page.goto(site.url("/booking"))
    assert await assert_accessible(page) == []
    assert await page.evaluate("() => axe.version") == fetch_browser_assets.AXE_VERSION


async def test_each_serious_or_critical_violation_fails_the_check_by_rule_and_element(
    page: Page, site: StaticSite
) -> None:
    await page.goto(site.url("/broken"))
    with pytest.raises(AccessibilityViolations) as raised:
        await assert_accessible(page)

    found = {(v.rule, v.impact, v.targets) for v in raised.value.violations}
    assert found == {
        ("label", "critical", ("#unlabelled",)),
        ("image-alt", "critical", ("#no-alt",)),
        ("color-contrast", "serious", ("#faint",)),
    }
    message = str(raised.value)
    assert message.startswith(f"3 serious or critical accessibility violations on {site.url('/broken')}:")
    assert "label (critical): Form elements must have labels — #unlabelled" in message
    assert "color-contrast (serious): Elements must meet minimum color contrast ratio thresholds" in message


async def test_milder_violations_are_returned_not_failed(page: Page, site: StaticSite) -> None:
    await page.goto(site.url("/mild"))
    mild = await assert_accessible(page)
    assert {(v.rule, v.impact) for v in mild} == {
        ("page-has-heading-one", "moderate"),
        ("landmark-one-main", "moderate"),
        ("region", "moderate"),
    }


async def test_the_check_runs_on_a_page_with_a_strict_content_security_policy(
    page: Page, site: StaticSite
) -> None:
    response = await page.goto(site.url("/strict"))
    assert response is not None and response.headers["content-security-policy"] == "default-src 'self'"
    assert await assert_accessible(page) == []


async def test_without_bypassing_the_policy_axe_could_not_be_injected(page: Page, site: StaticSite) -> None:
    """Why the contexts bypass CSP: in one that does not, the page's policy blocks the injected script."""
    assert page.context.browser is not None
    strict = await page.context.browser.new_context()
    try:
        plain = await strict.new_page()
        await plain.goto(site.url("/strict"))
        with pytest.raises(PlaywrightError) as refused:
            await axe_violations(plain)
        assert refused.value.message.startswith(
            "Page.add_script_tag: Executing inline script violates the following Content Security Policy"
            " directive 'default-src 'self''"
        )
    finally:
        await strict.close()


async def test_a_request_off_loopback_is_aborted_and_recorded(
    page: Page, site: StaticSite, loopback_guard: LoopbackOnly
) -> None:
    await page.goto(site.url("/off-loopback"))
    await page.wait_for_load_state("load")
    assert loopback_guard.refused == ["http://192.0.2.1/remote.png"]
    loopback_guard.refused.clear()  # seen: the page fixture would fail the test for it otherwise


def test_the_screenshot_name_is_the_test_node_id_made_a_file_name() -> None:
    assert screenshot_path(Path("/r"), "tests/browser/test_x.py::test_y[sqlite]") == Path(
        "/r/test-artifacts/screenshots/tests_browser_test_x.py__test_y[sqlite].png"
    )


FAILING_RUN = """
from playwright.async_api import Page


async def test_a_passing_page(page: Page) -> None:
    await page.set_content("<h1>fine</h1>")


async def test_a_failing_page(page: Page) -> None:
    await page.set_content("<h1 style='color: red'>broken</h1>")
    assert await page.inner_text("h1") == "fixed"
"""


def test_a_failing_test_leaves_a_screenshot_of_its_page_and_a_passing_one_none(tmp_path: Path) -> None:
    (tmp_path / "test_run.py").write_text(FAILING_RUN)
    (tmp_path / "pytest.ini").write_text(
        textwrap.dedent("""\
            [pytest]
            asyncio_mode = auto
            asyncio_default_fixture_loop_scope = session
            asyncio_default_test_loop_scope = session
            """)
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.support.browser", "-q"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    shots = sorted((tmp_path / "test-artifacts" / "screenshots").iterdir())
    assert [shot.name for shot in shots] == ["test_run.py__test_a_failing_page.png"]
    png = shots[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 720)  # Playwright's default viewport, the whole page
