"""The case page (`GET /cases/{coi}`): one COI's whole vein-to-vein record from the three services, and the
coordinator's actions on it, each a CSRF form the console posts on to the service that owns the step.

Reads: scheduling's case first (its 404 is the page's: a treatment center asking for another site's case
gets the service's words), then one concurrent round (orders, shipments, plans, follow-up, the site's zone,
the appointment's messages), then one more for what hangs off those (each order's history and collections,
each shipment's scans, ledger and readings). Actions answer 303 back to the page, which shows the outcome
or the service's refusal in words with the correlation id, once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from cgt_contracts.events import CancellationReasonCode
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console import charts, timeline
from services.console.client import ServiceClient, ServiceError, ServiceName
from services.console.sessions import ConsoleSession

router = APIRouter()

CANCEL_REASONS = tuple(code.value for code in CancellationReasonCode)
"""The closed list order intake takes for a cancellation (`POST /orders/{id}/cancel`)."""
RESCHEDULE_REASONS = (
    "site_request",
    "patient_request",
    "patient_condition",
    "clinical_decision",
    "site_capacity",
    "delay",
    "other",
)
"""The reasons a coordinator may give for moving an appointment (scheduling's `COORDINATOR_REASONS`; a unit
test holds the two together). The service checks them again."""
READING_PAGES = 10
"""At most this many pages of 500 readings per shipment's chart (5 000 readings: days of a 5-minute logger)."""
NO_ORDER = "The case has no order to act on."
ACTOR_ROLES = frozenset({"coordinator"})
"""Who gets the action forms; everyone else (a treatment center, QA) sees the page read-only."""


@dataclass(frozen=True)
class Outcome:
    """What the last action of a session did on a case: a sentence, or the service's refusal."""

    coi: str
    done: str | None = None
    error: ServiceError | None = None
    problem: str | None = None


def _app() -> Any:
    from services.console import app as console_app  # the page helpers; app.py includes this router

    return console_app


async def _zone(request: Request, session: ConsoleSession, site: str) -> ZoneInfo:
    app = _app()
    try:
        found = await app.console_of(request).client.get(
            "scheduling", f"/sites/{site}", token=session.token, correlation_id=app.correlation_id_of(request)
        )
    except ServiceError:
        return timeline.zone_of(None)
    return timeline.zone_of(found.get("timezone"))


def _day(value: str | None, zone: ZoneInfo) -> str:
    return f"{value} ({zone.key})" if value else ""


@dataclass
class _Reads:
    """The case page's calls to the services, as the signed-in session, and the refusals they met (shown on
    the page in words, each part it could not read left empty)."""

    client: ServiceClient
    token: str
    correlation_id: str
    errors: list[ServiceError] = field(default_factory=list)

    async def fetch(self, service: ServiceName, path: str, params: dict[str, str] | None = None) -> Any:
        return await self.client.get(
            service, path, token=self.token, correlation_id=self.correlation_id, params=params
        )

    async def pages(self, service: ServiceName, path: str, max_pages: int) -> list[Any]:
        items: list[Any]
        items, _ = await self.client.get_pages(
            service,
            path,
            token=self.token,
            correlation_id=self.correlation_id,
            params={"limit": "500"},
            max_pages=max_pages,
        )
        return items

    def kept(self, part: Any, empty: Any) -> Any:
        if isinstance(part, ServiceError):
            self.errors.append(part)
            return empty
        if isinstance(part, BaseException):
            raise part
        return part


@dataclass
class _Record:
    """What the first round of calls read of a case (each part empty if its service refused)."""

    orders: list[Any]
    shipments: list[Any]
    plans: list[Any]
    visits: list[Any]
    zone: ZoneInfo
    deliveries: list[Any]


async def _first_round(
    reads: _Reads, request: Request, session: ConsoleSession, coi: str, case: dict[str, Any]
) -> _Record:
    """Orders, shipments, plans, follow-up, the site's zone and the appointment's messages, concurrently."""
    appointment = case.get("appointment")
    first = await asyncio.gather(
        reads.fetch("order_intake", "/orders", {"coi": coi}),
        reads.fetch("coi_tracking", "/shipments", {"coi": coi}),
        reads.fetch("scheduling", f"/cases/{quote(coi, safe='')}/plans"),
        reads.fetch("scheduling", f"/cases/{quote(coi, safe='')}/follow-up"),
        _zone(request, session, case["treatment_center_id"]),
        reads.pages("scheduling", f"/appointments/{appointment['id']}/deliveries", 2)
        if appointment
        else asyncio.sleep(0, []),
        return_exceptions=True,
    )
    orders = reads.kept(first[0], [])
    shipments = reads.kept(first[1], [])
    plans = reads.kept(first[2], [])
    visits = reads.kept(first[3], [])
    zone: ZoneInfo = first[4] if isinstance(first[4], ZoneInfo) else timeline.zone_of(None)
    deliveries = reads.kept(first[5], [])
    return _Record(orders, shipments, plans, visits, zone, deliveries)


async def _second_round(reads: _Reads, record: _Record) -> None:
    """What hangs off the orders and shipments, concurrently: each order's history and collections, each
    shipment's scans, ledger and readings (the readings drawn as its chart), kept on them."""
    orders, shipments = record.orders, record.shipments
    second = await asyncio.gather(
        *(reads.fetch("order_intake", f"/orders/{o['id']}/history") for o in orders),
        *(reads.fetch("order_intake", f"/orders/{o['id']}/collections") for o in orders),
        *(reads.fetch("coi_tracking", f"/shipments/{s['id']}/scans") for s in shipments),
        *(reads.fetch("coi_tracking", f"/shipments/{s['id']}/ledger") for s in shipments),
        *(reads.pages("coi_tracking", f"/shipments/{s['id']}/readings", READING_PAGES) for s in shipments),
        return_exceptions=True,
    )
    n, m = len(orders), len(shipments)
    for i, order in enumerate(orders):
        order["history"] = reads.kept(second[i], [])
        order["collections"] = reads.kept(second[n + i], [])
    for i, shipment in enumerate(shipments):
        shipment["scans"] = reads.kept(second[2 * n + i], [])
        shipment["ledger"] = reads.kept(second[2 * n + m + i], None)
        _chart(shipment, reads.kept(second[2 * n + 2 * m + i], []), record.zone)


def _chart(shipment: dict[str, Any], readings: list[Any], zone: ZoneInfo) -> None:
    """A shipment's temperature chart (against its own limits) and how many readings it draws."""
    shipment["chart"] = charts.temperature_chart(
        readings,
        max_celsius=shipment["storage_limit_celsius"],
        min_celsius=shipment.get("min_celsius"),
        zone=zone,
        title=f"Temperatures of the {shipment['leg']} shipment to {shipment['destination']}",
        chart_id=f"chart-{shipment['id']}",
    )
    shipment["reading_count"] = len(readings)


def _render(
    request: Request,
    session: ConsoleSession,
    coi: str,
    case: dict[str, Any],
    record: _Record,
    errors: list[ServiceError],
) -> Response:
    """The page: the record, the session's last outcome on this case (once), and the forms it may use."""
    app = _app()
    outcome = app.console_of(request).outcomes.pop(session.id, None)
    if outcome is not None and outcome.coi != coi:
        outcome = None
    orders, zone = record.orders, record.zone
    live_order = next((o for o in reversed(orders) if o["status"] not in ("rejected", "cancelled")), None)
    local = datetime.now(UTC).astimezone(zone)
    page: Response = app.render(
        request,
        "case.html",
        session,
        case=case,
        orders=orders,
        live_order=live_order,
        shipments=record.shipments,
        plans=record.plans,
        visits=record.visits,
        deliveries=record.deliveries,
        zone=zone.key,
        eta_local=timeline.local_time(case.get("eta_at"), zone),
        at=lambda value: timeline.local_time(value, zone),
        day=lambda value: _day(value, zone),
        moments=timeline.case_timeline(case, orders, record.shipments, zone),
        errors=errors,
        outcome=outcome,
        may_act=session.caller.role in ACTOR_ROLES,
        cancel_reasons=CANCEL_REASONS,
        reschedule_reasons=RESCHEDULE_REASONS,
        now_local=f"{local:%Y-%m-%dT%H:%M}",
    )
    return page


@router.get("/cases/{coi}", response_class=HTMLResponse)
async def case_page(request: Request, coi: str) -> Response:
    app = _app()
    session = app.signed_in(request)
    reads = _Reads(app.console_of(request).client, session.token, app.correlation_id_of(request))
    try:
        case = await reads.fetch("scheduling", f"/cases/{quote(coi, safe='')}")
    except ServiceError as error:
        refused: Response = app.error_page(request, session, error)
        return refused
    record = await _first_round(reads, request, session, coi, case)
    await _second_round(reads, record)
    return _render(request, session, coi, case, record, reads.errors)


# ---------------------------------------------------------------------------------------------- actions


def _back(coi: str) -> RedirectResponse:
    return RedirectResponse(f"/cases/{quote(coi, safe='')}", status_code=303)


class _Refused(Exception):
    """A form the console cannot send as it is (nothing sent): the problem, said in words on the page."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _uuid(value: str, problem: str) -> str:
    """An id that goes into a service's path, only if it is a UUID."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise _Refused(problem) from None


@dataclass(frozen=True)
class _Posted:
    """A case action's form, CSRF-checked, with the readings the actions share."""

    request: Request
    session: ConsoleSession
    coi: str
    fields: dict[str, str]

    def id(self, name: str, problem: str = NO_ORDER) -> str:
        return _uuid(self.fields.get(name, ""), problem)

    def text(self, name: str) -> str:
        return self.fields.get(name, "")

    def note(self) -> str | None:
        return self.text("note").strip() or None

    async def instant(self, name: str, problem: str) -> str:
        """A `datetime-local` field, in the case's site's zone, as an ISO 8601 instant."""
        found = await _instant(self.request, self.session, self.coi, self.text(name))
        if found is None:
            raise _Refused(problem)
        return found


Send = Callable[[_Posted], Awaitable[tuple[str, Any]]]
"""What an action sends: from its form, the service's path and the body (or `_Refused`)."""


async def _act(request: Request, coi: str, service: ServiceName, done: str, send: Send) -> Response:
    """Read the form, post what `send` makes of it to the service, keep the outcome (`done`, the service's
    refusal, or the form's problem) for the session's next view of the case, go back to the page."""
    app = _app()
    session = app.signed_in(request)
    console = app.console_of(request)
    form = await app.posted_form(request, session)
    try:
        path, body = await send(_Posted(request, session, coi, form))
    except _Refused as refused:
        console.outcomes[session.id] = Outcome(coi, problem=refused.problem)
        return _back(coi)
    try:
        await console.client.post(
            service, path, body, token=session.token, correlation_id=app.correlation_id_of(request)
        )
    except ServiceError as error:
        console.outcomes[session.id] = Outcome(coi, error=error)
    else:
        console.outcomes[session.id] = Outcome(coi, done=done)
    return _back(coi)


async def _instant(request: Request, session: ConsoleSession, coi: str, value: str) -> str | None:
    """A `datetime-local` value, in the case's site's zone, as an ISO 8601 instant (None if not one)."""
    app = _app()
    try:
        local = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    try:
        case = await app.console_of(request).client.get(
            "scheduling",
            f"/cases/{quote(coi, safe='')}",
            token=session.token,
            correlation_id=app.correlation_id_of(request),
        )
        zone = await _zone(request, session, case["treatment_center_id"])
    except ServiceError:
        zone = timeline.zone_of(None)
    if local.tzinfo is None:
        local = local.replace(tzinfo=zone)
    return local.isoformat()


@router.post("/cases/{coi}/plans", response_class=HTMLResponse)
async def offer_plans(request: Request, coi: str) -> Response:
    async def send(_: _Posted) -> tuple[str, Any]:
        return f"/cases/{quote(coi, safe='')}/plans", {"count": 3}

    return await _act(request, coi, "scheduling", "Plans offered.", send)


@router.post("/cases/{coi}/plans/{plan_id}/book", response_class=HTMLResponse)
async def book_plan(request: Request, coi: str, plan_id: str) -> Response:
    async def send(_: _Posted) -> tuple[str, Any]:
        plan = _uuid(plan_id, "That is not one of the case's plans.")
        return f"/cases/{quote(coi, safe='')}/plans/{plan}/book", {}

    done = "Plan booked: every leg is held and the infusion appointment is tentative."
    return await _act(request, coi, "scheduling", done, send)


@router.post("/cases/{coi}/reschedule", response_class=HTMLResponse)
async def reschedule(request: Request, coi: str) -> Response:
    async def send(form: _Posted) -> tuple[str, Any]:
        choose = "Choose the option to move the appointment to."
        appointment_id, option_id = form.id("appointment_id", choose), form.id("option_id", choose)
        body = {"option_id": option_id, "reason_code": form.text("reason_code"), "note": form.note()}
        return f"/appointments/{appointment_id}/reschedule", body

    return await _act(request, coi, "scheduling", "Appointment moved.", send)


@router.post("/cases/{coi}/cancel", response_class=HTMLResponse)
async def cancel_order(request: Request, coi: str) -> Response:
    async def send(form: _Posted) -> tuple[str, Any]:
        body = {"reason_code": form.text("reason_code"), "note": form.note()}
        return f"/orders/{form.id('order_id')}/cancel", body

    return await _act(request, coi, "order_intake", "Order cancelled.", send)


@router.post("/cases/{coi}/collections", response_class=HTMLResponse)
async def record_collection(request: Request, coi: str) -> Response:
    async def send(form: _Posted) -> tuple[str, Any]:
        order_id = form.id("order_id")
        when = await form.instant("collected_at", "Give when the cells were collected (date and time).")
        return f"/orders/{order_id}/collections", {"collected_at": when}

    return await _act(request, coi, "order_intake", "Collection recorded.", send)


@router.post("/cases/{coi}/manufacturing-start", response_class=HTMLResponse)
async def start_manufacturing(request: Request, coi: str) -> Response:
    async def send(form: _Posted) -> tuple[str, Any]:
        return f"/orders/{form.id('order_id')}/status", {"status": "in_manufacturing"}

    return await _act(request, coi, "order_intake", "Manufacturing started.", send)


@router.post("/cases/{coi}/manufacturing-release", response_class=HTMLResponse)
async def release(request: Request, coi: str) -> Response:
    async def send(form: _Posted) -> tuple[str, Any]:
        order_id = form.id("order_id")
        when = await form.instant("released_at", "Give when the lot was released (date and time).")
        return f"/orders/{order_id}/manufacturing-release", {
            "lot_number": form.text("lot_number").strip(),
            "released_at": when,
        }

    return await _act(request, coi, "order_intake", "Manufacturing release recorded.", send)
