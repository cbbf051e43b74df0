"""In a real browser: a treatment center signs in and sees only its own cases and site, with no QA link
and no action form; the Sites page passes the accessibility check."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from playwright.async_api import Page, expect

from services.common.unit_of_work import session_factory
from services.scheduling.models import Case, OfferedOption
from tests.support.browser import assert_accessible
from tests.support.console import CENTER, ConsoleSite, put_site

BOSTON_COI, DENVER_COI = "CHW4321260000022", "CHW4321260000030"


async def test_a_treatment_center_sees_only_its_cases_and_site_read_only(
    page: Page, console_site: ConsoleSite
) -> None:
    services = console_site.services
    put_site(services.client("scheduling"), "TC-BOSTON")
    put_site(services.client("scheduling"), "TC-DENVER", timezone="America/Denver")
    with session_factory(services.engines["scheduling"])() as session:
        for site, coi in (("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI)):
            session.add(
                Case(
                    coi=coi,
                    order_id=uuid.uuid4(),
                    patient_ref=f"PSN-{site}",
                    therapy_code="WASKYRA",
                    treatment_center_id=site,
                    conditioning_days=4,
                    eta_at=datetime(2026, 12, 3, 14, 0, tzinfo=UTC),
                )
            )
            session.add(
                OfferedOption(
                    coi=coi,
                    conditioning_start_on=date(2026, 12, 4),
                    infusion_on=date(2026, 12, 8),
                    offered_at=datetime(2026, 11, 30, 14, 5, tzinfo=UTC),
                )
            )
        session.commit()
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
