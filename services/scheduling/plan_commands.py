"""Vein-to-vein plans' use cases: offer a case's earliest plans, book one as a whole. The rules are
`domain.earliest_plans` and `domain.plan_problems`; this loads the calendars and what is booked, and
applies the decision in the caller's transaction."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import utc_now
from sqlmodel import Session, col, select, update

from services.scheduling import commands, domain
from services.scheduling.domain import IsoWeek, PlanState, StartingMaterial
from services.scheduling.models import (
    Case,
    CasePlan,
    CollectionCenter,
    ManufacturingCapacity,
    ManufacturingSite,
    Site,
    TherapyProtocol,
)

log = structlog.get_logger()
LEAD_DAYS = 1
"""A collection is planned from the collection center's next day on, never for today."""
MAX_PLANS = 10


class UnknownPlan(Exception):
    """No such plan for this case (HTTP 404)."""


def _days(text: str) -> frozenset[date]:
    return frozenset(date.fromisoformat(d) for d in text.split(",") if d)


def _weekdays(text: str) -> frozenset[int]:
    return frozenset(int(d) for d in text.split(",") if d)


def collection_calendar_of(center: CollectionCenter) -> domain.CollectionCalendar:
    return domain.CollectionCalendar(
        timezone=center.timezone,
        chairs_per_day=center.chairs_per_day,
        working_weekdays=_weekdays(center.working_weekdays),
        blackout_dates=_days(center.blackout_dates),
    )


def manufacturing_calendar_of(
    site: ManufacturingSite, capacity: ManufacturingCapacity
) -> domain.ManufacturingCalendar:
    return domain.ManufacturingCalendar(
        site_id=site.id,
        timezone=site.timezone,
        slots_per_week=capacity.slots_per_week,
        blackout_weeks=frozenset(IsoWeek.parse(w) for w in site.blackout_weeks.split(",") if w),
    )


def manufacturing_protocol_of(protocol: TherapyProtocol | None) -> domain.ManufacturingProtocol | None:
    """The therapy's manufacturing protocol, or None while any of its figures is missing."""
    if protocol is None:
        return None
    figures = (
        protocol.manufacturing_days,
        protocol.starting_material,
        protocol.outbound_transit_hours,
        protocol.max_fresh_transit_hours,
        protocol.max_cryopreserved_age_days,
        protocol.return_transit_hours,
    )
    if any(figure is None for figure in figures):
        return None
    assert protocol.manufacturing_days is not None and protocol.starting_material is not None
    assert protocol.outbound_transit_hours is not None and protocol.max_fresh_transit_hours is not None
    assert protocol.max_cryopreserved_age_days is not None and protocol.return_transit_hours is not None
    return domain.ManufacturingProtocol(
        manufacturing_days=protocol.manufacturing_days,
        starting_material=StartingMaterial(protocol.starting_material),
        outbound_transit_hours=protocol.outbound_transit_hours,
        max_fresh_transit_hours=protocol.max_fresh_transit_hours,
        max_cryopreserved_age_days=protocol.max_cryopreserved_age_days,
        return_transit_hours=protocol.return_transit_hours,
    )


def network_of(session: Session, case: Case, *, default_buffer_hours: float) -> tuple[domain.Network, str]:
    """The case's collection center, the sites making its therapy, its treatment center and the therapy's
    protocol, and the collection center's id; refused with every missing piece."""
    site = session.get(Site, case.treatment_center_id)
    center_id = site.collection_center_id if site is not None else None
    center = session.get(CollectionCenter, center_id) if center_id is not None else None
    protocol = session.get(TherapyProtocol, case.therapy_code)
    manufacturing = manufacturing_protocol_of(protocol)
    sites = tuple(
        manufacturing_calendar_of(made_at, capacity)
        for capacity, made_at in session.exec(
            select(ManufacturingCapacity, ManufacturingSite)
            .where(ManufacturingCapacity.site_id == ManufacturingSite.id)
            .where(ManufacturingCapacity.therapy_code == case.therapy_code)
            .order_by(col(ManufacturingSite.id))
        )
    )
    missing: list[str] = []
    if center is None:
        missing.append(f"{case.treatment_center_id} has no collection center")
    if manufacturing is None:
        missing.append(f"{case.therapy_code} has no manufacturing protocol")
    if not sites:
        missing.append(f"no manufacturing site makes {case.therapy_code}")
    if missing:
        raise commands.Refused(missing)
    assert center is not None and manufacturing is not None
    network = domain.Network(
        collection=collection_calendar_of(center),
        manufacturing=sites,
        infusion=commands.calendar_of(site),
        protocol=manufacturing,
        conditioning_days=commands.conditioning_days(session, case),
        receipt_buffer_hours=commands.receipt_buffer(session, case, default_buffer_hours),
    )
    return network, center.id


def plan_load(
    session: Session, case: Case, network: domain.Network, collection_center_id: str
) -> domain.PlanLoad:
    """What the booked plans hold: collections at the collection center, the therapy's manufacturing slots
    at each of its sites; and the treatment center's infusion appointments."""
    booked = select(CasePlan).where(CasePlan.state == PlanState.BOOKED)
    collections: Counter[date] = Counter(
        plan.collection_on
        for plan in session.exec(booked.where(CasePlan.collection_center_id == collection_center_id))
    )
    sites = [s.site_id for s in network.manufacturing]
    slots: Counter[tuple[str, IsoWeek]] = Counter(
        (plan.manufacturing_site_id, IsoWeek.parse(plan.manufacturing_week))
        for plan in session.exec(
            booked.where(CasePlan.therapy_code == case.therapy_code).where(
                col(CasePlan.manufacturing_site_id).in_(sites)
            )
        )
    )
    return domain.PlanLoad(collections, slots, commands.load_of(session, case.treatment_center_id))


def earliest_collection_on(network: domain.Network, now: datetime) -> date:
    return domain.site_today(now, network.collection.timezone) + timedelta(days=LEAD_DAYS)


def booked_plan(session: Session, coi: str) -> CasePlan | None:
    return session.exec(
        select(CasePlan).where(CasePlan.coi == coi).where(CasePlan.state == PlanState.BOOKED)
    ).first()


def _withdraw_offered(session: Session, coi: str) -> None:
    session.exec(
        update(CasePlan)
        .where(col(CasePlan.coi) == coi)
        .where(col(CasePlan.state) == PlanState.OFFERED)
        .values(state=PlanState.WITHDRAWN)
    )


def _case_problems(session: Session, case: Case) -> list[str]:
    if case.cancelled:
        return ["the order was cancelled"]
    if booked_plan(session, case.coi) is not None:
        return ["this case already has a booked plan"]
    if commands.open_appointment(session, case.coi) is not None:
        return ["this case already has an infusion appointment: cancel it to plan the whole chain"]
    return []


def offer_plans(session: Session, case: Case, *, count: int, default_buffer_hours: float) -> list[CasePlan]:
    """The case's earliest `count` plans, replacing those offered before; none is held until booked."""
    refused = _case_problems(session, case)
    if refused:
        raise commands.Refused(refused)
    network, center_id = network_of(session, case, default_buffer_hours=default_buffer_hours)
    plans = domain.earliest_plans(
        network=network,
        load=plan_load(session, case, network, center_id),
        earliest_collection_on=earliest_collection_on(network, utc_now()),
        count=min(count, MAX_PLANS),
    )
    _withdraw_offered(session, case.coi)
    rows = [_row(case, center_id, plan) for plan in plans]
    for row in rows:
        session.add(row)
    return rows


def _row(case: Case, center_id: str, plan: domain.Plan) -> CasePlan:
    return CasePlan(
        coi=case.coi,
        therapy_code=case.therapy_code,
        collection_center_id=center_id,
        collection_on=plan.collection_on,
        collected_at=plan.collected_at,
        manufacturing_site_id=plan.manufacturing_site_id,
        manufacturing_week=str(plan.manufacturing_week),
        manufacturing_start_at=plan.manufacturing_start_at,
        manufacturing_start_on=plan.manufacturing_start_on,
        released_at=plan.released_at,
        release_on=plan.release_on,
        eta_at=plan.eta_at,
        treatment_center_id=case.treatment_center_id,
        conditioning_start_on=plan.infusion.conditioning_start_on,
        infusion_on=plan.infusion.infusion_on,
    )


def plan_of(row: CasePlan) -> domain.Plan:
    return domain.Plan(
        collection_on=row.collection_on,
        collected_at=row.collected_at,
        manufacturing_site_id=row.manufacturing_site_id,
        manufacturing_week=IsoWeek.parse(row.manufacturing_week),
        manufacturing_start_at=row.manufacturing_start_at,
        manufacturing_start_on=row.manufacturing_start_on,
        released_at=row.released_at,
        release_on=row.release_on,
        eta_at=row.eta_at,
        infusion=domain.SlotOption(row.conditioning_start_on, row.infusion_on),
    )


def lock_manufacturing_site(session: Session, site_id: str) -> None:
    """Serialise plans booked at one manufacturing site: the UPDATE takes the row lock (PostgreSQL) or the
    write lock (SQLite) before its slots are counted, so two coordinators never take the same last slot."""
    session.exec(
        update(ManufacturingSite)
        .where(col(ManufacturingSite.id) == site_id)
        .values(booking_version=ManufacturingSite.booking_version + 1)
    )


def lock_collection_center(session: Session, center_id: str) -> None:
    """Serialise plans booked at one collection center, as `lock_manufacturing_site` does."""
    session.exec(
        update(CollectionCenter)
        .where(col(CollectionCenter.id) == center_id)
        .values(booking_version=CollectionCenter.booking_version + 1)
    )


def book_plan(
    session: Session,
    case: Case,
    plan_id: UUID,
    *,
    booked_by: str,
    default_buffer_hours: float,
    correlation_id: str,
) -> CasePlan:
    """Hold every leg of one offered plan at once, or none: under the manufacturing site's lock first (no
    collection without a manufacturing slot), then the collection center's, then the treatment center's
    (always in this order), every leg is judged again on what is booked now; the infusion leg becomes a
    tentative appointment (`commands.book`: `slot.proposed` to the site). Refused with every reason."""
    row = session.get(CasePlan, plan_id)
    if row is None or row.coi != case.coi:
        raise UnknownPlan(plan_id)
    lock_manufacturing_site(session, row.manufacturing_site_id)
    lock_collection_center(session, row.collection_center_id)
    commands.lock_case(session, case)
    session.refresh(row)
    if row.state is not PlanState.OFFERED:
        raise commands.Refused([f"the plan is {row.state}: ask for plans again"])
    refused = _case_problems(session, case)
    if refused:
        raise commands.Refused(refused)
    network, center_id = network_of(session, case, default_buffer_hours=default_buffer_hours)
    if center_id != row.collection_center_id:
        raise commands.Refused([f"{case.treatment_center_id}'s collection center is now {center_id}"])
    problems = domain.plan_problems(
        plan_of(row),
        network=network,
        load=plan_load(session, case, network, center_id),
        earliest_collection_on=earliest_collection_on(network, utc_now()),
    )
    if problems:
        raise commands.Refused(problems)
    try:
        appointment = commands.book(
            session,
            case,
            domain.SlotOption(row.conditioning_start_on, row.infusion_on),
            booked_by=booked_by,
            default_buffer_hours=default_buffer_hours,
            correlation_id=correlation_id,
        )
    except commands.Invalid as invalid:  # the plan names no field of the request: its state is wrong
        raise commands.Refused([invalid.detail]) from invalid
    _withdraw_offered(session, case.coi)
    row.state, row.appointment_id = PlanState.BOOKED, appointment.id
    row.booked_at, row.booked_by = utc_now(), booked_by
    session.add(row)
    return row


REOPENED = "manufacturing failed: new plans offered for the next collection, book one"
NO_PLAN_FITS = "manufacturing failed: no plan fits the horizon for the next collection, call the sites"


def reopen_after_lot_failure(session: Session, case: Case, *, default_buffer_hours: float) -> list[CasePlan]:
    """A planned case whose lot failed (its plans already withdrawn by `commands.lot_failed`) is offered
    new chains at once, from the collection center's next day on, for the next collection under the same
    COI; a coordinator books one. Nothing is offered when the network no longer plans the case (the
    worklist keeps the failure's own item then)."""
    try:
        rows = offer_plans(session, case, count=3, default_buffer_hours=default_buffer_hours)
    except commands.Refused as refused:
        log.warning("scheduling.plans_not_reopened", coi=case.coi, reasons=len(refused.reasons))
        return []
    commands.flag(session, case, REOPENED if rows else NO_PLAN_FITS)
    return rows
