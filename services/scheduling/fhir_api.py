"""Scheduling's HL7 FHIR R4 interface (`/fhir`): each site's `Schedule` and `Location`, its booked
chairs as `Slot`s, the infusion `Appointment`s, and the `Patient`s they name by the pseudonymous
reference — read (with `ETag`/`Last-Modified`) and searched with FHIR's parameters and paging. Every
reference served resolves here. A treatment center sees its own site only; the same 404 for another
site's resource as for none. Views in `fhir.py`, searches in `fhir_search.py`, mapping in docs/fhir.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any
from uuid import UUID

from fastapi import Path, Request, Response
from sqlmodel import Session, col, select

from services.common import fhir, problems
from services.common.paging import page_list
from services.scheduling import commands, fhir_search, subscription_api, subscription_commands
from services.scheduling import fhir as views
from services.scheduling.api import Reader, SessionDep, _appointment, _site
from services.scheduling.domain import FHIR_SLOT_STATUS
from services.scheduling.models import Appointment, Case, Site

router = fhir.router()

RESOURCES = (
    fhir.ResourceCapability(
        type="Appointment",
        interactions=("read", "search-type"),
        documentation="An infusion (day 0): pending while tentative or held, booked once the product is "
        "confirmed, fulfilled once infused, cancelled",
        search_parameters=fhir_search.APPOINTMENT_PARAMETERS,
    ),
    fhir.ResourceCapability(
        type="Slot",
        interactions=("read", "search-type"),
        documentation="A booked infusion chair (id: its appointment's): busy-tentative, busy-unavailable "
        "while held, busy once confirmed",
        search_parameters=fhir_search.SLOT_PARAMETERS,
    ),
    fhir.ResourceCapability(
        type="Schedule",
        interactions=("read", "search-type"),
        documentation="A treatment center's infusion chairs (id: the site's)",
        search_parameters=fhir_search.SCHEDULE_PARAMETERS,
    ),
    fhir.ResourceCapability(type="Location", interactions=("read",), documentation="A treatment center"),
    fhir.PSEUDONYMOUS_PATIENT,
)
SiteId = Annotated[str, Path(pattern=fhir.FHIR_ID.pattern)]


def capabilities() -> Sequence[fhir.ResourceCapability]:
    """Everything this base serves: the scheduling resources and the Subscriptions (`subscription_api`)."""
    return (*RESOURCES, *subscription_api.SUBSCRIPTION_CAPABILITIES)


@router.get(
    "/metadata", summary="FHIR CapabilityStatement", responses=fhir.documented(fhir.CAPABILITY_EXAMPLE)
)
def metadata(request: Request) -> Response:
    """What this FHIR base serves, exactly."""
    return fhir.FhirJSONResponse(
        fhir.capability_statement(request, service="scheduling", resources=capabilities())
    )


def appointment_view(session: Session, appointment: Appointment) -> dict[str, Any]:
    """The Appointment as read, searched and notified (`subscription_commands.appointment_resource`)."""
    site = session.get(Site, appointment.treatment_center_id)
    return subscription_commands.appointment_resource(session, appointment, commands.calendar_of(site))


def slot_view(session: Session, appointment: Appointment) -> dict[str, Any]:
    site = session.get(Site, appointment.treatment_center_id)
    assert site is not None  # an appointment is booked at a known site
    return views.slot_resource(site, appointment, commands.calendar_of(site))


def _searchset(
    request: Request,
    session: Session,
    search: fhir.SearchRequest,
    wanted: fhir_search.Wanted,
    resource_type: str,
    view: Callable[[Session, Appointment], dict[str, Any]],
) -> Response:
    """One page of the appointments `wanted` matches, each as `view` renders it (an Appointment, or the
    Slot it holds), with the total and the next page's link."""
    appointments, total, next_cursor = fhir_search.find(session, wanted, fhir.page_of_search(search))
    resources = [view(session, appointment) for appointment in appointments]
    bundle = fhir.searchset(request, resource_type, resources, search, total=total, next_cursor=next_cursor)
    return fhir.FhirJSONResponse(bundle)


@router.get(
    "/Appointment/{appointment_id}",
    summary="Read an appointment as FHIR",
    responses=fhir.documented(views.APPOINTMENT_EXAMPLE),
)
def read_appointment(appointment_id: UUID, request: Request, session: SessionDep, caller: Reader) -> Response:
    """The appointment as an HL7 FHIR R4 Appointment: `pending` while tentative or on hold, `booked` once
    confirmed, `fulfilled` after the infusion, `cancelled`. A held one carries the `appointment-hold`
    extension (its cause as a coding, the reason as text); one with an alert no coordinator has resolved
    the `appointment-at-risk` extension. A treatment center reads its own site's."""
    return fhir.read_response(
        request, appointment_view(session, _appointment(session, appointment_id, caller))
    )


@router.get(
    "/Appointment",
    summary="Search appointments (FHIR)",
    responses=fhir.documented(fhir.searchset_example(views.APPOINTMENT_EXAMPLE)),
)
def search_appointments(request: Request, session: SessionDep, caller: Reader) -> Response:
    """Appointments by `patient` (Patient/<patient_ref>), `actor` (Location/<site>), `status`, `date`
    (the start, FHIR's prefixes, eq by default; without an offset, site-local), `identifier` (the COI)
    or `_id`, by start; `_count` a page with a `next` link. Unknown parameters are ignored and listed
    in an OperationOutcome entry (`Prefer: handling=strict`: 400)."""
    search = fhir.search_request(request, {p.name for p in fhir_search.APPOINTMENT_PARAMETERS})
    wanted = fhir_search.appointment_search(session, caller.site_scope, search)
    return _searchset(request, session, search, wanted, "Appointment", appointment_view)


@router.get(
    "/Slot/{slot_id}",
    summary="Read a booked chair (FHIR Slot)",
    responses=fhir.documented(views.SLOT_EXAMPLE),
)
def read_slot(slot_id: UUID, request: Request, session: SessionDep, caller: Reader) -> Response:
    """The chair an appointment holds (the Slot's id is the appointment's); a cancelled one holds none
    (404)."""
    appointment = _appointment(session, slot_id, caller)
    if appointment.state not in FHIR_SLOT_STATUS:
        raise problems.ProblemError(404, "no such slot")
    return fhir.read_response(request, slot_view(session, appointment))


@router.get(
    "/Slot",
    summary="Search booked chairs (FHIR Slot)",
    responses={**fhir.documented(fhir.searchset_example(views.SLOT_EXAMPLE)), **problems.documented(404)},
)
def search_slots(request: Request, session: SessionDep, caller: Reader) -> Response:
    """Booked chairs by `schedule` (Schedule/<site>: a site the caller may not see, or none, is 404),
    `status` (busy-tentative, busy, busy-unavailable), `start` (FHIR's prefixes, eq by default; a value
    without an offset is site-local: `ge2026-12-01&start=lt2027-01-01`) or `_id`, by start; `_count` a
    page with a `next` link."""
    search = fhir.search_request(request, {p.name for p in fhir_search.SLOT_PARAMETERS})
    schedule = search.first("schedule")
    if schedule is not None:
        _site(session, schedule.rpartition("/")[2], caller)
    wanted = fhir_search.slot_search(session, caller.site_scope, search)
    return _searchset(request, session, search, wanted, "Slot", slot_view)


@router.get(
    "/Schedule/{site_id}",
    summary="Read a site's schedule (FHIR)",
    responses=fhir.documented(views.SCHEDULE_EXAMPLE),
)
def read_schedule(site_id: SiteId, request: Request, session: SessionDep, caller: Reader) -> Response:
    """A site's infusion chairs: how many a day, on which weekdays, in which time zone."""
    site = _site(session, site_id, caller)
    return fhir.read_response(request, views.schedule_resource(site, commands.calendar_of(site)))


@router.get(
    "/Schedule",
    summary="Search sites' schedules (FHIR)",
    responses=fhir.documented(fhir.searchset_example(views.SCHEDULE_EXAMPLE)),
)
def search_schedules(request: Request, session: SessionDep, caller: Reader) -> Response:
    """The schedules of the sites the caller may see, by `actor` (Location/<site>) or `_id`."""
    search = fhir.search_request(request, {p.name for p in fhir_search.SCHEDULE_PARAMETERS})
    actor, site_id = search.first("actor"), search.first("_id")
    wanted = site_id or (actor.rpartition("/")[2] if actor else None)
    sites = fhir_search.visible_sites(session, caller.site_scope, wanted)
    page, cursor = page_list(sites, lambda site: (site.id,), fhir.page_of_search(search))
    resources = [views.schedule_resource(site, commands.calendar_of(site)) for site in page]
    return fhir.FhirJSONResponse(
        fhir.searchset(request, "Schedule", resources, search, total=len(sites), next_cursor=cursor)
    )


@router.get(
    "/Location/{site_id}",
    summary="Read a treatment center (FHIR Location)",
    responses=fhir.documented(views.LOCATION_EXAMPLE),
)
def read_location(site_id: SiteId, request: Request, session: SessionDep, caller: Reader) -> Response:
    """A qualified treatment center by its id; a treatment center reads its own."""
    return fhir.read_response(request, views.location_resource(_site(session, site_id, caller)))


@router.get(
    "/Patient/{patient_ref}",
    summary="Read a patient (pseudonymous) as FHIR",
    responses=fhir.documented(views.PATIENT_EXAMPLE),
)
def read_patient(patient_ref: SiteId, request: Request, session: SessionDep, caller: Reader) -> Response:
    """The patient an appointment names, by the pseudonymous reference and nothing else (scheduling
    holds no identity). Only a caller who may see one of the patient's cases reads it (404 otherwise)."""
    query = select(Case).where(Case.patient_ref == patient_ref).order_by(col(Case.created_at).desc())
    if caller.site_scope is not None:
        query = query.where(Case.treatment_center_id == caller.site_scope)
    case = session.exec(query.limit(1)).first()
    if case is None:
        raise problems.ProblemError(404, "no such patient")
    return fhir.read_response(request, fhir.patient_resource(patient_ref, case.created_at))
