"""The case page against the three real service apps in process (no broker: `Relay` carries each outbox to
the consumers' handlers): a case driven from its order through plan, booking, collection, manufacturing,
release and the courier's scans shows every section with the services' data; each action is a CSRF form
the console posts on and answers 303; a refusal shows the service's words and correlation id; a treatment
center sees no form, and another site's case is the service's 404 in words."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.common.unit_of_work import session_factory
from services.console import app as console_app
from services.console import case_page
from services.console.sessions import CSRF_FIELD
from services.console.settings import ConsoleSettings
from services.scheduling import domain as scheduling_domain
from services.scheduling.models import Case, FollowUpVisit
from tests.support.console_relay import (
    COORDINATOR,
    COURIER,
    COURIER_2,
    ServiceStack,
    an_order,
    call,
    scan,
    service_stack,
)

CONSOLE_COORDINATOR, CONSOLE_CENTER = "dev-coordinator-token", "dev-center-token"
URLS = {
    "order_intake": "http://order-intake.test",
    "coi_tracking": "http://coi-tracking.test",
    "scheduling": "http://scheduling.test",
}
DENVER_COI = "CHW43212600000M*"
BOSTON = ZoneInfo("America/New_York")


@dataclass
class World:
    stack: ServiceStack
    api: dict[str, TestClient]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with service_stack(tmp_path_factory.mktemp("console-case")) as stack:
        api = {name: TestClient(app) for name, app in stack.apps.items()}  # never started: no lifespan
        call(
            api["scheduling"],
            "POST",
            "/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "treatment_center_id": "TC-BOSTON"},
            headers=COORDINATOR,
        )
        with session_factory(stack.engines["scheduling"])() as session:
            session.add(
                Case(
                    coi=DENVER_COI,
                    order_id=uuid.uuid4(),
                    patient_ref="PSN-DENVER",
                    therapy_code="WASKYRA",
                    treatment_center_id="TC-DENVER",
                    conditioning_days=4,
                )
            )
            session.commit()
        yield World(stack, api)


@pytest.fixture
def console(world: World) -> Iterator[TestClient]:
    mounts = {URLS[name]: httpx.ASGITransport(app=app) for name, app in world.stack.apps.items()}
    settings = ConsoleSettings(
        console_session_key="test-console-session-key-of-32-chars-or-more",
        console_cookie_secure=False,
        order_intake_url=URLS["order_intake"],
        coi_tracking_url=URLS["coi_tracking"],
        scheduling_url=URLS["scheduling"],
        log_level="WARNING",
    )
    with TestClient(console_app.create_app(settings, mounts=mounts), follow_redirects=False) as client:
        yield client


def sign_in(client: TestClient, token: str) -> None:
    form = client.get("/sign-in").text
    answer = client.post("/sign-in", data={CSRF_FIELD: csrf(form), "token": token})
    assert answer.status_code == 303, answer.text


def csrf(page: str) -> str:
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def act(console: TestClient, coi: str, action: str, **fields: str) -> str:
    """Post one of the page's forms (with the page's CSRF token); the 303 back; the page it goes to."""
    page = console.get(f"/cases/{coi}").text
    answer = console.post(f"/cases/{coi}/{action}", data={CSRF_FIELD: csrf(page), **fields})
    assert (answer.status_code, answer.headers["location"]) == (303, f"/cases/{coi}"), answer.text
    back: str = console.get(f"/cases/{coi}").text
    return back


def placed(world: World) -> tuple[str, str]:
    order = call(world.api["order_intake"], "POST", "/orders", json=an_order(), headers=COORDINATOR)
    assert order["status"] == "accepted"
    world.stack.relay()
    return order["coi"], order["id"]


def released(
    world: World, console: TestClient, coi: str, order_id: str, lot: str, *, plan: bool = True
) -> str:
    """Offer and book a plan (unless not `plan`), collect, start manufacturing and release the lot, all from
    the console."""
    booked = ""
    if plan:
        booked = planned(world, console, coi)
    collected_at = (datetime.now(UTC) - timedelta(hours=2)).astimezone(BOSTON).strftime("%Y-%m-%dT%H:%M")
    collected = act(console, coi, "collections", order_id=order_id, collected_at=collected_at)
    shown = datetime.fromisoformat(collected_at).strftime("%Y-%m-%d %H:%M")
    assert re.search(rf'<td class="din">[^<]+</td><td>{shown} E[SD]T \(America/New_York\)</td>', collected), (
        "the site's time"
    )
    world.stack.relay()
    act(console, coi, "manufacturing-start", order_id=order_id)
    world.stack.relay()
    released_at = datetime.now(UTC).isoformat()  # after manufacturing started, to the second
    act(console, coi, "manufacturing-release", order_id=order_id, lot_number=lot, released_at=released_at)
    world.stack.relay()
    return booked


def planned(world: World, console: TestClient, coi: str) -> str:
    assert "Done:</strong> Plans offered." in act(console, coi, "plans")
    plan = re.search(
        rf'action="/cases/{re.escape(coi)}/plans/([0-9a-f-]+)/book"', console.get(f"/cases/{coi}").text
    )
    assert plan is not None
    booked = act(console, coi, f"plans/{plan.group(1)}/book")
    world.stack.relay()
    return booked


def the_return_leg(world: World, coi: str) -> dict[str, Any]:
    shipments = call(world.api["coi_tracking"], "GET", "/shipments", params={"coi": coi}, headers=COORDINATOR)
    [leg] = [s for s in shipments if s["leg"] == "return"]
    return dict(leg)


def picked_up(world: World, coi: str, readings: list[float]) -> dict[str, Any]:
    leg = the_return_leg(world, coi)
    tracking = world.api["coi_tracking"]
    call(
        tracking,
        "POST",
        f"/shipments/{leg['id']}/scans",
        json=scan("pick_up", coi, "AGC Biologics, Milan", -182.0),
        headers=COURIER,
    )
    start = datetime.now(UTC) - timedelta(minutes=5 * len(readings))
    body = {
        "logger_id": "LOG-77",
        "readings": [
            {"at": (start + timedelta(minutes=5 * i)).isoformat(), "celsius": c}
            for i, c in enumerate(readings)
        ],
    }
    call(tracking, "POST", f"/shipments/{leg['id']}/readings", json=body, headers=COURIER)
    world.stack.relay()
    return leg


def section(page: str, heading_id: str) -> str:
    start = page.index(f'<h2 id="{heading_id}">')
    after = page.find("<h2 ", start + 1)
    return page[start : after if after != -1 else len(page)]


# ---------------------------------------------------------------- the whole case


def test_a_case_driven_through_the_services_shows_every_section(world: World, console: TestClient) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    booked = released(world, console, coi, order_id, "LOT-CASE-1")
    assert (
        "Done:</strong> Plan booked: every leg is held and the infusion appointment is tentative." in booked
    )
    leg = picked_up(world, coi, [-182.0, -181.5, -180.9, -181.2])
    tracking = world.api["coi_tracking"]
    call(
        tracking,
        "POST",
        f"/shipments/{leg['id']}/scans",
        json=scan("hand_off", coi, "JFK cargo", -180.0, handed_to="courier-cy"),
        headers=COURIER,
    )
    call(
        tracking,
        "POST",
        f"/shipments/{leg['id']}/scans",
        json=scan("delivery", coi, "Boston QTC cell lab", -179.0),
        headers=COURIER_2,
    )
    world.stack.relay()
    with session_factory(world.stack.engines["scheduling"])() as session:
        session.add(
            FollowUpVisit(
                coi=coi,
                treatment_center_id="TC-BOSTON",
                number=1,
                due_on=date(2027, 1, 7),
                window_start_on=date(2027, 1, 1),
                window_end_on=date(2027, 1, 14),
            )
        )
        session.commit()

    page = console.get(f"/cases/{coi}")
    assert page.status_code == 200, page.text
    text = page.text
    order = section(text, "order")
    assert '<span class="order-status">product_delivered</span>' in order
    assert '<dd class="checks">All passed</dd>' in order
    assert "LOT-CASE-1" in order
    steps = re.findall(r"<tr><td>[^<]+</td><td>[^<]+</td><td>([a-z_]+)</td><td>([^<]+)</td></tr>", order)
    assert [to for to, _ in steps] == [
        "submitted",
        "accepted",
        "cells_collected",
        "in_manufacturing",
        "product_released",
        "product_shipped",
        "product_delivered",
    ]
    [din] = re.findall(r'<td class="din">([^<]+)</td>', order)
    assert re.fullmatch(r"B4567\d{8} \[[0-9A-Z*]\]", din), din  # under Boston's facility number
    plans = section(text, "plans")
    assert plans.count('<tr class="plan" data-state="booked">') == 1
    assert "collected " in plans and "released " in plans and "delivered " in plans
    shipments = section(text, "shipments")
    assert 'Return shipment to TC-BOSTON: <span class="shipment-status">delivered</span>' in shipments
    assert (
        shipments.count('<svg xmlns="http://www.w3.org/2000/svg" class="temperature-chart"') == 2
    )  # both legs
    assert (
        f'<title id="chart-{leg["id"]}-title">Temperatures of the return shipment to TC-BOSTON</title>'
        in shipments
    )
    assert "No excursions." in shipments and "limit \u2212150 °C</text>" in shipments
    assert "Time (America/New_York" in shipments
    assert [m for m in re.findall(r'<tr class="scan"><td>[^<]*</td><td>([a-z_]+)</td>', shipments)][-3:] == [
        "pick_up",
        "hand_off",
        "delivery",
    ]
    assert "<strong>Custody ledger verified:</strong>" in shipments
    appointment = section(text, "appointment")
    assert '<dd class="appointment-state">confirmed</dd>' in appointment
    assert "(America/New_York)" in appointment
    kinds = re.findall(r'<tr class="delivery"><td>[^<]*</td><td>([a-z_.]+)</td>', appointment)
    assert kinds == ["slot.proposed", "slot.confirmed"]
    visits = section(text, "follow-up")
    assert (
        "<td>1</td><td>2027-01-07 (America/New_York)</td><td>2027-01-01 to 2027-01-14</td><td>not yet</td>"
        in visits
    )


def test_an_excursion_is_marked_on_the_chart_and_the_shipment_quarantined(
    world: World, console: TestClient
) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    released(world, console, coi, order_id, "LOT-CASE-2")
    leg = picked_up(world, coi, [-182.0, -140.5, -181.0])
    shipments = section(console.get(f"/cases/{coi}").text, "shipments")
    chart = shipments[shipments.index(f'id="chart-{leg["id"]}"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count('class="excursion"') == 1
    assert "\u2212140.5 °C above limit</text>" in chart
    assert "1 excursion: the first \u2212140.5 °C at " in chart
    assert '<span class="shipment-status">quarantined</span>' in shipments
    assert '<dd class="quarantine">' in shipments


def test_a_broken_ledger_is_shown_with_its_first_broken_entry(world: World, console: TestClient) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    released(world, console, coi, order_id, "LOT-CASE-4", plan=False)
    leg = picked_up(world, coi, [-182.0])
    with world.stack.engines["coi_tracking"].begin() as connection:  # someone edits the first entry
        connection.execute(
            text("UPDATE custody_ledger SET location = 'Elsewhere' WHERE shipment_id = :id AND sequence = 1"),
            {"id": uuid.UUID(leg["id"]).hex},
        )
    shipments = section(console.get(f"/cases/{coi}").text, "shipments")
    assert "<strong>Custody ledger BROKEN</strong> at entry 1:" in shipments
    assert '<tr class="broken"><td>1 (broken)</td>' in shipments


def test_the_readings_are_followed_page_by_page_up_to_the_bound(world: World, console: TestClient) -> None:
    coi, order_id = placed(world)
    sign_in(console, CONSOLE_COORDINATOR)
    released(world, console, coi, order_id, "LOT-CASE-5", plan=False)
    leg = picked_up(world, coi, [-182.0, -181.0, -180.0, -179.0])
    client = console.app.state.console.client  # type: ignore[attr-defined]
    path, token = f"/shipments/{leg['id']}/readings", CONSOLE_COORDINATOR

    async def read(max_pages: int) -> tuple[list[Any], bool]:
        found: tuple[list[Any], bool] = await client.get_pages(
            "coi_tracking", path, token=token, correlation_id="t", params={"limit": "2"}, max_pages=max_pages
        )
        return found

    every, more = console.portal.call(read, 10)  # type: ignore[union-attr]
    assert ([r["celsius"] for r in every], more) == (
        [-182.0, -181.0, -180.0, -179.0, -182.0],
        False,
    )  # the logger's, then the scan's
    first, more = console.portal.call(read, 2)  # type: ignore[union-attr]
    assert ([r["celsius"] for r in first], more) == ([-182.0, -181.0, -180.0, -179.0], True)


# ---------------------------------------------------------------- actions and refusals


def test_a_refused_action_shows_the_services_words_and_correlation_id(
    world: World, console: TestClient
) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    page = console.get(f"/cases/{coi}").text
    answer = console.post(
        f"/cases/{coi}/manufacturing-release",
        data={
            CSRF_FIELD: csrf(page),
            "order_id": order_id,
            "lot_number": "LOT-X",
            "released_at": "2026-12-01T08:00",
        },
        headers={"X-Correlation-ID": "case-test-release"},
    )
    assert (answer.status_code, answer.headers["location"]) == (303, f"/cases/{coi}")
    shown = console.get(f"/cases/{coi}").text
    assert (
        "order intake answered 409: The request conflicts with the current state.</strong>\n  a product is "
        "released for shipment only while its order is in_manufacturing; this order is accepted</p>"
    ) in shown
    assert '<code class="correlation-id">case-test-release</code>' in shown
    assert "Done:" not in shown
    assert "order intake answered 409" not in console.get(f"/cases/{coi}").text  # shown once


def test_the_order_is_cancelled_with_a_reason_from_the_closed_list(world: World, console: TestClient) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    page = act(console, coi, "cancel", order_id=order_id, reason_code="patient_withdrew", note="moved away")
    assert "Done:</strong> Order cancelled." in page
    assert '<span class="order-status">cancelled</span>' in page
    assert "<code>patient_withdrew</code> (moved away)" in page
    refused = act(console, coi, "cancel", order_id=order_id, reason_code="not_a_reason")
    assert "order intake answered 422" in refused and "/reason_code" in refused


def test_the_appointment_is_rescheduled_to_an_offered_option(world: World, console: TestClient) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    released(world, console, coi, order_id, "LOT-CASE-3", plan=False)
    picked_up(world, coi, [-182.0])  # dispatched: scheduling offers the infusion options
    offered = call(world.api["scheduling"], "GET", f"/cases/{coi}", headers=COORDINATOR)["options"]
    booking = {"option_id": offered[0]["option_id"]}
    call(world.api["scheduling"], "POST", f"/cases/{coi}/bookings", json=booking, headers=COORDINATOR)
    case = call(world.api["scheduling"], "GET", f"/cases/{coi}", headers=COORDINATOR)
    page = console.get(f"/cases/{coi}").text
    options = re.findall(
        r'<option value="([0-9a-f-]{36})">conditioning ([0-9-]+), infusion ([0-9-]+)</option>', page
    )
    assert options, page
    target, _, infusion = options[-1]
    moved = act(
        console,
        coi,
        "reschedule",
        appointment_id=case["appointment"]["id"],
        option_id=target,
        reason_code="site_request",
        note="the site asked",
    )
    assert "Done:</strong> Appointment moved." in moved
    assert f'<dd class="infusion-on">{infusion} (America/New_York)</dd>' in moved
    assert "<dt>Coordinator's note</dt><dd>the site asked</dd>" in moved
    refused = act(
        console,
        coi,
        "reschedule",
        appointment_id=case["appointment"]["id"],
        option_id=target,
        reason_code="quarantine",
    )
    assert "scheduling answered 422" in refused and "/reason_code" in refused


def test_a_form_that_is_not_whole_is_not_sent(world: World, console: TestClient) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    page = act(console, coi, "collections", order_id=order_id, collected_at="yesterday")
    assert "Nothing was sent: Give when the cells were collected (date and time)." in page
    page = act(console, coi, "cancel", order_id="../orders", reason_code="other")
    assert "Nothing was sent: The case has no order to act on." in page
    assert '<span class="order-status">accepted</span>' in page


def test_every_action_needs_the_csrf_token(world: World, console: TestClient) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, order_id = placed(world)
    for action in (
        "plans",
        "reschedule",
        "cancel",
        "collections",
        "manufacturing-start",
        "manufacturing-release",
        f"plans/{uuid.uuid4()}/book",
    ):
        refused = console.post(f"/cases/{coi}/{action}", data={"order_id": order_id, "reason_code": "other"})
        assert refused.status_code == 403, action
    assert '<span class="order-status">accepted</span>' in console.get(f"/cases/{coi}").text


# ---------------------------------------------------------------- a treatment center


def test_a_treatment_center_sees_its_case_read_only_and_not_another_sites(
    world: World, console: TestClient
) -> None:
    sign_in(console, CONSOLE_COORDINATOR)
    coi, _ = placed(world)
    act(console, coi, "plans")
    console.cookies.clear()
    sign_in(console, CONSOLE_CENTER)
    page = console.get(f"/cases/{coi}")
    assert page.status_code == 200
    assert "You see this case read-only." in page.text
    assert re.findall(r"<form[^>]*>", page.text) == ['<form method="post" action="/sign-out" class="inline">']
    assert '<tr class="plan" data-state="offered">' in page.text  # the plans, without their Book buttons
    other = console.get(f"/cases/{DENVER_COI}", headers={"X-Correlation-ID": "case-test-denver"})
    assert other.status_code == 404
    assert "scheduling answered 404: Not Found." in other.text
    assert '<code class="correlation-id">case-test-denver</code>' in other.text


def test_the_reschedule_reasons_are_schedulings_coordinator_reasons() -> None:
    assert set(case_page.RESCHEDULE_REASONS) == {code.value for code in scheduling_domain.COORDINATOR_REASONS}
