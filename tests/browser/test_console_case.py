"""The case page in a real browser: a coordinator signs in, opens a case whose order the services accepted,
sees each shipment's temperature chart (an SVG image with its title), offers plans and books one with the
page's forms, and sees the tentative appointment; the page passes the accessibility check. With
CONSOLE_SCREENSHOTS=1 the page is saved as docs/images/console-case.png (the README's screenshot)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.async_api import Page, expect

from tests.support.browser import assert_accessible
from tests.support.console_relay import COORDINATOR, COURIER, ConsoleSite, an_order, scan

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "console-case.png"


async def journey_to_pick_up(site: ConsoleSite, order_id: str, coi: str) -> None:
    orders, tracking = site.services["order_intake"], site.services["coi_tracking"]
    now = datetime.now(UTC)
    async with httpx.AsyncClient(headers=COORDINATOR) as http:
        for path, body in (
            ("collections", {"collected_at": (now - timedelta(hours=3)).isoformat()}),
            ("status", {"status": "in_manufacturing"}),
            (
                "manufacturing-release",
                {"lot_number": "LOT-BROWSER-1", "released_at": datetime.now(UTC).isoformat()},
            ),
        ):
            answer = await http.post(f"{orders}/orders/{order_id}/{path}", json=body)
            assert answer.is_success, answer.text
            site.stack.relay()
        shipments = (await http.get(f"{tracking}/shipments", params={"coi": coi})).json()
    [leg] = [s for s in shipments if s["leg"] == "return"]
    readings = [-182.0, -181.4, -180.8, -140.5, -179.9, -181.0]
    start = datetime.now(UTC) - timedelta(minutes=5 * len(readings))
    async with httpx.AsyncClient(headers=COURIER) as http:
        picked = await http.post(
            f"{tracking}/shipments/{leg['id']}/scans",
            json=scan("pick_up", coi, "AGC Biologics, Milan", -182.0),
        )
        assert picked.is_success, picked.text
        logged = await http.post(
            f"{tracking}/shipments/{leg['id']}/readings",
            json={
                "logger_id": "LOG-77",
                "readings": [
                    {"at": (start + timedelta(minutes=5 * i)).isoformat(), "celsius": c}
                    for i, c in enumerate(readings)
                ],
            },
        )
        assert logged.is_success, logged.text
    site.stack.relay()


async def test_a_coordinator_books_a_plan_from_the_case_page(
    page: Page, console_relay_site: ConsoleSite
) -> None:
    async with httpx.AsyncClient() as http:
        placed = await http.post(
            f"{console_relay_site.services['order_intake']}/orders", json=an_order(), headers=COORDINATOR
        )
    assert placed.status_code == 201, placed.text
    coi = placed.json()["coi"]
    console_relay_site.stack.relay()  # scheduling opens the case, COI tracking plans the return leg

    await page.goto(f"{console_relay_site.url}/sign-in")
    await page.get_by_label("Access token").fill("dev-coordinator-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("h1")).to_have_text("Worklist")
    await page.goto(f"{console_relay_site.url}/cases/{coi}")
    await expect(page.locator("h1")).to_have_text(f"Case {coi}")

    chart = page.locator('svg[role="img"]')
    await expect(chart).to_have_count(1)  # the return leg's, before any collection
    await expect(chart.locator("title").first).to_have_text(
        "Temperatures of the return shipment to TC-BOSTON"
    )
    await expect(chart.locator("desc")).to_have_text("No temperature readings yet; limit \u2212150 °C.")

    await page.get_by_role("button", name="Offer plans").click()
    await expect(page.get_by_role("status")).to_have_text("Done: Plans offered.")
    book = page.get_by_role("button", name="Book the plan collecting on").first
    await book.click()
    await expect(page.get_by_role("status")).to_have_text(
        "Done: Plan booked: every leg is held and the infusion appointment is tentative."
    )
    await expect(page.locator("dd.appointment-state")).to_have_text("tentative")
    await expect(page.locator('tr.plan[data-state="booked"]')).to_have_count(1)
    await expect(page.locator("tr.delivery")).to_have_count(0)  # no webhook registered for the site here

    await assert_accessible(page)

    # The journey on, through the services' APIs: collected, made, released, picked up, a warm reading.
    await journey_to_pick_up(console_relay_site, placed.json()["id"], coi)
    await page.reload()
    charts = page.locator('svg[role="img"]')
    await expect(charts).to_have_count(2)  # the fresh leg's too, once the cells were collected
    await expect(page.locator("text.excursion-label")).to_have_text(["\u2212140.5 °C above limit"])
    await expect(page.locator("span.shipment-status").first).to_have_text("quarantined")
    await assert_accessible(page)
    if os.environ.get("CONSOLE_SCREENSHOTS") == "1":
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
