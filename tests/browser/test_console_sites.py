"""In a real browser: a treatment center signs in and sees only its own cases and site, with no QA link
and no action form; the Sites page passes the accessibility check."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.support.browser import assert_accessible
from tests.support.console import CENTER, ConsoleSite, add_cases, put_site

BOSTON_COI, DENVER_COI = "CHW4321260000022", "CHW4321260000030"


async def test_a_treatment_center_sees_only_its_cases_and_site_read_only(
    page: Page, console_site: ConsoleSite
) -> None:
    services = console_site.services
    put_site(services.client("scheduling"), "TC-BOSTON")
    put_site(services.client("scheduling"), "TC-DENVER", timezone="America/Denver")
    add_cases(
        services.engines["scheduling"],
        (("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI)),
        offered=(BOSTON_COI, DENVER_COI),
    )
    await page.goto(f"{console_site.url}/sign-in")
    await page.get_by_label("Access token").fill(CENTER)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".site")).to_have_text("TC-BOSTON")
    await expect(page.get_by_role("link", name=BOSTON_COI)).to_be_visible()
    await expect(page.get_by_role("link", name=DENVER_COI)).to_have_count(0)
    await expect(page.get_by_role("link", name="QA")).to_have_count(0)
    await page.get_by_role("link", name="Sites").click()
    await expect(page.locator("section.site h2")).to_have_text(["TC-BOSTON"])
    await expect(page.locator("form[method=post]:not([action='/sign-out'])")).to_have_count(0)
    await assert_accessible(page)
    await page.goto(f"{console_site.url}/cases/{DENVER_COI}")
    await expect(page.locator(".problem")).to_contain_text("scheduling answered 404: Not Found.")
