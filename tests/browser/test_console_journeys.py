"""The console in chromium against the REAL stack (`console_stack`: a broker, the three services as
processes, the console as a process): a coordinator signs in by keyboard and works the worklist, a
treatment center sees only its own site's cases, a form without its CSRF token is refused, sign-out ends
the session. Every page visited passes the accessibility check.

`CONSOLE_SCREENSHOTS=1` makes the worklist test save the README's screenshot, docs/images/console-worklist.png.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio
from playwright.async_api import Page, expect

from tests.support.browser import assert_accessible
from tests.support.console_stack import BOSTON, ConsoleStack, new_site, to_book_case
from tests.support.stack import COORDINATOR

ROOT = Path(__file__).resolve().parents[2]
WORKLIST_SCREENSHOT = ROOT / "docs" / "images" / "console-worklist.png"
COORDINATOR_TOKEN = "dev-coordinator-token"
CENTER_TOKEN = "dev-center-token"


@dataclass(frozen=True)
class Cases:
    boston: str
    """A case to book at TC-BOSTON (the development treatment center's site)."""
    elsewhere: str
    """A case to book at another site."""
    elsewhere_site: str


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cases(console_stack: ConsoleStack) -> AsyncIterator[Cases]:
    """Two cases to book, driven through the services' APIs: one at TC-BOSTON, one at a site of its own."""
    async with httpx.AsyncClient(timeout=30.0) as http:
        site = await new_site(http, console_stack.running)
        boston = await to_book_case(http, console_stack.running, BOSTON)
        elsewhere = await to_book_case(http, console_stack.running, site)
    yield Cases(boston, elsewhere, site.id)


async def sign_in(page: Page, console: ConsoleStack, token: str) -> None:
    """Sign in by keyboard alone: Tab past the skip link to the labelled token field, type, Enter."""
    await page.goto(f"{console.url}/sign-in")
    await assert_accessible(page)
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Access token")).to_be_focused()
    await page.keyboard.type(token)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{console.url}/")


async def test_a_coordinator_signs_in_by_keyboard_filters_the_worklist_and_opens_the_case(
    page: Page, console_stack: ConsoleStack, cases: Cases
) -> None:
    await sign_in(page, console_stack, COORDINATOR_TOKEN)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Worklist")
    await expect(page.locator("#who .subject")).to_have_text("Ana Coordinator")
    await expect(page.locator("#who .role")).to_have_text("coordinator")
    boston_row = page.locator("tr.work-item", has=page.get_by_role("link", name=cases.boston, exact=True))
    await expect(boston_row.locator("td")).to_have_text(
        [
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d E[SD]T \(America/New_York\)$"),
            "To book",
            cases.boston,
            "TC-BOSTON",
            "options offered: book one",
        ]
    )
    await expect(
        page.locator("tr.work-item", has=page.get_by_role("link", name=cases.elsewhere, exact=True))
    ).to_have_count(1)
    await assert_accessible(page)
    if os.environ.get("CONSOLE_SCREENSHOTS") == "1":
        WORKLIST_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(WORKLIST_SCREENSHOT), full_page=True)

    # Another kind: the case to book is not on it.
    await page.get_by_label("Kind").select_option("on_hold")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url(f"{console_stack.url}/worklist?kind=on_hold&site=")
    await expect(boston_row).to_have_count(0)
    await assert_accessible(page)

    # To book: every row shown is one, the Boston case among them.
    await page.get_by_label("Kind").select_option("to_book")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url(f"{console_stack.url}/worklist?kind=to_book&site=")
    await expect(page.get_by_label("Kind")).to_have_value("to_book")
    kinds = await page.locator("tr.work-item").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert len(kinds) >= 2 and set(kinds) == {"to_book"}, kinds
    await expect(boston_row).to_have_count(1)
    await assert_accessible(page)

    await boston_row.get_by_role("link", name=cases.boston, exact=True).click()
    await page.wait_for_url(f"{console_stack.url}/cases/{cases.boston}")
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Case {cases.boston}")
    await expect(page.locator("dl.facts dd").first).to_have_text("TC-BOSTON (times in America/New_York)")
    await assert_accessible(page)


async def test_a_treatment_center_sees_only_its_own_sites_cases(
    page: Page, console_stack: ConsoleStack, cases: Cases
) -> None:
    await sign_in(page, console_stack, CENTER_TOKEN)
    await expect(page.locator("#who .role")).to_have_text("treatment_center")
    await expect(page.locator("#who .site")).to_have_text("TC-BOSTON")
    await expect(page.get_by_role("link", name=cases.boston, exact=True)).to_have_count(1)
    sites = await page.locator("tr.work-item td:nth-child(4)").all_inner_texts()
    assert sites and set(sites) == {"TC-BOSTON"}, sites
    assert cases.elsewhere not in await page.content()
    assert cases.elsewhere_site not in await page.content()
    # Its site is fixed by its token: the page offers no site filter, and one in the address changes nothing.
    await expect(page.get_by_label("Site")).to_have_count(0)
    await assert_accessible(page)
    await page.goto(f"{console_stack.url}/worklist?site={cases.elsewhere_site}")
    assert cases.elsewhere not in await page.content()
    await expect(page.get_by_role("link", name=cases.boston, exact=True)).to_have_count(1)
    await assert_accessible(page)

    # The other site's case page is scheduling's to refuse: shown in words, with the correlation id.
    response = await page.goto(f"{console_stack.url}/cases/{cases.elsewhere}")
    assert response is not None and response.status == 404
    await expect(page.locator("main")).to_contain_text("Correlation id")
    await assert_accessible(page)


async def test_a_form_posted_without_its_csrf_token_is_refused_and_nothing_is_done(
    page: Page, console_stack: ConsoleStack
) -> None:
    await sign_in(page, console_stack, COORDINATOR_TOKEN)
    # The page's own sign-out form, its hidden token taken out, submitted from the keyboard.
    await page.locator("form[action='/sign-out'] input[name='csrf_token']").evaluate(
        "input => input.remove()"
    )
    await page.get_by_role("button", name="Sign out").focus()
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{console_stack.url}/sign-out")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Form refused")
    await expect(page.get_by_role("alert")).to_contain_text("Nothing was done.")
    await assert_accessible(page)

    # A fetch without the token, with another session's: refused too.
    posted = await page.request.post(f"{console_stack.url}/sign-out", form={"csrf_token": "not-the-token"})
    assert posted.status == 403 and "Form refused" in await posted.text()

    # Nothing was done: the session still lives.
    await page.goto(f"{console_stack.url}/worklist")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Worklist")
    await expect(page.locator("#who .subject")).to_have_text("Ana Coordinator")


async def test_a_sign_in_posted_without_its_csrf_token_opens_no_session(
    page: Page, console_stack: ConsoleStack
) -> None:
    await page.goto(f"{console_stack.url}/sign-in")
    posted = await page.request.post(f"{console_stack.url}/sign-in", form={"token": COORDINATOR_TOKEN})
    assert posted.status == 403 and "Form refused" in await posted.text()
    cookies = {cookie["name"] for cookie in await page.context.cookies()}
    assert "cgt_console_session" not in cookies
    await page.goto(f"{console_stack.url}/worklist")
    await page.wait_for_url(f"{console_stack.url}/sign-in")
    # The services saw a caller all along (the token is good): the refusal was the console's, not theirs.
    async with httpx.AsyncClient(timeout=30.0) as http:
        whoami = await http.get(f"{console_stack.running.scheduling}/whoami", headers=COORDINATOR)
    assert whoami.json()["subject"] == "coord-ana"


async def test_sign_out_ends_the_session_back_and_reload_land_on_sign_in(
    page: Page, console_stack: ConsoleStack
) -> None:
    await sign_in(page, console_stack, COORDINATOR_TOKEN)
    shown = await page.goto(f"{console_stack.url}/worklist")
    # No copy is kept for Back to show (the route that keeps tests on loopback also turns chromium's cache
    # off, so the header is what proves it here).
    assert shown is not None and shown.headers["cache-control"] == "no-store"
    await expect(page.get_by_role("heading", level=1)).to_have_text("Worklist")
    old_cookie = [c for c in await page.context.cookies() if c["name"] == "cgt_console_session"]
    assert len(old_cookie) == 1

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{console_stack.url}/sign-in")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await assert_accessible(page)

    await page.go_back()
    await page.wait_for_url(f"{console_stack.url}/sign-in")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await page.reload()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    assert page.url == f"{console_stack.url}/sign-in"

    # The ended session's cookie, replayed, is worth nothing.
    await page.context.add_cookies(old_cookie)  # type: ignore[arg-type]
    await page.goto(f"{console_stack.url}/worklist")
    await page.wait_for_url(f"{console_stack.url}/sign-in")
