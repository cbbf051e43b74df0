"""In a real browser: QA signs in, releases a quarantined shipment with the signing PIN and sees the
signature's manifestation; the QA page passes the accessibility check."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.support.browser import assert_accessible
from tests.support.console import QA, QA_PIN, ConsoleSite, enrol_pin, put_site, quarantined_shipment


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/sign-in")
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".role")).to_be_visible()


async def test_qa_releases_a_quarantined_shipment_with_the_pin_and_sees_the_manifestation(
    page: Page, console_site: ConsoleSite
) -> None:
    services = console_site.services
    put_site(services.client("scheduling"), "TC-BOSTON")
    enrol_pin(services.client("coi_tracking"), QA)
    shipment = quarantined_shipment(services, services.client("coi_tracking"))
    await sign_in(page, console_site.url, QA)
    await page.get_by_role("link", name="QA").click()
    section = page.locator(f"#shipment-{shipment['id']}")
    await expect(section.locator(".reason")).to_contain_text("-140.0 °C")
    await expect(section.locator(".excursions")).to_have_text("1")
    await assert_accessible(page)
    await section.get_by_label("Decision").select_option("release")
    await section.get_by_label("Reason code").select_option("product_within_limits")
    await section.get_by_label("Note (optional)").fill("probe reading fine")
    await section.get_by_label("Meaning of this signature").select_option("approval")
    await section.get_by_label("Your signing PIN").fill(QA_PIN)
    await section.get_by_role("button", name="Sign").click()
    signed = page.locator("#signed")
    await expect(signed.locator(".printed-name")).to_have_text("J. Rivera (QA) (qa-jr)")
    await expect(signed.locator(".meaning")).to_have_text("Approval")
    await expect(signed.locator(".signed-at")).to_contain_text("(America/New_York)")
    await expect(page.locator(f"#shipment-{shipment['id']}")).to_have_count(0)
    assert QA_PIN not in await page.content()
    await assert_accessible(page)
