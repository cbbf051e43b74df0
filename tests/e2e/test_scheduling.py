"""Infusion scheduling through its HTTP API on the real broker and database: calendars, options,
concurrent bookings, delays, a quarantine after confirmation, reschedules, dates in the past, webhooks that
fail and recover, FHIR resources, infusion and follow-up."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from cgt_contracts.events import (
    ShipmentDelayed,
    ShipmentDispatched,
    ShipmentDispatchedData,
)
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.slot import Slot as FhirSlot
from sqlmodel import select

from deploy.observe import EventLog, WebhookListener
from services.common.db import make_engine
from services.common.topics import SHIPMENTS
from services.common.unit_of_work import session_factory
from services.order_intake.domain import luhn_check_digit
from services.scheduling.models import Appointment, Case, OfferedOption
from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_matches,
)
from tests.e2e.conftest import COORDINATOR, COURIER, RunningStack
from tests.e2e.journey import (
    advance_to_manufacturing,
    book_first_option,
    order_body,
    record_collection_and_manufacturing,
    release_product,
    scan,
    shipment_for,
)
from tests.support.infra import produce

pytestmark = pytest.mark.e2e


def fresh_npi() -> str:
    prefix = f"{uuid.uuid4().int % 10**9:09d}"
    return prefix + str(luhn_check_digit("80840" + prefix))


class Site:
    """A treatment center known to order intake (qualified, with a prescriber) and to scheduling."""

    def __init__(self, site_id: str, npi: str) -> None:
        self.id, self.npi = site_id, npi


async def new_site(
    http: httpx.AsyncClient,
    stack: RunningStack,
    *,
    infusions_per_day: int = 2,
    beds: int = 10,
    **calendar: Any,
) -> Site:
    site_id, npi = f"TC-{uuid.uuid4().hex[:6].upper()}", fresh_npi()
    o = stack.orders
    assert (
        await http.post(
            f"{o}/treatment-centers",
            json={"id": site_id, "name": "QTC", "timezone": "UTC"},
            headers=COORDINATOR,
        )
    ).status_code == 201
    certification = {"therapy_code": "WASKYRA", "effective_on": "2026-01-01"}
    assert (
        await http.post(
            f"{o}/treatment-centers/{site_id}/certifications", json=certification, headers=COORDINATOR
        )
    ).status_code == 201
    prescriber = {"npi": npi, "name": "Dr. S", "treatment_center_ids": [site_id]}
    assert (await http.post(f"{o}/prescribers", json=prescriber, headers=COORDINATOR)).status_code == 201
    body = {
        "timezone": "UTC",
        "infusions_per_day": infusions_per_day,
        "admissions_capacity": beds,
        "working_weekdays": [1, 2, 3, 4, 5, 6, 7],
        **calendar,
    }
    put = await http.put(f"{stack.scheduling}/sites/{site_id}", json=body, headers=COORDINATOR)
    assert put.status_code == 200, put.text
    return Site(site_id, npi)


async def dispatched_case(
    http: httpx.AsyncClient,
    stack: RunningStack,
    events: EventLog,
    site: Site,
    eta: datetime,
    *,
    manufactured: bool = False,
) -> tuple[str, str]:
    """An accepted order at the site whose return shipment was picked up with the given ETA."""
    order = await http.post(
        f"{stack.orders}/orders",
        json=order_body(treatment_center_id=site.id, prescriber_npi=site.npi),
        headers=COORDINATOR,
    )
    assert order.status_code == 201 and order.json()["status"] == "accepted", order.text
    coi = order.json()["coi"]
    if manufactured:
        await record_collection_and_manufacturing(http, stack, order.json()["id"])
    else:
        await advance_to_manufacturing(http, stack, order.json()["id"])
    await release_product(http, stack, order.json())
    shipment = await shipment_for(http, stack, events, coi)
    picked = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans",
        json=scan("pick_up", [coi], eta_at=eta.isoformat()),
        headers=COURIER,
    )
    assert picked.json()["accepted"], picked.text
    await events.wait_for(lambda e: e.type == "slot.options_offered.v1" and e.subject == coi)
    return coi, shipment["id"]


def midday(days_from_today: int) -> datetime:
    return datetime.combine(
        date.today() + timedelta(days=days_from_today), datetime.min.time(), tzinfo=UTC
    ) + timedelta(hours=12)


async def test_availability_and_options_follow_the_site_calendar(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    blackout = date.today() + timedelta(days=8)
    site = await new_site(http, stack, infusions_per_day=1, blackout_dates=[blackout.isoformat()])
    coi, _ = await dispatched_case(http, stack, events, site, eta=midday(3))
    case = (await http.get(f"{stack.scheduling}/cases/{coi}", headers=COORDINATOR)).json()
    options = case["options"]
    assert len(options) == 3
    for option in options:
        start, infusion = (
            date.fromisoformat(option["conditioning_start_on"]),
            date.fromisoformat(option["infusion_on"]),
        )
        assert start >= date.today() + timedelta(days=5)  # ETA day 3 at noon + 24 h buffer -> from day 5
        assert (infusion - start).days == 4
        assert not start <= blackout <= infusion
    booked = await http.post(
        f"{stack.scheduling}/cases/{coi}/bookings",
        json={"option_id": options[0]["option_id"]},
        headers=COORDINATOR,
    )
    assert booked.status_code == 201
    first_infusion = date.fromisoformat(options[0]["infusion_on"])
    days = (
        await http.get(
            f"{stack.scheduling}/sites/{site.id}/availability",
            params={"from": date.today().isoformat(), "to": (date.today() + timedelta(days=30)).isoformat()},
            headers=COORDINATOR,
        )
    ).json()
    by_day = {d["day"]: d for d in days}
    assert by_day[first_infusion.isoformat()]["infusions_booked"] == 1
    assert by_day[first_infusion.isoformat()]["infusions_capacity"] == 1
    assert by_day[options[0]["conditioning_start_on"]]["admissions_booked"] == 1
    assert (
        by_day[blackout.isoformat()]["open"] is False
        and by_day[blackout.isoformat()]["admissions_capacity"] == 0
    )
    assert len(days) == 31
    too_early = await http.post(
        f"{stack.scheduling}/cases/{coi}/bookings",
        json={"conditioning_start_on": date.today().isoformat()},
        headers=COORDINATOR,
    )
    assert too_early.status_code == 409


async def test_concurrent_bookings_never_overbook_the_last_chair(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack, infusions_per_day=1, beds=50)
    cases = [await dispatched_case(http, stack, events, site, eta=midday(2)) for _ in range(6)]
    first = (await http.get(f"{stack.scheduling}/cases/{cases[0][0]}", headers=COORDINATOR)).json()[
        "options"
    ][0]
    responses = await asyncio.gather(
        *(
            http.post(
                f"{stack.scheduling}/cases/{coi}/bookings",
                json={"conditioning_start_on": first["conditioning_start_on"]},
                headers=COORDINATOR,
            )
            for coi, _ in cases
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409, 409, 409], [r.text for r in responses]
    refused = [r.json()["reasons"] for r in responses if r.status_code == 409]
    assert all(any("no infusion capacity left" in reason for reason in reasons) for reasons in refused)
    day = (
        await http.get(
            f"{stack.scheduling}/sites/{site.id}/availability",
            params={"from": first["infusion_on"], "to": first["infusion_on"]},
            headers=COORDINATOR,
        )
    ).json()[0]
    assert day["infusions_booked"] == 1


async def test_a_delay_moves_the_tentative_slot_and_tells_the_site(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    site = await new_site(http, stack)
    await http.post(
        f"{stack.scheduling}/webhooks",
        json={"url": webhook_listener.url, "treatment_center_id": site.id},
        headers=COORDINATOR,
    )
    coi, shipment = await dispatched_case(http, stack, events, site, eta=midday(3))
    booked = await book_first_option(http, stack, events, coi)
    new_eta = midday(9)
    delay = scan("delay", [coi], location="Frankfurt hub", eta_at=new_eta.isoformat())
    assert (
        await http.post(f"{stack.tracking}/shipments/{shipment}/scans", json=delay, headers=COURIER)
    ).json()["accepted"]
    moved = await events.wait_for(lambda e: e.type == "slot.rescheduled.v2" and e.subject == coi)
    assert str(moved.data.appointment_id) == booked["id"]  # type: ignore[union-attr]
    assert moved.data.conditioning_start_on >= (new_eta + timedelta(hours=24)).date()  # type: ignore[union-attr]
    hook = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "slot.rescheduled" and h.json()["coi"] == coi
    )
    assert hook.json()["conditioning_start_on"] == moved.data.conditioning_start_on.isoformat()  # type: ignore[union-attr]
    assert hook.json()["reason_code"] == "delay" and moved.data.reason_code == "delay"  # type: ignore[union-attr]
    appointment = (
        await http.get(f"{stack.scheduling}/appointments/{booked['id']}", headers=COORDINATOR)
    ).json()
    assert appointment["state"] == "tentative" and appointment["version"] > booked["version"]


def days_pass(stack: RunningStack, coi: str, days: int) -> None:
    """Scheduling's rows of the case as they read `days` later: every date of the case, its options and its
    appointment moved back (a journey cannot wait for conditioning to start, nor for a year to pass)."""
    shift = timedelta(days=days)
    engine = make_engine(stack.stack.database_urls["scheduling"])
    try:
        with session_factory(engine)() as session:
            case = session.get(Case, coi)
            assert case is not None
            for appointment in session.exec(select(Appointment).where(Appointment.coi == coi)):
                appointment.conditioning_start_on -= shift
                appointment.infusion_on -= shift
                session.add(appointment)
            for option in session.exec(select(OfferedOption).where(OfferedOption.coi == coi)):
                option.conditioning_start_on -= shift
                option.infusion_on -= shift
                session.add(option)
            case.eta_at = case.eta_at - shift if case.eta_at else None
            case.product_delivered_at = (
                case.product_delivered_at - shift if case.product_delivered_at else None
            )
            session.add(case)
            session.commit()
    finally:
        engine.dispose()


async def test_a_delay_after_conditioning_started_is_an_alert_not_a_silent_move(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    site = await new_site(http, stack)
    await http.post(
        f"{stack.scheduling}/webhooks",
        json={"url": webhook_listener.url, "treatment_center_id": site.id},
        headers=COORDINATOR,
    )
    coi, shipment = await dispatched_case(http, stack, events, site, eta=midday(2))
    booked = await book_first_option(http, stack, events, coi)
    days_pass(stack, coi, 5)  # conditioning started yesterday; the product is still on its way
    moved_back = (
        await http.get(f"{stack.scheduling}/appointments/{booked['id']}", headers=COORDINATOR)
    ).json()
    assert date.fromisoformat(moved_back["conditioning_start_on"]) < date.today()
    delay = scan("delay", [coi], location="Customs", eta_at=midday(6).isoformat())
    assert (
        await http.post(f"{stack.tracking}/shipments/{shipment}/scans", json=delay, headers=COURIER)
    ).json()["accepted"]

    item = await _worklist_item(http, stack, lambda i: i["coi"] == coi and i["kind"] == "at_risk")
    assert "conditioning may have started" in item["detail"] and item["alert_id"]
    hook = webhook_listener.wait_for(lambda h: h.json()["kind"] == "slot.at_risk" and h.json()["coi"] == coi)
    assert hook.json()["reason_code"] == "delay" and "reason" not in hook.json()
    unchanged = (
        await http.get(f"{stack.scheduling}/appointments/{booked['id']}", headers=COORDINATOR)
    ).json()
    assert unchanged["conditioning_start_on"] == moved_back["conditioning_start_on"]
    assert unchanged["state"] == "tentative"
    assert not [e for e in events.of(coi) if e.type == "slot.rescheduled.v2"]


async def test_a_quarantine_after_confirmation_reaches_the_site_and_stays_on_the_worklist(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    site = await new_site(http, stack)
    await http.post(
        f"{stack.scheduling}/webhooks",
        json={"url": webhook_listener.url, "treatment_center_id": site.id},
        headers=COORDINATOR,
    )
    coi, shipment = await dispatched_case(http, stack, events, site, eta=midday(2))
    booked = await book_first_option(http, stack, events, coi)
    scans = f"{stack.tracking}/shipments/{shipment}/scans"
    await http.post(scans, json=scan("delivery", [coi], location="QTC"), headers=COURIER)
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)

    # A warm reading at receipt, after the delivery was confirmed: COI tracking quarantines the product.
    warm = await http.post(
        scans, json=scan("receipt", [coi], location="QTC", temperature=-120.0), headers=COURIER
    )
    assert warm.json()["quarantined"] is True, warm.text
    at_risk = await events.wait_for(lambda e: e.type == "slot.at_risk.v2" and e.subject == coi)
    assert at_risk.data.appointment_state == "on_hold" and str(at_risk.data.appointment_id) == booked["id"]  # type: ignore[union-attr]
    hook = webhook_listener.wait_for(lambda h: h.json()["kind"] == "slot.at_risk" and h.json()["coi"] == coi)
    assert hook.json()["state"] == "on_hold" and hook.json()["reason_code"] == at_risk.data.cause  # type: ignore[union-attr]
    assert webhook_listener.wait_for(lambda h: h.json()["kind"] == "slot.held" and h.json()["coi"] == coi)
    held = (await http.get(f"{stack.scheduling}/appointments/{booked['id']}", headers=COORDINATOR)).json()
    assert held["state"] == "on_hold" and held["hold_cause"] in ("temperature_excursion", "quarantine")
    item = await _worklist_item(http, stack, lambda i: i["coi"] == coi and i["kind"] == "at_risk")
    assert item["alert_id"] == str(at_risk.data.alert_id)  # type: ignore[union-attr]

    fhir_appointment = (
        await http.get(f"{stack.scheduling}/fhir/Appointment/{booked['id']}", headers=COORDINATOR)
    ).json()
    assert FhirAppointment.model_validate(fhir_appointment).status == "pending"
    assert {e["url"].rsplit("/", 1)[-1] for e in fhir_appointment["extension"]} == {
        "appointment-hold",
        "appointment-at-risk",
    }
    slots = (
        await http.get(
            f"{stack.scheduling}/fhir/Slot", params={"schedule": f"Schedule/{site.id}"}, headers=COORDINATOR
        )
    ).json()
    assert [e["resource"]["status"] for e in slots["entry"]] == ["busy-unavailable"]

    resolved = await http.post(
        f"{stack.scheduling}/alerts/{item['alert_id']}/resolve",
        json={"resolution": "called the site: conditioning postponed until QA decides"},
        headers=COORDINATOR,
    )
    assert resolved.status_code == 200 and resolved.json()["resolved_by"] == "coord-ana", resolved.text
    items = (await http.get(f"{stack.scheduling}/worklist", headers=COORDINATOR)).json()
    assert not [i for i in items if i["coi"] == coi and i["kind"] == "at_risk"]
    assert [i["kind"] for i in items if i["coi"] == coi] == ["on_hold"]


async def test_a_coordinator_reschedules_a_tentative_appointment_and_the_site_is_told(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    site = await new_site(http, stack)
    await http.post(
        f"{stack.scheduling}/webhooks",
        json={"url": webhook_listener.url, "treatment_center_id": site.id},
        headers=COORDINATOR,
    )
    coi, shipment = await dispatched_case(http, stack, events, site, eta=midday(2))
    booked = await book_first_option(http, stack, events, coi)
    options = (await http.get(f"{stack.scheduling}/cases/{coi}", headers=COORDINATOR)).json()["options"]
    later = options[1]
    move = f"{stack.scheduling}/appointments/{booked['id']}/reschedule"

    not_offered = await http.post(
        move, json={"option_id": str(uuid.uuid4()), "reason_code": "site_request"}, headers=COORDINATOR
    )
    assert not_offered.status_code == 422
    assert [e["pointer"] for e in not_offered.json()["errors"]] == ["/option_id"]
    moved = await http.post(
        move,
        json={
            "option_id": later["option_id"],
            "reason_code": "site_request",
            "note": "the site asked for a later day",
        },
        headers=COORDINATOR,
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["conditioning_start_on"] == later["conditioning_start_on"]
    assert moved.json()["state"] == "tentative" and moved.json()["version"] > booked["version"]
    assert (moved.json()["reason_code"], moved.json()["note"]) == (
        "site_request",
        "the site asked for a later day",
    )
    event = await events.wait_for(lambda e: e.type == "slot.rescheduled.v2" and e.subject == coi)
    assert event.data.previous_conditioning_start_on.isoformat() == booked["conditioning_start_on"]  # type: ignore[union-attr]
    hook = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "slot.rescheduled" and h.json()["coi"] == coi
    )
    assert hook.json()["conditioning_start_on"] == later["conditioning_start_on"]
    assert hook.json()["reason_code"] == "site_request" and b"the site asked" not in hook.body
    assert event.data.reason_code == "site_request"  # type: ignore[union-attr]

    await http.post(
        f"{stack.tracking}/shipments/{shipment}/scans", json=scan("delivery", [coi]), headers=COURIER
    )
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    confirmed = await http.post(
        move, json={"option_id": options[0]["option_id"], "reason_code": "site_request"}, headers=COORDINATOR
    )
    assert confirmed.status_code == 409 and confirmed.json()["reasons"] == [
        "an appointment that is confirmed cannot be moved"
    ]


async def test_a_pick_up_eta_in_the_past_offers_nothing_and_a_booking_in_the_past_is_refused(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    # COI tracking refuses a pick-up whose ETA has passed: a stale one reaches scheduling only as an event
    # delayed on its way, made here as COI tracking publishes it, on its topic.
    site = await new_site(http, stack)
    order = await http.post(
        f"{stack.orders}/orders",
        json=order_body(treatment_center_id=site.id, prescriber_npi=site.npi),
        headers=COORDINATOR,
    )
    coi: str = order.json()["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    about = {"shipment_id": uuid.UUID(shipment["id"]), "coi": coi, "treatment_center_id": site.id}
    bookings = f"{stack.scheduling}/cases/{coi}/bookings"
    yesterday = await http.post(
        bookings,
        json={"conditioning_start_on": (date.today() - timedelta(days=1)).isoformat()},
        headers=COORDINATOR,
    )
    assert yesterday.status_code == 422, yesterday.text
    assert [e["pointer"] for e in yesterday.json()["errors"]] == ["/conditioning_start_on"]
    assert "before today" in yesterday.json()["errors"][0]["detail"]

    await _as_coi_tracking(
        stack,
        ShipmentDispatched(
            source="cgt/coi-tracking",
            subject=coi,
            correlationid=f"late-{coi}",
            data=ShipmentDispatchedData(**about, dispatched_at=midday(-5), eta_at=midday(-3)),
        ),
    )
    item = await _worklist_item(http, stack, lambda i: i["coi"] == coi and i["kind"] == "attention")
    assert "has already passed" in item["detail"]
    case = (await http.get(f"{stack.scheduling}/cases/{coi}", headers=COORDINATOR)).json()
    assert case["options"] == [] and case["eta_at"] is None
    assert not [e for e in events.of(coi) if e.type == "slot.options_offered.v1"]
    blind = await http.post(
        bookings,
        json={"conditioning_start_on": (date.today() + timedelta(days=3)).isoformat()},
        headers=COORDINATOR,
    )
    assert blind.status_code == 409 and "ETA is not known" in blind.json()["reasons"][0]


async def _as_coi_tracking(stack: RunningStack, event: ShipmentDispatched | ShipmentDelayed) -> None:
    await produce(stack.kafka, SHIPMENTS, event.model_dump_json().encode(), event.subject.encode())


async def _worklist_item(
    http: httpx.AsyncClient, stack: RunningStack, predicate: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        items = (await http.get(f"{stack.scheduling}/worklist", headers=COORDINATOR)).json()
        found = [i for i in items if predicate(i)]
        if found:
            item: dict[str, Any] = found[0]
            return item
        await asyncio.sleep(0.1)
    raise TimeoutError("no matching worklist item")


async def test_the_worklist_shows_cases_to_book_oldest_first(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack)
    first, _ = await dispatched_case(http, stack, events, site, eta=midday(4))
    second, _ = await dispatched_case(http, stack, events, site, eta=midday(4))
    items = (await http.get(f"{stack.scheduling}/worklist", headers=COORDINATOR)).json()
    mine = [i["coi"] for i in items if i["kind"] == "to_book" and i["coi"] in (first, second)]
    assert mine == [first, second]
    assert [i["since"] for i in items] == sorted(i["since"] for i in items)
    await book_first_option(http, stack, events, first)
    items = (await http.get(f"{stack.scheduling}/worklist", headers=COORDINATOR)).json()
    assert first not in [i["coi"] for i in items if i["kind"] == "to_book"]
    # A treatment center reads the worklist too (the console's read-only view), its own site's items only.
    center = await http.get(
        f"{stack.scheduling}/worklist", headers={"Authorization": "Bearer dev-center-token"}
    )
    assert center.status_code == 200
    assert {i["treatment_center_id"] for i in center.json()} <= {"TC-BOSTON"}
    assert second not in [i["coi"] for i in center.json()]


async def test_a_webhook_that_fails_twice_is_delivered_once_in_effect_and_survives_a_restart(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    site = await new_site(http, stack)
    registered = await http.post(
        f"{stack.scheduling}/webhooks",
        json={"url": webhook_listener.url, "treatment_center_id": site.id},
        headers=COORDINATOR,
    )
    secret = registered.json()["secret"]
    webhook_listener.fail_next = 2
    coi, _ = await dispatched_case(http, stack, events, site, eta=midday(3))
    booked = await book_first_option(http, stack, events, coi)
    webhook_listener.wait_for(
        lambda h: (
            h.json()["coi"] == coi
            and webhook_listener.fail_next == 0
            and len([x for x in webhook_listener.received if x.json()["coi"] == coi]) >= 3
        )
    )
    attempts = [h for h in webhook_listener.received if h.json()["coi"] == coi]
    assert len({h.headers["Idempotency-Key"] for h in attempts}) == 1, (
        "retries carry the same idempotency key"
    )
    for hook in attempts:
        assert signature_matches(
            [secret],
            int(hook.headers[TIMESTAMP_HEADER]),
            hook.headers[IDEMPOTENCY_HEADER],
            hook.body,
            hook.headers[SIGNATURE_HEADER],
        )
    log = await _deliveries(http, stack, booked["id"], lambda rows: rows and rows[0]["status"] == "delivered")
    assert log[0]["attempts"] == 3 and log[0]["kind"] == "slot.proposed"

    # A failing endpoint, then a restart: the pending delivery is still there and goes out afterwards.
    webhook_listener.fail_next = 10**6
    second, _ = await dispatched_case(http, stack, events, site, eta=midday(3))
    appointment = await book_first_option(http, stack, events, second)
    await _deliveries(http, stack, appointment["id"], lambda rows: rows and rows[0]["attempts"] >= 1)
    scheduling = stack.stack.services["scheduling"]
    scheduling.stop()
    webhook_listener.fail_next = 0
    scheduling.start()
    scheduling.wait_ready()
    delivered = await _deliveries(
        http, stack, appointment["id"], lambda rows: rows and rows[0]["status"] == "delivered", timeout=60
    )
    assert delivered[0]["attempts"] >= 2


async def _deliveries(
    http: httpx.AsyncClient, stack: RunningStack, appointment_id: str, predicate: Any, timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    rows: list[dict[str, Any]] = []
    while asyncio.get_running_loop().time() < deadline:
        rows = (
            await http.get(
                f"{stack.scheduling}/appointments/{appointment_id}/deliveries", headers=COORDINATOR
            )
        ).json()
        if predicate(rows):
            return rows
        await asyncio.sleep(0.1)
    raise TimeoutError(f"delivery log never matched: {rows}")


APPOINTMENT_FIELDS = {"resourceType", "id", "status", "start", "end", "participant"}
SLOT_FIELDS = {"resourceType", "schedule", "status", "start", "end"}
"""The fields the project's resources share with HL7's official R4 examples (tests/conformance checks the
examples have them)."""


async def test_appointments_and_slots_are_valid_fhir_r4(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack)
    coi, shipment = await dispatched_case(http, stack, events, site, eta=midday(2))
    booked = await book_first_option(http, stack, events, coi)
    pending = (
        await http.get(f"{stack.scheduling}/fhir/Appointment/{booked['id']}", headers=COORDINATOR)
    ).json()
    assert FhirAppointment.model_validate(pending).status == "pending"
    assert set(pending) >= APPOINTMENT_FIELDS
    assert pending["slot"] == [{"reference": f"Slot/{booked['id']}"}]
    assert pending["participant"][1]["actor"]["reference"].startswith("Patient/PSN-")
    slots = (
        await http.get(
            f"{stack.scheduling}/fhir/Slot", params={"schedule": f"Schedule/{site.id}"}, headers=COORDINATOR
        )
    ).json()
    bundle = Bundle.model_validate(slots)
    assert bundle.total == 1
    slot = slots["entry"][0]["resource"]
    assert FhirSlot.model_validate(slot).status == "busy-tentative"
    assert set(slot) >= SLOT_FIELDS

    await http.post(
        f"{stack.tracking}/shipments/{shipment}/scans", json=scan("delivery", [coi]), headers=COURIER
    )
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    booked_now = (
        await http.get(f"{stack.scheduling}/fhir/Appointment/{booked['id']}", headers=COORDINATOR)
    ).json()
    assert FhirAppointment.model_validate(booked_now).status == "booked"
    assert int(booked_now["meta"]["versionId"]) > int(pending["meta"]["versionId"])
    slots = (
        await http.get(
            f"{stack.scheduling}/fhir/Slot", params={"schedule": f"Schedule/{site.id}"}, headers=COORDINATOR
        )
    ).json()
    assert slots["entry"][0]["resource"]["status"] == "busy"
    bad = await http.get(
        f"{stack.scheduling}/fhir/Slot",
        params={"schedule": f"Schedule/{site.id}", "start": "xx2026-01-01"},
        headers=COORDINATOR,
    )
    assert bad.status_code == 422


async def test_infusion_plans_fifteen_years_of_follow_up_and_overdue_visits_are_raised(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack)
    coi, shipment = await dispatched_case(http, stack, events, site, eta=midday(2), manufactured=True)
    booked = await book_first_option(http, stack, events, coi)
    infusion = f"{stack.scheduling}/appointments/{booked['id']}/infusion"
    early = await http.post(infusion, json={"infused_on": date.today().isoformat()}, headers=COORDINATOR)
    assert early.status_code == 409, "a tentative appointment (product not delivered) cannot be infused"
    await http.post(
        f"{stack.tracking}/shipments/{shipment}/scans", json=scan("delivery", [coi]), headers=COURIER
    )
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    before = await http.post(infusion, json={"infused_on": date.today().isoformat()}, headers=COORDINATOR)
    assert before.status_code == 422, "conditioning starts in days: nobody is infused today"
    assert [e["pointer"] for e in before.json()["errors"]] == ["/infused_on"]

    days_pass(stack, coi, 400)
    infused_on = date.fromisoformat(booked["infusion_on"]) - timedelta(days=400)
    recorded = await http.post(infusion, json={"infused_on": infused_on.isoformat()}, headers=COORDINATOR)
    assert recorded.status_code == 200, recorded.text
    visits = (await http.get(f"{stack.scheduling}/cases/{coi}/follow-up", headers=COORDINATOR)).json()
    assert recorded.json()["follow_up_visits"] == len(visits) and len(visits) >= 18
    assert date.fromisoformat(visits[-1]["due_on"]).year == infused_on.year + 15
    overdue = await events.wait_for(lambda e: e.type == "followup.visit_overdue.v1" and e.subject == coi)
    assert overdue.data.visit_number == 1  # type: ignore[union-attr]
    item = await _worklist_item(http, stack, lambda i: i["coi"] == coi and i["kind"] == "follow_up_overdue")
    assert "follow-up visit" in item["detail"]
    order_id = next(e for e in events.of(coi) if e.type == "order.accepted.v2").data.order_id
    for _ in range(300):
        status = (await http.get(f"{stack.orders}/orders/{order_id}", headers=COORDINATOR)).json()["status"]
        if status == "in_follow_up":
            break
        await asyncio.sleep(0.05)
    assert status == "in_follow_up"


async def test_a_cancelled_order_cancels_its_appointment(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack)
    coi, _ = await dispatched_case(http, stack, events, site, eta=midday(2))
    booked = await book_first_option(http, stack, events, coi)
    order_id = next(e for e in events.of(coi) if e.type == "order.accepted.v2").data.order_id
    cancelled = await http.post(
        f"{stack.orders}/orders/{order_id}/cancel",
        json={"reason_code": "patient_ineligible"},
        headers=COORDINATOR,
    )
    assert cancelled.status_code == 200
    event = await events.wait_for(lambda e: e.type == "slot.cancelled.v2" and e.subject == coi)
    assert str(event.data.appointment_id) == booked["id"] and event.data.reason_code == "order_cancelled"  # type: ignore[union-attr]


async def test_a_shipment_event_that_overtakes_its_order_is_parked_then_applied(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    """Orders and shipments travel on different topics: scheduling may hear of a dispatch first."""
    from cgt_contracts.events import (
        OrderAccepted,
        OrderAcceptedData,
        ShipmentDispatched,
        ShipmentDispatchedData,
    )

    from services.common.topics import ORDERS, SHIPMENTS
    from tests.support.infra import produce, wait_committed

    coi = f"CHW43212699{uuid.uuid4().hex[:4].upper()}X"
    dispatched = ShipmentDispatched(
        source="cgt/coi-tracking",
        subject=coi,
        correlationid="overtake",
        data=ShipmentDispatchedData(
            shipment_id=uuid.uuid4(),
            coi=coi,
            treatment_center_id="TC-BOSTON",
            dispatched_at=datetime.now(UTC),
            eta_at=midday(3),
        ),
    )
    partition, offset = await produce(
        stack.kafka, SHIPMENTS, dispatched.model_dump_json().encode(), key=coi.encode()
    )
    await wait_committed(stack.kafka, "scheduling", SHIPMENTS, partition, offset)  # handled before its order
    accepted = OrderAccepted(
        source="cgt/order-intake",
        subject=coi,
        correlationid="overtake",
        data=OrderAcceptedData(
            order_id=uuid.uuid4(),
            coi=coi,
            patient_ref="PSN-OVERTAKE",
            therapy_code="WASKYRA",
            treatment_center_id="TC-BOSTON",
            storage_limit_celsius=-150.0,
            conditioning_days=4,
            accepted_at=datetime.now(UTC),
        ),
    )
    await produce(stack.kafka, ORDERS, accepted.model_dump_json().encode(), key=coi.encode())
    offered = await events.wait_for(lambda e: e.type == "slot.options_offered.v1" and e.subject == coi)
    assert offered.data.shipment_id == dispatched.data.shipment_id  # type: ignore[union-attr]
