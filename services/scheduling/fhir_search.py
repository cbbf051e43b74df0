"""FHIR searches over scheduling's tables: which appointments a `Slot` or `Appointment` search matches,
filtered and paged in the database (one query per page, on the indexed `infusion_on`).

A Slot (and an Appointment) starts when the infusion chair is booked: `fhir.INFUSION_CHAIR`'s start, on
the infusion day, site-local. So a date-time comparison on `start` (`date` for an Appointment) is a
comparison of `infusion_on` with a day: an instant at or before the chair's start on day d is matched
from d on, one after it from d + 1 on (`first_chair_day`). A value without a UTC offset is read in the
site's time zone, where a site's schedule is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select

from services.common import fhir
from services.common.paging import PageRequest, page_of
from services.common.problems import invalid
from services.common.scope import visible_to
from services.scheduling.domain import FHIR_APPOINTMENT_STATUS, FHIR_SLOT_STATUS, AppointmentState
from services.scheduling.fhir import INFUSION_CHAIR
from services.scheduling.models import Appointment, Case, Site

SLOT_PARAMETERS = (
    fhir.SearchParameter("schedule", "reference", "Schedule/<site id>: one site's chairs"),
    fhir.SearchParameter("status", "token", "busy-tentative | busy | busy-unavailable (comma: any of)"),
    fhir.SearchParameter("start", "date", "The chair's start: eq (default), ne, gt, lt, ge, le, sa, eb"),
    fhir.SearchParameter("_id", "token", "The slot's id (its appointment's)"),
)
APPOINTMENT_PARAMETERS = (
    fhir.SearchParameter("patient", "reference", "Patient/<patient_ref>: the pseudonymous reference"),
    fhir.SearchParameter("actor", "reference", "Location/<site id> (or Patient/<patient_ref>)"),
    fhir.SearchParameter("status", "token", "pending | booked | fulfilled | cancelled (comma: any of)"),
    fhir.SearchParameter("date", "date", "The appointment's start, with the prefixes of `Slot.start`"),
    fhir.SearchParameter("identifier", "token", f"The COI identifier ({fhir.COI_SYSTEM}|<coi>)"),
    fhir.SearchParameter("_id", "token", "The appointment's id"),
)
SCHEDULE_PARAMETERS = (
    fhir.SearchParameter("actor", "reference", "Location/<site id>"),
    fhir.SearchParameter("_id", "token", "The site's id"),
)


def first_chair_day(instant: datetime, zone: ZoneInfo) -> date:
    """The first infusion day whose chair starts at or after `instant` (naive: site-local)."""
    local = instant.astimezone(zone) if instant.tzinfo is not None else instant
    return local.date() if local.time() <= INFUSION_CHAIR[0] else local.date() + timedelta(days=1)


def chair_day_ranges(
    ranges: Sequence[tuple[datetime | None, datetime | None]], zone: ZoneInfo
) -> list[tuple[date | None, date | None]]:
    """A date parameter's instant ranges `[start, end)` as ranges of infusion days `[first, last)`."""
    return [
        (
            None if start is None else first_chair_day(start, zone),
            None if end is None else first_chair_day(end, zone),
        )
        for start, end in ranges
    ]


@dataclass(frozen=True)
class Wanted:
    """What a search narrows to (None: not narrowed)."""

    sites: list[Site]
    states: set[AppointmentState] | None = None
    dates: list[fhir.DateRanges] | None = None
    appointment_id: UUID | None = None
    coi: str | None = None
    patient_ref: str | None = None


def _reference(value: str | None, resource_type: str, name: str) -> str | None:
    """`Location/TC-BOSTON` (or the bare id) → `TC-BOSTON`; another type is 422 naming the parameter."""
    if value is None:
        return None
    kind, _, identifier = value.rpartition("/")
    if kind and kind.rsplit("/", 1)[-1] != resource_type:
        raise invalid("query", name, f"a reference to a {resource_type}")
    return identifier


def _states(value: str | None, codes: dict[AppointmentState, str], name: str) -> set[AppointmentState] | None:
    if value is None:
        return None
    wanted = set(value.split(","))
    unknown = wanted - set(codes.values())
    if unknown:
        raise invalid("query", name, f"one of {', '.join(sorted(set(codes.values())))}")
    return {state for state, code in codes.items() if code in wanted}


def _uuid(value: str | None, name: str) -> UUID | None:
    try:
        return None if value is None else UUID(value)
    except ValueError:
        raise invalid("query", name, "an id this service gave") from None


def visible_sites(session: Session, scope: str | None, site_id: str | None) -> list[Site]:
    """The sites a search may cover: the caller's, narrowed to `site_id` when given."""
    query = select(Site)
    if site_id is not None:
        query = query.where(Site.id == site_id)
    return [site for site in session.exec(query.order_by(col(Site.id))) if visible_to(scope, site.id)]


def slot_search(session: Session, scope: str | None, search: fhir.SearchRequest) -> Wanted:
    site_id = _reference(search.first("schedule"), "Schedule", "schedule")
    return Wanted(
        sites=visible_sites(session, scope, site_id),
        # a cancelled appointment holds no chair: it has no Slot
        states=_states(search.first("status"), dict(FHIR_SLOT_STATUS), "status") or set(FHIR_SLOT_STATUS),
        dates=[fhir.date_parameter("start", value) for value in search.known.get("start", [])],
        appointment_id=_uuid(search.first("_id"), "_id"),
    )


def appointment_search(session: Session, scope: str | None, search: fhir.SearchRequest) -> Wanted:
    patient_ref = _reference(search.first("patient"), "Patient", "patient")
    actor = search.first("actor")
    site_id = None
    if actor is not None and actor.startswith("Patient/"):
        patient_ref = _reference(actor, "Patient", "actor")
    else:
        site_id = _reference(actor, "Location", "actor")
    identifier = search.first("identifier")
    return Wanted(
        sites=visible_sites(session, scope, site_id),
        states=_states(search.first("status"), dict(FHIR_APPOINTMENT_STATUS), "status"),
        dates=[fhir.date_parameter("date", value) for value in search.known.get("date", [])],
        appointment_id=_uuid(search.first("_id"), "_id"),
        coi=identifier.removeprefix(f"{fhir.COI_SYSTEM}|") if identifier else None,
        patient_ref=patient_ref,
    )


def _on_days(site: Site, dates: Sequence[fhir.DateRanges]) -> Any:
    """This site's appointments whose chair start matches every date parameter (each: any range)."""
    zone = ZoneInfo(site.timezone)
    day = col(Appointment.infusion_on)
    conditions: list[Any] = [Appointment.treatment_center_id == site.id]
    for parameter in dates:
        alternatives = [
            and_(
                *(c for c in ((day >= low) if low else None, (day < high) if high else None) if c is not None)
            )
            for low, high in chair_day_ranges(parameter.in_zone(zone), zone)
        ]
        conditions.append(or_(*alternatives))
    return and_(*conditions)


def _matching(wanted: Wanted) -> Any:
    query = select(Appointment).where(or_(*(_on_days(site, wanted.dates or []) for site in wanted.sites)))
    if wanted.states is not None:
        query = query.where(col(Appointment.state).in_(wanted.states))
    if wanted.appointment_id is not None:
        query = query.where(Appointment.id == wanted.appointment_id)
    if wanted.coi is not None:
        query = query.where(Appointment.coi == wanted.coi)
    if wanted.patient_ref is not None:
        cases = select(Case.coi).where(Case.patient_ref == wanted.patient_ref)
        query = query.where(col(Appointment.coi).in_(cases))
    return query


def find(session: Session, wanted: Wanted, page: PageRequest) -> tuple[list[Appointment], int, str | None]:
    """One page of the appointments `wanted` matches, by start (infusion day, then id), how many match in
    all (the Bundle's `total`), and the next page's cursor."""
    if not wanted.sites:
        return [], 0, None
    query = _matching(wanted)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows, cursor = page_of(
        session, query, Appointment, page, key=(col(Appointment.infusion_on), col(Appointment.id))
    )
    return rows, total, cursor
