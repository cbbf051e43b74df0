"""Vein-to-vein plans' use cases: offer a case's earliest plans, book one as a whole, record each leg as
its event confirms it, and re-plan the later legs when one slips (a collection postponed, a lot delayed,
the shipment delayed). The rules are `domain.earliest_plans`, `plan_problems` and the `replan_*`
decisions; this loads the calendars and what is booked, and applies the decision in the caller's
transaction."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import utc_now
from cgt_contracts.events import (
    CollectionPostponementCode,
    ManufacturingDelayCode,
    PlanReplanCause,
    PlanReplanned,
    PlanReplannedData,
    SlotReasonCode,
)
from sqlmodel import Session, col, select, update

from services.scheduling import commands, domain, webhook_commands
from services.scheduling.domain import ACTIVE_STATES, IsoWeek, PlanLeg, PlanState, RiskCause, StartingMaterial
from services.scheduling.models import (
    Appointment,
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
    session: Session,
    case: Case,
    network: domain.Network,
    collection_center_id: str,
    *,
    excluding: CasePlan | None = None,
) -> domain.PlanLoad:
    """What the booked plans hold: collections at the collection center, the therapy's manufacturing slots
    at each of its sites; and the treatment center's infusion appointments. `excluding`: a plan being
    re-planned, whose own collection, slot and appointment are not counted against it."""
    booked = select(CasePlan).where(CasePlan.state == PlanState.BOOKED)
    if excluding is not None:
        booked = booked.where(CasePlan.id != excluding.id)
        infusions = commands.load_of(session, case.treatment_center_id, excluding=excluding.appointment_id)
    else:
        infusions = commands.load_of(session, case.treatment_center_id)
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
    return domain.PlanLoad(collections, slots, infusions)


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


# ---------------------------------------------------------------- each leg confirmed by its event


LEG_DONE_AT = {
    PlanLeg.COLLECTION: "collection_done_at",
    PlanLeg.MANUFACTURING: "manufacturing_started_at",
    PlanLeg.RELEASE: "product_released_at",
    PlanLeg.DELIVERY: "product_delivered_at",
}
"""The `CasePlan` column each leg's event fills."""


def record_leg(session: Session, case: Case, leg: PlanLeg, at: datetime) -> CasePlan | None:
    """The case's booked plan records its leg done, once (a redelivered or later event leaves the first
    instant). A case without a booked plan has no leg to record. The caller holds the case's lock."""
    row = booked_plan(session, case.coi)
    if row is None or getattr(row, LEG_DONE_AT[leg]) is not None:
        return row
    setattr(row, LEG_DONE_AT[leg], at)
    session.add(row)
    log.info("scheduling.plan_leg_done", coi=case.coi, leg=leg.value)
    return row


def product_delivered(
    session: Session,
    case: Case,
    delivered_at: datetime,
    shipment_id: UUID,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """A clean delivery: the infusion is confirmed as always (`commands.product_delivered`, I4), and the
    booked plan's delivery leg is done."""
    commands.product_delivered(
        session, case, delivered_at, shipment_id, correlation_id=correlation_id, causation_id=causation_id
    )
    record_leg(session, case, PlanLeg.DELIVERY, delivered_at)


# ---------------------------------------------------------------- re-planning when a leg slips


def legs_of(row: CasePlan) -> domain.LegsDone:
    return domain.LegsDone(
        collection_done_at=row.collection_done_at,
        manufacturing_started_at=row.manufacturing_started_at,
        product_released_at=row.product_released_at,
        product_delivered_at=row.product_delivered_at,
    )


def _lock_plan_sites(session: Session, case: Case, row: CasePlan) -> None:
    """The locks `book_plan` takes, in its order: the manufacturing sites first (every site making the
    therapy, in id order, since a re-plan may move the slot to another), then the collection center, then
    the treatment center (`commands.lock_case`); the plan is read again under them."""
    sites = sorted(
        {
            row.manufacturing_site_id,
            *session.exec(
                select(ManufacturingCapacity.site_id).where(
                    ManufacturingCapacity.therapy_code == case.therapy_code
                )
            ),
        }
    )
    for site_id in sites:
        lock_manufacturing_site(session, site_id)
    lock_collection_center(session, row.collection_center_id)
    commands.lock_case(session, case)
    session.refresh(row)


def _apply(row: CasePlan, plan: domain.Plan) -> None:
    row.collection_on, row.collected_at = plan.collection_on, plan.collected_at
    row.manufacturing_site_id, row.manufacturing_week = (
        plan.manufacturing_site_id,
        str(plan.manufacturing_week),
    )
    row.manufacturing_start_at, row.manufacturing_start_on = (
        plan.manufacturing_start_at,
        plan.manufacturing_start_on,
    )
    row.released_at, row.release_on, row.eta_at = plan.released_at, plan.release_on, plan.eta_at
    row.conditioning_start_on = plan.infusion.conditioning_start_on
    row.infusion_on = plan.infusion.infusion_on


def _replanned(
    session: Session,
    row: CasePlan,
    cause: PlanReplanCause,
    reason_code: CollectionPostponementCode | ManufacturingDelayCode | SlotReasonCode,
    previous_infusion_on: date,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """Every site on the plan is told: `plan.replanned.v1` on scheduling's topic (the collection center
    and the manufacturing site read it there), and the treatment center by webhook too."""
    row.replanned_at, row.replan_cause = utc_now(), cause.value
    session.add(row)
    code = "delay" if isinstance(reason_code, SlotReasonCode) else reason_code
    data = PlanReplannedData(
        plan_id=row.id,
        coi=row.coi,
        cause=cause,
        reason_code=code,
        collection_center_id=row.collection_center_id,
        collection_on=row.collection_on,
        manufacturing_site_id=row.manufacturing_site_id,
        manufacturing_week=row.manufacturing_week,
        manufacturing_start_on=row.manufacturing_start_on,
        release_on=row.release_on,
        eta_at=row.eta_at,
        treatment_center_id=row.treatment_center_id,
        appointment_id=row.appointment_id,
        conditioning_start_on=row.conditioning_start_on,
        infusion_on=row.infusion_on,
        previous_infusion_on=previous_infusion_on,
        replanned_at=row.replanned_at,
    )
    envelope = {"source": commands.SOURCE, "subject": row.coi, "correlationid": correlation_id}
    commands.publish(session, PlanReplanned(**envelope, causationid=causation_id, data=data))
    if row.appointment_id is not None:
        # The treatment center gets the event's own data (codes only, never a note, I6).
        payload = {"kind": "plan.replanned", **data.model_dump(mode="json"), "sent_at": utc_now().isoformat()}
        webhook_commands.queue_deliveries(
            session,
            site=row.treatment_center_id,
            appointment_id=row.appointment_id,
            coi=row.coi,
            kind="plan.replanned",
            payload=json.dumps(payload, sort_keys=True),
        )
        appointment = session.get(Appointment, row.appointment_id)
        if appointment is not None:
            commands.notify_subscribers(session, appointment, "plan.replanned")
    log.info("scheduling.plan_replanned", coi=row.coi, cause=cause.value)


def _active_appointment(session: Session, row: CasePlan) -> Appointment | None:
    appointment = session.get(Appointment, row.appointment_id) if row.appointment_id else None
    return appointment if appointment is not None and appointment.state in ACTIVE_STATES else None


def postpone_collection(
    session: Session,
    case: Case,
    plan_id: UUID,
    collection_on: date,
    reason_code: CollectionPostponementCode,
    note: str | None,
    *,
    default_buffer_hours: float,
    correlation_id: str,
) -> CasePlan:
    """A coordinator moves a booked plan's collection to a later day: under `book_plan`'s locks, the
    collection center's calendar and every later leg are re-planned within capacity
    (`domain.replan_after_postponement`, the plan's own holdings not counted), the infusion appointment
    moved (`slot.rescheduled`), and every site told (`plan.replanned`). Refused with every reason (409),
    or naming `collection_on` (422); nothing changes then. The note stays with the plan."""
    row = session.get(CasePlan, plan_id)
    if row is None or row.coi != case.coi:
        raise UnknownPlan(plan_id)
    _lock_plan_sites(session, case, row)
    if row.state is not PlanState.BOOKED:
        raise commands.Refused([f"the plan is {row.state}: only a booked plan's collection is postponed"])
    if case.cancelled:
        raise commands.Refused(["the order was cancelled"])
    appointment = _active_appointment(session, row)
    if appointment is None:
        raise commands.Refused(["the plan's infusion appointment is no longer active: plan the case again"])
    network, center_id = network_of(session, case, default_buffer_hours=default_buffer_hours)
    if center_id != row.collection_center_id:
        raise commands.Refused([f"{case.treatment_center_id}'s collection center is now {center_id}"])
    plan = plan_of(row)
    commands.refuse(
        domain.postponement_problems(
            plan, legs_of(row), collection_on, earliest_collection_on(network, utc_now())
        )
    )
    decision = domain.replan_after_postponement(
        plan,
        collection_on,
        state=appointment.state,
        network=network,
        load=plan_load(session, case, network, center_id, excluding=row),
        now=utc_now(),
    )
    if isinstance(decision, list):
        raise commands.Refused(decision)
    previous_infusion_on = row.infusion_on
    _apply(row, decision.plan)
    row.postponement_reason_code, row.postponement_note = reason_code.value, note
    if decision.infusion_moved:
        commands.move(
            session,
            appointment,
            decision.plan.infusion,
            SlotReasonCode.DELAY,
            correlation_id=correlation_id,
            causation_id=None,
        )
    _replanned(
        session,
        row,
        PlanReplanCause.COLLECTION_POSTPONED,
        reason_code,
        previous_infusion_on,
        correlation_id=correlation_id,
        causation_id=None,
    )
    return row


MANUFACTURING_DELAYED = "manufacturing delayed"


def manufacturing_delayed(
    session: Session,
    case: Case,
    expected_release_on: date,
    reason_code: ManufacturingDelayCode,
    *,
    default_buffer_hours: float,
    correlation_id: str,
    causation_id: str | None,
) -> CasePlan | None:
    """A lot now expected on `expected_release_on` (the site's day): under `book_plan`'s locks, the
    booked plan's release and return follow, and its infusion (`domain.replan_after_release_delay`):
    moved within capacity (`slot.rescheduled`), or an alert (`slot.at_risk`) and the worklist when it
    cannot move; every site is told (`plan.replanned`). A release not later than planned, a product
    already released or a case without a booked plan changes nothing."""
    row = booked_plan(session, case.coi)
    if row is None:
        return None
    _lock_plan_sites(session, case, row)
    if row.state is not PlanState.BOOKED or case.cancelled or row.product_released_at is not None:
        return None
    try:
        network, _ = network_of(session, case, default_buffer_hours=default_buffer_hours)
    except commands.Refused as refused:
        commands.flag(session, case, f"{MANUFACTURING_DELAYED}: the plan cannot be re-planned ({refused})")
        return None
    made_at = session.get(ManufacturingSite, row.manufacturing_site_id)
    assert made_at is not None  # a booked plan's site is kept (its calendar changes are refused)
    site = domain.ManufacturingCalendar(made_at.id, made_at.timezone, 0, frozenset())
    released_at = domain.delayed_release_at(plan_of(row), expected_release_on, site)
    if released_at is None:
        return None
    appointment = _active_appointment(session, row)
    previous_infusion_on = row.infusion_on
    if appointment is None:
        row.released_at, row.release_on = released_at, site.local_day(released_at)
        row.eta_at = released_at + timedelta(hours=network.protocol.return_transit_hours)
        commands.flag(session, case, f"{MANUFACTURING_DELAYED}: the plan has no active infusion appointment")
    else:
        decision = domain.replan_after_release_delay(
            plan_of(row),
            released_at,
            state=appointment.state,
            network=network,
            site=site,
            now=utc_now(),
            load=commands.load_of(session, case.treatment_center_id, excluding=appointment.id),
        )
        _apply(row, decision.plan)
        if decision.infusion_moved:
            commands.move(
                session,
                appointment,
                decision.plan.infusion,
                SlotReasonCode.DELAY,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
        if decision.alert is not None:
            commands.raise_alert(
                session,
                appointment,
                RiskCause.DELAY,
                decision.alert,
                calendar=network.infusion,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
            commands.flag(session, case, f"{MANUFACTURING_DELAYED}: {decision.alert}")
    _replanned(
        session,
        row,
        PlanReplanCause.MANUFACTURING_DELAYED,
        reason_code,
        previous_infusion_on,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )
    return row


def shipment_delayed(
    session: Session,
    case: Case,
    eta_at: datetime,
    *,
    default_buffer_hours: float,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """The return shipment is delayed: the appointment follows its ETA as always (`commands.take_eta`:
    moved, or an alert), and the booked plan follows the shipment and the appointment; every site is
    told when a day changed. The caller holds the case's lock (only the treatment center's capacity is
    touched, and `take_eta` counts it under that lock)."""
    commands.take_eta(
        session,
        case,
        eta_at,
        default_buffer_hours=default_buffer_hours,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )
    row = booked_plan(session, case.coi)
    if row is None or case.eta_at is None:
        return
    previous = (row.eta_at, row.conditioning_start_on, row.infusion_on)
    row.eta_at = case.eta_at
    appointment = _active_appointment(session, row)
    if appointment is not None:
        row.conditioning_start_on, row.infusion_on = (
            appointment.conditioning_start_on,
            appointment.infusion_on,
        )
    if (row.eta_at, row.conditioning_start_on, row.infusion_on) == previous:
        return
    _replanned(
        session,
        row,
        PlanReplanCause.SHIPMENT_DELAYED,
        SlotReasonCode.DELAY,
        previous[2],
        correlation_id=correlation_id,
        causation_id=causation_id,
    )
