"""The console's QA page (quarantined shipments, the Part 11 signature) and Sites page (each site's next
four weeks as a calendar), over COI tracking's and scheduling's APIs with the signed-in user's token."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console import charts, quarantine, site_calendar, timeline
from services.console.app import (
    console_of,
    correlation_id_of,
    error_page,
    posted_form,
    render,
    signed_in,
)
from services.console.client import ServiceError, ServiceName
from services.console.sessions import ConsoleSession

router = APIRouter()
log = structlog.get_logger()
QA_VIEWERS = frozenset({"qa", "coordinator"})
READINGS_PAGE = 500
"""The readings summarised per shipment: COI tracking's largest page (the summary says when there are more)."""


class Calls:
    """The signed-in user's GETs of one request, each with the request's correlation id."""

    def __init__(self, request: Request, session: ConsoleSession) -> None:
        self.client = console_of(request).client
        self.token = session.token
        self.correlation_id = correlation_id_of(request)

    async def get(self, service: ServiceName, path: str, params: dict[str, str] | None = None) -> Any:
        return await self.client.get(
            service, path, token=self.token, correlation_id=self.correlation_id, params=params
        )

    async def zones(self) -> dict[str, ZoneInfo]:
        """Every site's zone the caller may read (scheduling `GET /sites`); none when it is refused."""
        try:
            sites = await self.get("scheduling", "/sites")
        except ServiceError:
            return {}
        return {site["id"]: timeline.zone_of(site.get("timezone")) for site in sites}


def zone_for(zones: dict[str, ZoneInfo], site: str) -> ZoneInfo:
    return zones.get(site) or timeline.zone_of(None)


def refused(
    request: Request,
    session: ConsoleSession,
    message: str,
    status_code: int = 403,
    heading: str = "Not for your role",
) -> HTMLResponse:
    return render(request, "refused.html", session, status_code, message=message, heading=heading)


# ------------------------------------------------------------------------ QA


async def qa_context(request: Request, session: ConsoleSession, signed: str | None = None) -> dict[str, Any]:
    """The quarantined shipments with their readings' summary and past dispositions, and (after a
    signature) the disposition just signed, as COI tracking answers them."""
    calls = Calls(request, session)
    shipments, zones = await asyncio.gather(
        calls.get("coi_tracking", "/shipments", {"status": "quarantined", "limit": "500"}), calls.zones()
    )
    wanted = [s["id"] for s in shipments]
    signed_id = signed

    async def details(shipment_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        readings, dispositions = await asyncio.gather(
            calls.get("coi_tracking", f"/shipments/{shipment_id}/readings", {"limit": str(READINGS_PAGE)}),
            calls.get("coi_tracking", f"/shipments/{shipment_id}/dispositions"),
        )
        return readings, dispositions

    async def signed_shipment() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        if signed_id is None:
            return None
        shipment, dispositions = await asyncio.gather(
            calls.get("coi_tracking", f"/shipments/{signed_id}"),
            calls.get("coi_tracking", f"/shipments/{signed_id}/dispositions"),
        )
        return shipment, dispositions

    found = await asyncio.gather(signed_shipment(), *(details(i) for i in wanted))
    just_signed = None
    if found[0] is not None:
        shipment, dispositions = found[0]
        if dispositions:
            zone = zone_for(zones, shipment["treatment_center_id"])
            just_signed = {"shipment": shipment, **manifestation(dispositions[-1], zone)}
    rows = []
    for shipment, (readings, dispositions) in zip(shipments, found[1:], strict=True):
        zone = zone_for(zones, shipment["treatment_center_id"])
        rows.append(
            {
                "shipment": shipment,
                "summary": quarantine.summarise(readings, shipment, READINGS_PAGE),
                "chart": charts.temperature_chart(
                    readings,
                    max_celsius=shipment["storage_limit_celsius"],
                    min_celsius=shipment.get("min_celsius"),
                    zone=zone,
                    title=f"Temperatures of the {shipment['leg']} shipment of {shipment['coi']}",
                    chart_id=f"chart-{shipment['id']}",
                ),
                "zone": zone.key,
                "eta_local": timeline.local_time(shipment.get("eta_at"), zone),
                "dispositions": [manifestation(d, zone) for d in dispositions],
            }
        )
    return {
        "rows": rows,
        "just_signed": just_signed,
        "may_sign": session.caller.role == "qa",
        "reason_groups": quarantine.reason_groups(),
        "meanings": quarantine.meanings(),
        "decisions": quarantine.DECISION_LABELS,
        "reason_labels": quarantine.REASON_LABELS,
        "meaning_labels": quarantine.MEANING_LABELS,
    }


def manifestation(disposition: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    """A signature's manifestation (21 CFR Part 11 §11.50): printed name, when in the site's zone, meaning."""
    return {
        "disposition": disposition,
        "signed_local": timeline.local_time(disposition["signed_at"], zone),
    }


@router.get("/qa", response_class=HTMLResponse)
async def qa_page(request: Request) -> Response:
    session = signed_in(request)
    if session.caller.role not in QA_VIEWERS:
        return refused(request, session, "The QA page is for QA reviewers and coordinators.")
    signed = request.query_params.get("signed")
    try:
        context = await qa_context(request, session, signed if signed and _uuid(signed) else None)
    except ServiceError as error:
        return error_page(request, session, error)
    return render(request, "qa.html", session, **context)


def _uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


@router.post("/qa/shipments/{shipment_id}/dispositions", response_class=HTMLResponse)
async def sign_disposition(request: Request, shipment_id: str) -> Response:
    """QA's release or rejection, signed with the PIN, posted to COI tracking; the PIN is passed on, never
    logged nor shown again. Signed: back to the QA page showing the manifestation. Refused: the QA page with
    the service's refusal in words at that shipment's form. The CSRF token is checked before anything,
    the shipment id too."""
    session = signed_in(request)
    form = await posted_form(request, session)
    if not _uuid(shipment_id):
        return refused(request, session, "There is no such shipment. Nothing was done.", 404, "Not found")
    calls = Calls(request, session)
    try:
        await calls.client.post(
            "coi_tracking",
            f"/shipments/{shipment_id}/dispositions",
            quarantine.disposition_body(form),
            token=session.token,
            correlation_id=calls.correlation_id,
        )
    except ServiceError as error:
        log.info("console.disposition_refused", status=error.status, shipment_id=str(shipment_id))
        if session.caller.role not in QA_VIEWERS:
            return error_page(request, session, error)
        try:
            context = await qa_context(request, session)
        except ServiceError as other:
            return error_page(request, session, other)
        status_code = error.status if 400 <= error.status < 500 else 502
        return render(
            request,
            "qa.html",
            session,
            status_code,
            refusal=error,
            refused_shipment=shipment_id,
            refusal_elsewhere=shipment_id not in {row["shipment"]["id"] for row in context["rows"]},
            typed={k: form.get(k, "") for k in ("decision", "reason_code", "note", "meaning")},
            **context,
        )
    log.info("console.disposition_signed", shipment_id=str(shipment_id))
    return RedirectResponse(f"/qa?signed={shipment_id}#signed", status_code=303)


# ------------------------------------------------------------------------ Sites


@router.get("/sites", response_class=HTMLResponse)
async def sites_page(request: Request) -> Response:
    """Each site's next four weeks (site-local days from today): a treatment center sees its own only,
    because scheduling answers its token with its own site."""
    session = signed_in(request)
    calls = Calls(request, session)
    try:
        sites = await calls.get("scheduling", "/sites")
    except ServiceError as error:
        return error_page(request, session, error)
    now = datetime.now(UTC)

    async def calendar(site: dict[str, Any]) -> dict[str, Any]:
        zone = timeline.zone_of(site.get("timezone"))
        start, end = site_calendar.window(zone, now)
        try:
            days = await calls.get(
                "scheduling",
                f"/sites/{site['id']}/availability",
                {"from": start.isoformat(), "to": end.isoformat()},
            )
        except ServiceError as error:
            return {"site": site, "zone": zone.key, "error": error, "weeks": [], "start": start, "end": end}
        weeks = site_calendar.weeks(days, site)
        return {"site": site, "zone": zone.key, "error": None, "weeks": weeks, "start": start, "end": end}

    calendars = await asyncio.gather(*(calendar(site) for site in sites))
    return render(
        request, "sites.html", session, calendars=calendars, weekday_names=site_calendar.WEEKDAY_NAMES
    )
