"""The planning network's use cases: coordinators set collection centers' and manufacturing sites'
calendars, a therapy's manufacturing protocol and a treatment center's collection center. A calendar is
replaced whole, under the same site lock plans are booked under, and refused when it would strand a
booked plan (`domain.collection_calendar_conflicts`, `domain.manufacturing_calendar_conflicts`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

from cgt_contracts.envelope import utc_now
from sqlmodel import Session, col, select

from services.scheduling import commands, domain, plan_commands
from services.scheduling.domain import IsoWeek, PlanState
from services.scheduling.models import (
    CasePlan,
    CollectionCenter,
    ManufacturingCapacity,
    ManufacturingSite,
    Site,
    TherapyProtocol,
)


class UnknownCollectionCenter(Exception):
    """No such collection center (HTTP 422 on the field naming it)."""


@dataclass(frozen=True)
class CollectionCenterCalendar:
    timezone: str
    chairs_per_day: int
    working_weekdays: frozenset[int]
    blackout_dates: frozenset[date]


@dataclass(frozen=True)
class ManufacturingSiteCalendar:
    timezone: str
    blackout_weeks: frozenset[IsoWeek]
    slots_per_week: dict[str, int]
    """By therapy code; a therapy not listed is not made here."""


def _joined(values: frozenset[int] | frozenset[date] | frozenset[IsoWeek]) -> str:
    return ",".join(str(v) for v in sorted(values, key=str))


def set_collection_center(
    session: Session, center_id: str, calendar: CollectionCenterCalendar
) -> CollectionCenter:
    """Create or replace a collection center's calendar; refused with every booked collection from the
    center's today on that it would strand."""
    center = session.get(CollectionCenter, center_id)
    if center is None:
        center = CollectionCenter(id=center_id, timezone=calendar.timezone)
        session.add(center)
        session.flush()
    plan_commands.lock_collection_center(session, center_id)
    today = domain.site_today(utc_now(), calendar.timezone)
    booked: Counter[date] = Counter(
        plan.collection_on
        for plan in session.exec(
            select(CasePlan)
            .where(CasePlan.state == PlanState.BOOKED)
            .where(CasePlan.collection_center_id == center_id)
            .where(col(CasePlan.collection_on) >= today)
        )
    )
    problems = domain.collection_calendar_conflicts(
        domain.CollectionCalendar(
            timezone=calendar.timezone,
            chairs_per_day=calendar.chairs_per_day,
            working_weekdays=calendar.working_weekdays,
            blackout_dates=calendar.blackout_dates,
        ),
        booked,
    )
    if problems:
        raise commands.Refused(problems)
    center.timezone, center.chairs_per_day = calendar.timezone, calendar.chairs_per_day
    center.working_weekdays = _joined(calendar.working_weekdays)
    center.blackout_dates = _joined(calendar.blackout_dates)
    session.add(center)
    return center


def capacities_of(session: Session, site_id: str) -> list[ManufacturingCapacity]:
    return list(
        session.exec(
            select(ManufacturingCapacity)
            .where(ManufacturingCapacity.site_id == site_id)
            .order_by(col(ManufacturingCapacity.therapy_code))
        )
    )


def set_manufacturing_site(
    session: Session, site_id: str, calendar: ManufacturingSiteCalendar
) -> ManufacturingSite:
    """Create or replace a manufacturing site's blackout weeks and slots per therapy; refused with every
    booked slot from the site's current week on that it would strand."""
    site = session.get(ManufacturingSite, site_id)
    if site is None:
        site = ManufacturingSite(id=site_id, timezone=calendar.timezone)
        session.add(site)
        session.flush()
    plan_commands.lock_manufacturing_site(session, site_id)
    this_week = IsoWeek.of(domain.site_today(utc_now(), calendar.timezone))
    booked: Counter[tuple[str, IsoWeek]] = Counter()
    for plan in session.exec(
        select(CasePlan)
        .where(CasePlan.state == PlanState.BOOKED)
        .where(CasePlan.manufacturing_site_id == site_id)
    ):
        week = IsoWeek.parse(plan.manufacturing_week)
        if (week.year, week.week) >= (this_week.year, this_week.week):
            booked[(plan.therapy_code, week)] += 1
    problems = domain.manufacturing_calendar_conflicts(
        calendar.blackout_weeks, calendar.slots_per_week, booked
    )
    if problems:
        raise commands.Refused(problems)
    site.timezone = calendar.timezone
    site.blackout_weeks = _joined(calendar.blackout_weeks)
    session.add(site)
    for capacity in capacities_of(session, site_id):
        if capacity.therapy_code not in calendar.slots_per_week:
            session.delete(capacity)
    for therapy, slots in calendar.slots_per_week.items():
        row = session.get(ManufacturingCapacity, (site_id, therapy)) or ManufacturingCapacity(
            site_id=site_id, therapy_code=therapy, slots_per_week=slots
        )
        row.slots_per_week = slots
        session.add(row)
    return site


def set_manufacturing_protocol(
    session: Session, therapy_code: str, protocol: domain.ManufacturingProtocol
) -> TherapyProtocol:
    """Set a therapy's manufacturing time and starting-material limits, beside its scheduling protocol
    (conditioning), which must exist first. Plans offered from then on follow it; booked plans keep what
    they were booked with."""
    row = session.get(TherapyProtocol, therapy_code)
    if row is None:
        raise commands.Refused([f"{therapy_code} has no scheduling protocol: set its conditioning first"])
    row.manufacturing_days = protocol.manufacturing_days
    row.starting_material = protocol.starting_material.value
    row.outbound_transit_hours = protocol.outbound_transit_hours
    row.max_fresh_transit_hours = protocol.max_fresh_transit_hours
    row.max_cryopreserved_age_days = protocol.max_cryopreserved_age_days
    row.return_transit_hours = protocol.return_transit_hours
    session.add(row)
    return row


def set_collection_center_of(session: Session, site: Site, center_id: str | None) -> Site:
    """Where a treatment center's patients are collected (None: nowhere yet, so its cases are not planned).
    Booked plans keep the center they were booked at."""
    if center_id is not None and session.get(CollectionCenter, center_id) is None:
        raise UnknownCollectionCenter(center_id)
    site.collection_center_id = center_id
    session.add(site)
    return site
