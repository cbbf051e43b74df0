"""Scheduling's use cases — taking an ETA, offering options, booking, confirming, holding, moving,
cancelling, alerting, recording infusion — each inside the caller's transaction with its events (outbox)
and its webhooks (delivery rows). The one path of the event handlers and the HTTP routes alike: load,
ask the domain, apply its decision, publish."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import (
    FollowUpVisitOverdue,
    FollowUpVisitOverdueData,
    InfusionRecorded,
    InfusionRecordedData,
    SlotAtRiskDataV2,
    SlotAtRiskV2,
    SlotCancelledV2,
    SlotChangedDataV2,
    SlotConfirmed,
    SlotConfirmedData,
    SlotHeldDataV2,
    SlotHeldV2,
    SlotOption,
    SlotOptionsOffered,
    SlotOptionsOfferedData,
    SlotProposed,
    SlotProposedData,
    SlotReasonCode,
    SlotRescheduledDataV2,
    SlotRescheduledV2,
    SlotResumedV2,
    SlotRiskCause,
)
from sqlmodel import Session, col, select, update

from services.common.outbox import enqueue
from services.common.paging import FIRST_PAGE, PageRequest, page_of
from services.common.scope import visible_to
from services.common.topics import SCHEDULING, SCHEDULING_SOURCE
from services.scheduling import domain, subscription_commands, webhook_commands
from services.scheduling.domain import ACTIVE_STATES, AppointmentState, RiskCause
from services.scheduling.models import (
    Appointment,
    Case,
    CasePlan,
    FollowUpVisit,
    OfferedOption,
    Site,
    SlotAlert,
    TherapyProtocol,
)

SOURCE = SCHEDULING_SOURCE
log = structlog.get_logger()
DEFAULT_CALENDAR = domain.SiteCalendar("UTC", 1, frozenset({1, 2, 3, 4, 5}), frozenset(), 1)


"""The most rows a list answers with."""


class Refused(Exception):
    """A command that breaks a scheduling rule (HTTP 409), with every reason."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class Invalid(Exception):
    """A request field the rules refuse (HTTP 422 naming the field): a date in the past, an option that
    is not offered."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field
        self.detail = detail


def refuse(problems: list[domain.RuleProblem]) -> None:
    """Raise for the domain's problems: those about the state first (409), else the first field's (422)."""
    conflicts = [p.detail for p in problems if p.field is None]
    if conflicts:
        raise Refused(conflicts)
    for problem in problems:
        assert problem.field is not None
        raise Invalid(problem.field, problem.detail)


def calendar_of(site: Site | None) -> domain.SiteCalendar:
    if site is None:
        return DEFAULT_CALENDAR
    return domain.SiteCalendar(
        timezone=site.timezone,
        infusions_per_day=site.infusions_per_day,
        working_weekdays=frozenset(int(d) for d in site.working_weekdays.split(",") if d),
        blackout_dates=frozenset(date.fromisoformat(d) for d in site.blackout_dates.split(",") if d),
        admissions_capacity=site.admissions_capacity,
    )


def load_of(session: Session, site_id: str, excluding: UUID | None = None) -> domain.Load:
    query = (
        select(Appointment)
        .where(Appointment.treatment_center_id == site_id)
        .where(col(Appointment.state).in_([s.value for s in ACTIVE_STATES]))
    )
    if excluding is not None:
        query = query.where(Appointment.id != excluding)
    return domain.Load.of(
        [domain.SlotOption(a.conditioning_start_on, a.infusion_on) for a in session.exec(query)]
    )


def chain_facts_of(case: Case) -> domain.ChainFacts:
    windows = None
    if case.site_qualifications is not None:
        windows = tuple(
            (date.fromisoformat(start), date.fromisoformat(end) if end else None)
            for start, end in json.loads(case.site_qualifications)
        )
    return domain.ChainFacts(windows, case.payer_authorization_expires_on)


def store_qualifications(case: Case, windows: list[tuple[date, date | None]]) -> None:
    case.site_qualifications = json.dumps(
        [[start.isoformat(), end.isoformat() if end else None] for start, end in windows]
    )


def receipt_buffer(session: Session, case: Case, default_hours: float) -> float:
    protocol = session.get(TherapyProtocol, case.therapy_code)
    return protocol.receipt_buffer_hours if protocol else default_hours


def conditioning_days(session: Session, case: Case) -> int:
    protocol = session.get(TherapyProtocol, case.therapy_code)
    return protocol.conditioning_days if protocol else case.conditioning_days


def specification_of(case: Case) -> domain.Specification:
    """The case's current lot as its release said (in specification when nothing was said)."""
    return domain.Specification(
        out_of_specification=bool(case.out_of_specification),
        code=case.oos_code,
        documents_required=tuple(d for d in (case.oos_documents_required or "").split(",") if d),
        file_complete=case.oos_file_completed_at is not None,
    )


# ---------------------------------------------------------------- reading, scoped


@dataclass(frozen=True)
class AppointmentFilter:
    """What `GET /appointments` narrows the list to; every filter given is applied."""

    coi: str | None = None
    treatment_center_id: str | None = None
    state: AppointmentState | None = None


def visible_case(session: Session, coi: str, scope: str | None) -> Case | None:
    """The case, if it exists and the caller's site scope covers it; else None, the same for both."""
    case = session.get(Case, coi)
    return case if case is not None and visible_to(scope, case.treatment_center_id) else None


def visible_appointment(session: Session, appointment_id: UUID, scope: str | None) -> Appointment | None:
    """The appointment, if it exists and the caller's site scope covers it; else None, the same for both."""
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or not visible_to(scope, appointment.treatment_center_id):
        return None
    return appointment


def visible_site(session: Session, site_id: str, scope: str | None) -> Site | None:
    """The site, if it exists and is the caller's (or the caller is not scoped); else None."""
    return session.get(Site, site_id) if visible_to(scope, site_id) else None


def visible_sites(session: Session, scope: str | None) -> list[Site]:
    """Every site with a calendar the caller may see, by id: a scoped caller's own (if it has a calendar)."""
    query = select(Site).order_by(col(Site.id))
    if scope is not None:
        query = query.where(Site.id == scope)
    return list(session.exec(query))


def find_appointments(
    session: Session, scope: str | None, wanted: AppointmentFilter, page: PageRequest = FIRST_PAGE
) -> tuple[list[Appointment], str | None]:
    """One page of appointments, oldest first, within the caller's scope and every filter given, and the
    next page's cursor: a scoped caller filtering on another site gets none, as if that site had none."""
    query = select(Appointment)
    if scope is not None:
        query = query.where(Appointment.treatment_center_id == scope)
    if wanted.treatment_center_id is not None:
        query = query.where(Appointment.treatment_center_id == wanted.treatment_center_id)
    if wanted.coi is not None:
        query = query.where(Appointment.coi == wanted.coi)
    if wanted.state is not None:
        query = query.where(Appointment.state == wanted.state)
    return page_of(session, query, Appointment, page)


def open_appointment(session: Session, coi: str) -> Appointment | None:
    return session.exec(
        select(Appointment)
        .where(Appointment.coi == coi)
        .where(col(Appointment.state).in_([s.value for s in ACTIVE_STATES]))
        .order_by(col(Appointment.created_at).desc())
    ).first()


def _envelope(coi: str, correlation_id: str, causation_id: str | None) -> dict[str, str | None]:
    return {"source": SOURCE, "subject": coi, "correlationid": correlation_id, "causationid": causation_id}


def _publish(session: Session, event: EventEnvelope) -> None:
    enqueue(session, SCHEDULING, event)


publish = _publish
"""Scheduling's outbox, for the plans' use cases (`plan_commands`)."""


def appointment_payload(
    appointment: Appointment, kind: str, reason_code: SlotReasonCode | None = None
) -> dict[str, object]:
    """What a treatment center receives: identifiers, dates and why as a code — never patient-identifying
    data, never a sentence or a note (I6: the site reads those, as far as it may, from the API)."""
    return {
        "kind": kind,
        "appointment_id": str(appointment.id),
        "version": appointment.version,
        "coi": appointment.coi,
        "treatment_center_id": appointment.treatment_center_id,
        "state": appointment.state.value,
        "fhir_status": domain.FHIR_APPOINTMENT_STATUS[appointment.state],
        "conditioning_start_on": appointment.conditioning_start_on.isoformat(),
        "infusion_on": appointment.infusion_on.isoformat(),
        "reason_code": reason_code.value if reason_code is not None else None,
        "out_of_specification": bool(appointment.out_of_specification),
        "sent_at": utc_now().isoformat(),
    }


def notify_site(
    session: Session, appointment: Appointment, kind: str, reason_code: SlotReasonCode | None = None
) -> None:
    """Queue a signed webhook to each of the site's endpoints, in the same transaction as the change."""
    payload = json.dumps(appointment_payload(appointment, kind, reason_code), sort_keys=True)
    webhook_commands.queue_deliveries(
        session,
        site=appointment.treatment_center_id,
        appointment_id=appointment.id,
        coi=appointment.coi,
        kind=kind,
        payload=payload,
    )
    notify_subscribers(session, appointment, kind)


def notify_subscribers(session: Session, appointment: Appointment, kind: str) -> None:
    """Queue a FHIR notification Bundle to each of the site's Subscriptions, with the webhooks."""
    calendar = calendar_of(session.get(Site, appointment.treatment_center_id))
    subscription_commands.queue_notifications(session, appointment, kind, calendar)


def _touch(session: Session, appointment: Appointment, state: AppointmentState | None = None) -> None:
    if state is not None:
        if not domain.can_move(appointment.state, state):
            raise Refused([f"an appointment that is {appointment.state} cannot become {state}"])
        appointment.state = state
    appointment.version += 1
    appointment.updated_at = utc_now()
    session.add(appointment)


def flag(session: Session, case: Case, attention: str | None) -> None:
    """Put the case on (or take it off) the coordinators' worklist."""
    case.attention = attention
    case.attention_since = utc_now() if attention else None
    session.add(case)


def offer_options(
    session: Session,
    case: Case,
    *,
    default_buffer_hours: float,
    correlation_id: str,
    causation_id: str | None,
) -> list[OfferedOption]:
    """Replace the case's offered options with the earliest feasible ones for its current ETA."""
    assert case.eta_at is not None and case.shipment_id is not None
    site = session.get(Site, case.treatment_center_id)
    options = domain.feasible_options(
        eta_at=case.eta_at,
        calendar=calendar_of(site),
        conditioning_days=conditioning_days(session, case),
        receipt_buffer_hours=receipt_buffer(session, case, default_buffer_hours),
        load=load_of(session, case.treatment_center_id),
    )
    withdraw_options(session, case)
    rows = [
        OfferedOption(coi=case.coi, conditioning_start_on=o.conditioning_start_on, infusion_on=o.infusion_on)
        for o in options
    ]
    for row in rows:
        session.add(row)
    _publish(
        session,
        SlotOptionsOffered(
            **_envelope(case.coi, correlation_id, causation_id),
            data=SlotOptionsOfferedData(
                coi=case.coi,
                treatment_center_id=case.treatment_center_id,
                shipment_id=case.shipment_id,
                eta_at=case.eta_at,
                options=[
                    SlotOption(
                        option_id=r.id,
                        conditioning_start_on=r.conditioning_start_on,
                        infusion_on=r.infusion_on,
                    )
                    for r in rows
                ],
            ),
        ),
    )
    if not rows and open_appointment(session, case.coi) is None:
        flag(session, case, "no feasible infusion option within 90 days: call the site")
    return rows


def withdraw_options(session: Session, case: Case) -> None:
    session.exec(update(OfferedOption).where(col(OfferedOption.coi) == case.coi).values(current=False))


def take_eta(
    session: Session,
    case: Case,
    eta_at: datetime,
    *,
    default_buffer_hours: float,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """A pick-up's or a delay's ETA. One that has passed is refused: no option is planned from it, the
    options offered are withdrawn and the case goes on the worklist with the reason. Otherwise an
    appointment follows it (`domain.on_eta_changed`) and the options are offered again. The caller holds
    the case's lock (`lock_case`), so capacity is counted under the site's lock."""
    refusal = domain.eta_refusal(eta_at, utc_now())
    if refusal is not None:
        log.warning("scheduling.eta_refused", coi=case.coi)
        withdraw_options(session, case)
        flag(session, case, refusal)
        return
    case.eta_at = eta_at
    flag(session, case, None)
    appointment = open_appointment(session, case.coi)
    if appointment is not None:
        _attach_shipment(appointment, case)
        _follow_eta(
            session,
            case,
            appointment,
            default_buffer_hours=default_buffer_hours,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
    offer_options(
        session,
        case,
        default_buffer_hours=default_buffer_hours,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )


def _attach_shipment(appointment: Appointment, case: Case) -> None:
    """An appointment booked before its product shipped (a plan's infusion leg) learns the return
    shipment once the case has one: it is the shipment whose delivery confirms it."""
    if appointment.shipment_id is None:
        appointment.shipment_id = case.shipment_id


def _follow_eta(
    session: Session,
    case: Case,
    appointment: Appointment,
    *,
    default_buffer_hours: float,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    assert case.eta_at is not None
    calendar = calendar_of(session.get(Site, case.treatment_center_id))
    decision = domain.on_eta_changed(
        state=appointment.state,
        booked=domain.SlotOption(appointment.conditioning_start_on, appointment.infusion_on),
        eta_at=case.eta_at,
        now=utc_now(),
        calendar=calendar,
        conditioning_days=conditioning_days(session, case),
        receipt_buffer_hours=receipt_buffer(session, case, default_buffer_hours),
        load=load_of(session, case.treatment_center_id, excluding=appointment.id),
    )
    if decision.move_to is not None:
        move(
            session,
            appointment,
            decision.move_to,
            SlotReasonCode.DELAY,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
    elif decision.alert is not None:
        raise_alert(
            session,
            appointment,
            RiskCause.DELAY,
            decision.alert,
            calendar=calendar,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )


def lock_site(session: Session, site_id: str) -> None:
    """Serialise bookings at one site: the UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite)
    before capacity is counted, so two coordinators can never both take the last chair."""
    session.exec(update(Site).where(col(Site.id) == site_id).values(booking_version=Site.booking_version + 1))


def lock_case(session: Session, case: Case) -> None:
    """Take the case's site lock, then read the case again. Bookings, a coordinator's cancellation or
    infusion, and the events that change a case (delivery, quarantine, release, rejection, delay,
    cancelled order) all do this first, so none acts on what it read before another one committed: a case
    is never booked twice, nor booked as unquarantined while a quarantine is being recorded."""
    session.flush()  # this transaction's own changes to the case first: it is read back below
    lock_site(session, case.treatment_center_id)
    session.refresh(case)


def lock_appointment(session: Session, appointment: Appointment, case: Case) -> None:
    """The appointment and its case under the case's lock, both read again: a coordinator's change is
    judged on what the last event committed (and an event's on what the coordinator committed)."""
    lock_case(session, case)
    session.refresh(appointment)


def choose_option(
    session: Session, case: Case, *, option_id: UUID | None, conditioning_start_on: date | None
) -> tuple[domain.SlotOption, str]:
    """The days a coordinator asks for, and the request field they came from: a current offered option
    of this case, or a conditioning start day (infusion after the therapy's conditioning days)."""
    if option_id is not None:
        offered = session.get(OfferedOption, option_id)
        if offered is None or offered.coi != case.coi or not offered.current:
            raise Invalid("option_id", "not a current option of this case")
        return domain.SlotOption(offered.conditioning_start_on, offered.infusion_on), "option_id"
    assert conditioning_start_on is not None
    days = conditioning_days(session, case)
    return (
        domain.SlotOption(conditioning_start_on, conditioning_start_on + timedelta(days=days)),
        "conditioning_start_on",
    )


def book(
    session: Session,
    case: Case,
    option: domain.SlotOption,
    *,
    booked_by: str,
    default_buffer_hours: float,
    correlation_id: str,
    field: str = "conditioning_start_on",
) -> Appointment:
    """Book a tentative appointment; confirm it at once if the product is already on site and clean.
    `field` names the request field the option came from, for a refusal about it."""
    lock_case(session, case)
    if case.cancelled:
        raise Refused(["the order was cancelled"])
    if open_appointment(session, case.coi) is not None:
        raise Refused(["this case already has an appointment: reschedule or cancel it"])
    site = session.get(Site, case.treatment_center_id)
    calendar = calendar_of(site)
    past = domain.start_in_the_past(option, utc_now(), calendar.timezone)
    if past is not None:
        raise Invalid(field, past)
    spec = specification_of(case)
    problems = domain.specification_problems(spec) + domain.booking_problems(
        option,
        eta_at=case.eta_at,
        dispatched=case.shipment_id is not None,
        receipt_buffer_hours=receipt_buffer(session, case, default_buffer_hours),
        calendar=calendar,
        load=load_of(session, case.treatment_center_id),
    )
    problems += [lapse.detail for lapse in domain.chain_lapses(chain_facts_of(case), option)]
    if problems:
        raise Refused(problems)
    appointment = Appointment(
        coi=case.coi,
        treatment_center_id=case.treatment_center_id,
        conditioning_start_on=option.conditioning_start_on,
        infusion_on=option.infusion_on,
        shipment_id=case.shipment_id,
        booked_by=booked_by,
        state=AppointmentState.ON_HOLD if case.quarantined else AppointmentState.TENTATIVE,
        hold_reason="the shipment is quarantined" if case.quarantined else None,
        hold_cause=RiskCause.QUARANTINE.value if case.quarantined else None,
        reason_code=SlotReasonCode.QUARANTINE.value if case.quarantined else None,
        out_of_specification=spec.out_of_specification,
    )
    session.add(appointment)
    flag(session, case, None)
    _publish(
        session,
        SlotProposed(
            **_envelope(case.coi, correlation_id, None),
            data=SlotProposedData(
                appointment_id=appointment.id,
                coi=case.coi,
                treatment_center_id=case.treatment_center_id,
                conditioning_start_on=option.conditioning_start_on,
                infusion_on=option.infusion_on,
            ),
        ),
    )
    notify_site(session, appointment, "slot.proposed")
    if case.product_delivered_at is not None:
        go_ahead(session, case, appointment, None, correlation_id=correlation_id, causation_id=None)
    return appointment


def reschedule(
    session: Session,
    appointment: Appointment,
    case: Case,
    option: domain.SlotOption,
    reason_code: SlotReasonCode,
    *,
    note: str | None = None,
    default_buffer_hours: float,
    correlation_id: str,
    field: str = "option_id",
) -> None:
    """A coordinator moves a tentative or held appointment to other days, checked as a booking is (under
    the same site lock: the chair and beds it leaves are not counted); the site is told the code, the
    note stays with the appointment."""
    lock_appointment(session, appointment, case)
    calendar = calendar_of(session.get(Site, case.treatment_center_id))
    current = domain.SlotOption(appointment.conditioning_start_on, appointment.infusion_on)
    conflicts = domain.reschedule_problems(appointment.state, current, option)
    if conflicts:
        raise Refused(conflicts)
    past = domain.start_in_the_past(option, utc_now(), calendar.timezone)
    if past is not None:
        raise Invalid(field, past)
    problems = domain.booking_problems(
        option,
        eta_at=case.eta_at,
        dispatched=case.shipment_id is not None,
        receipt_buffer_hours=receipt_buffer(session, case, default_buffer_hours),
        calendar=calendar,
        load=load_of(session, case.treatment_center_id, excluding=appointment.id),
    )
    problems += [lapse.detail for lapse in domain.chain_lapses(chain_facts_of(case), option)]
    if problems:
        raise Refused(problems)
    note_change(appointment, note)
    move(session, appointment, option, reason_code, correlation_id=correlation_id, causation_id=None)


def note_change(appointment: Appointment, note: str | None) -> None:
    """A coordinator's change: their note (or none) replaces the one of their previous change."""
    appointment.note = note


def move(
    session: Session,
    appointment: Appointment,
    option: domain.SlotOption,
    reason_code: SlotReasonCode,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """New days for the appointment, in the same state; `slot.rescheduled` (old and new days) to the site."""
    previous = (appointment.conditioning_start_on, appointment.infusion_on)
    appointment.conditioning_start_on, appointment.infusion_on = (
        option.conditioning_start_on,
        option.infusion_on,
    )
    appointment.reason_code = reason_code.value
    _touch(session, appointment)
    _publish(
        session,
        SlotRescheduledV2(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=SlotRescheduledDataV2(
                appointment_id=appointment.id,
                coi=appointment.coi,
                treatment_center_id=appointment.treatment_center_id,
                previous_conditioning_start_on=previous[0],
                previous_infusion_on=previous[1],
                conditioning_start_on=appointment.conditioning_start_on,
                infusion_on=appointment.infusion_on,
                reason_code=reason_code,
            ),
        ),
    )
    notify_site(session, appointment, "slot.rescheduled", reason_code)


def confirm(
    session: Session, appointment: Appointment, *, correlation_id: str, causation_id: str | None
) -> None:
    """I4: called only once the product is delivered, COI verified, temperature record clean (or released)."""
    _touch(session, appointment, AppointmentState.CONFIRMED)
    appointment.confirmed_at = utc_now()
    appointment.hold_reason = None
    appointment.hold_cause = None
    assert appointment.shipment_id is not None
    _publish(
        session,
        SlotConfirmed(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=SlotConfirmedData(
                appointment_id=appointment.id,
                coi=appointment.coi,
                treatment_center_id=appointment.treatment_center_id,
                conditioning_start_on=appointment.conditioning_start_on,
                infusion_on=appointment.infusion_on,
                shipment_id=appointment.shipment_id,
                confirmed_at=appointment.confirmed_at,
            ),
        ),
    )
    notify_site(session, appointment, "slot.confirmed")


def hold(
    session: Session,
    appointment: Appointment,
    reason: str,
    cause: RiskCause,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """On hold for `cause`: `reason` (scheduling's own words) stays with the appointment, the site is told
    the code. One already on hold is held again for the new cause (the site told the new code)."""
    held = appointment.state is AppointmentState.ON_HOLD
    _touch(session, appointment, None if held else AppointmentState.ON_HOLD)
    code = domain.reason_code_of(cause)
    appointment.hold_reason = reason
    appointment.hold_cause = cause.value
    appointment.reason_code = code.value
    _publish(
        session,
        SlotHeldV2(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=SlotHeldDataV2(
                appointment_id=appointment.id,
                coi=appointment.coi,
                treatment_center_id=appointment.treatment_center_id,
                reason_code=code,
                held_at=utc_now(),
            ),
        ),
    )
    notify_site(session, appointment, "slot.held", code)


def resume(
    session: Session,
    appointment: Appointment,
    reason_code: SlotReasonCode,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    _touch(session, appointment, AppointmentState.TENTATIVE)
    appointment.hold_reason = None
    appointment.hold_cause = None
    appointment.reason_code = reason_code.value
    _publish(
        session,
        SlotResumedV2(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=_changed(appointment, reason_code),
        ),
    )
    notify_site(session, appointment, "slot.resumed", reason_code)


def cancel(
    session: Session,
    appointment: Appointment,
    reason: str,
    reason_code: SlotReasonCode,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """Cancelled: `reason` (scheduling's own words) stays with the appointment, the site is told the code."""
    _touch(session, appointment, AppointmentState.CANCELLED)
    appointment.hold_reason = reason
    appointment.hold_cause = None
    appointment.reason_code = reason_code.value
    _publish(
        session,
        SlotCancelledV2(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=_changed(appointment, reason_code),
        ),
    )
    notify_site(session, appointment, "slot.cancelled", reason_code)


def cancel_by_coordinator(
    session: Session,
    appointment: Appointment,
    reason_code: SlotReasonCode,
    note: str | None,
    *,
    correlation_id: str,
) -> None:
    """A coordinator cancels, with a code and a note (kept with the appointment, never published)."""
    reason = f"cancelled by a coordinator ({reason_code})"
    cancel(session, appointment, reason, reason_code, correlation_id=correlation_id, causation_id=None)
    note_change(appointment, note)


def _changed(appointment: Appointment, reason_code: SlotReasonCode) -> SlotChangedDataV2:
    return SlotChangedDataV2(
        appointment_id=appointment.id,
        coi=appointment.coi,
        treatment_center_id=appointment.treatment_center_id,
        reason_code=reason_code,
        at=utc_now(),
    )


def product_delivered(
    session: Session,
    case: Case,
    delivered_at: datetime,
    shipment_id: UUID,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """The only way to confirm: a delivery with every COI verified and a clean (or QA-released) record
    (I4), and nothing else holding it (`go_ahead`). With no appointment yet, the case goes on the
    worklist to be booked."""
    case.product_delivered_at, case.quarantined = delivered_at, False
    case.shipment_id = shipment_id
    session.add(case)
    appointment = open_appointment(session, case.coi)
    if appointment is None:
        pending = specification_of(case).file_pending
        flag(
            session,
            case,
            OOS_FILE_PENDING if pending else "product delivered and verified: book the infusion",
        )
    else:
        go_ahead(session, case, appointment, None, correlation_id=correlation_id, causation_id=causation_id)


OOS_FILE_PENDING = "product delivered; its out-of-specification file is not complete in order intake"


def go_ahead(
    session: Session,
    case: Case,
    appointment: Appointment,
    resumed_with: SlotReasonCode | None,
    *,
    correlation_id: str,
    causation_id: str | None,
    confirms: bool = True,
) -> None:
    """Something that held the case went: a QA release, a completed out-of-specification file, a renewed
    permission (`resumed_with`, what the site is told), or the clean delivery itself (None). Whatever
    still holds it (`domain.still_holding`: a quarantine, a pending file, a lapsed qualification or
    authorization) keeps it: a held appointment stays held, under the cause that now holds it, and a
    delivered one is held instead of confirmed (the chain stops, on the worklist). Nothing left: a held
    appointment resumes, and one whose product is on site and clean is confirmed (I4) — but not by a QA
    release (`confirms=False`), whose own delivery event confirms. The caller holds the case's lock."""
    option = domain.SlotOption(appointment.conditioning_start_on, appointment.infusion_on)
    lapses = domain.chain_lapses(chain_facts_of(case), option)
    holding = domain.still_holding(case.quarantined, specification_of(case), lapses)
    delivered = case.product_delivered_at is not None
    if holding:
        held = appointment.state is AppointmentState.ON_HOLD
        if (held and not domain.held_for(appointment.hold_cause, holding)) or (delivered and not held):
            cause = holding[0]
            lapse = next((lapse for lapse in lapses if lapse.cause is cause), None)
            reason = lapse.detail if lapse else f"{cause}: the product may not be scheduled yet"
            hold(
                session, appointment, reason, cause, correlation_id=correlation_id, causation_id=causation_id
            )
        if lapses:
            log.warning(
                "scheduling.chain_lapsed", coi=case.coi, causes=[lapse.cause.value for lapse in lapses]
            )
            flag(session, case, domain.lapse_attention(lapses))
        elif delivered and RiskCause.OUT_OF_SPECIFICATION in holding:
            flag(session, case, OOS_FILE_PENDING)
        return
    if appointment.state is AppointmentState.ON_HOLD and resumed_with is not None:
        resume(session, appointment, resumed_with, correlation_id=correlation_id, causation_id=causation_id)
    if confirms and delivered and domain.can_move(appointment.state, AppointmentState.CONFIRMED):
        flag(session, case, None)
        _attach_shipment(appointment, case)
        confirm(session, appointment, correlation_id=correlation_id, causation_id=causation_id)


def chain_facts_changed(
    session: Session, case: Case, *, correlation_id: str, causation_id: str | None
) -> None:
    """Order intake published a qualification change or a renewed authorization (the case holds the new
    facts). An appointment held for a lapse goes on if nothing holds it any more (`go_ahead`: resumed
    with the renewal's code, confirmed if its product is on site and clean); otherwise the worklist says
    why now. The caller holds the case's lock."""
    appointment = open_appointment(session, case.coi)
    if (
        appointment is None
        or appointment.state is not AppointmentState.ON_HOLD
        or appointment.hold_cause not in domain.CHAIN_LAPSES
    ):
        return
    renewed = domain.RENEWED[domain.RiskCause(appointment.hold_cause)]
    go_ahead(session, case, appointment, renewed, correlation_id=correlation_id, causation_id=causation_id)
    if appointment.state is not AppointmentState.ON_HOLD and case.product_delivered_at is None:
        flag(session, case, None)


def product_released(session: Session, case: Case, *, correlation_id: str, causation_id: str | None) -> None:
    """A signed QA release lifts the quarantine's hold, unless something else still holds it (`go_ahead`);
    confirmation still waits for the delivery (I4)."""
    case.quarantined = False
    session.add(case)
    appointment = open_appointment(session, case.coi)
    if appointment is not None and appointment.state is AppointmentState.ON_HOLD:
        go_ahead(
            session,
            case,
            appointment,
            SlotReasonCode.QA_RELEASE,
            correlation_id=correlation_id,
            causation_id=causation_id,
            confirms=False,
        )


def product_at_risk(
    session: Session,
    case: Case,
    cause: RiskCause,
    reason: str,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> domain.RiskResponse | None:
    """A quarantine, excursion, COI break, QA rejection or cancelled order: the case records it and its
    appointment, whatever its state, does what `domain.on_product_at_risk` decides — held, cancelled,
    and an alert when the site may already act on it. The caller holds the case's lock."""
    if cause in domain.QUARANTINING:
        case.quarantined = True
    elif cause is RiskCause.ORDER_CANCELLED:
        case.cancelled = True
        withdraw_options(session, case)
        flag(session, case, None)
    elif cause is RiskCause.QA_REJECTION:
        flag(session, case, "product rejected by QA: plan with the manufacturer")
    elif cause is RiskCause.MANUFACTURING_FAILURE:
        _start_next_attempt(session, case)
    session.add(case)
    appointment = open_appointment(session, case.coi)
    if appointment is None:
        return None
    calendar = calendar_of(session.get(Site, case.treatment_center_id))
    started = domain.conditioning_may_have_started(
        appointment.conditioning_start_on, utc_now(), calendar.timezone
    )
    before = appointment.state
    response = domain.on_product_at_risk(before, started, cause)
    if response.move_to is AppointmentState.ON_HOLD:
        hold(session, appointment, reason, cause, correlation_id=correlation_id, causation_id=causation_id)
    elif response.move_to is AppointmentState.CANCELLED:
        cancel(
            session,
            appointment,
            reason,
            domain.reason_code_of(cause),
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
    if response.alert:
        detail = domain.alert_detail(
            reason, before, appointment.state, started, appointment.conditioning_start_on
        )
        raise_alert(
            session,
            appointment,
            cause,
            detail,
            calendar=calendar,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
    return response


def _start_next_attempt(session: Session, case: Case) -> None:
    """The lot failed: the case forgets the failed lot's shipment and ETA, its options and its plans
    (`domain.WITHDRAWN_BY_LOT_FAILURE`), and waits for the next lot: the new return leg's pick-up offers
    options again, or the case is planned again from its next collection."""
    case.shipment_id, case.eta_at, case.product_delivered_at, case.quarantined = None, None, None, False
    case.out_of_specification, case.oos_code, case.oos_documents_required = None, None, None
    case.oos_file_completed_at = None
    withdraw_options(session, case)
    session.exec(
        update(CasePlan)
        .where(col(CasePlan.coi) == case.coi)
        .where(col(CasePlan.state).in_([s.value for s in domain.WITHDRAWN_BY_LOT_FAILURE]))
        .values(state=domain.PlanState.WITHDRAWN)
    )
    flag(session, case, "manufacturing failed: record the new collection; book again when the new lot ships")


def lot_failed(
    session: Session, case: Case, code: str, *, correlation_id: str, causation_id: str | None
) -> domain.RiskResponse | None:
    """A failed lot (`manufacturing.failed`): its appointment is released as for any product that will
    never be infused (`domain.on_product_at_risk`: cancelled with `manufacturing_failure` and the site
    told; an alert if it was confirmed; an alert only once conditioning may have started), and the case
    waits for the next lot. The caller holds the case's lock."""
    return product_at_risk(
        session,
        case,
        RiskCause.MANUFACTURING_FAILURE,
        f"manufacturing failed ({code})",
        correlation_id=correlation_id,
        causation_id=causation_id,
    )


def product_released_for_shipment(
    session: Session,
    case: Case,
    spec: domain.Specification,
    *,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """The manufacturer released the case's product (`product.released_for_shipment`): scheduling keeps
    whether it is out of specification and what its file needs. A tentative appointment booked before
    (a plan's infusion leg) is held until the file is complete (`domain.held_on_release`); its
    appointment carries the flag. The caller holds the case's lock."""
    case.out_of_specification = spec.out_of_specification
    case.oos_code = spec.code
    case.oos_documents_required = ",".join(spec.documents_required) or None
    case.oos_file_completed_at = None
    session.add(case)
    appointment = open_appointment(session, case.coi)
    if appointment is None:
        return
    if bool(appointment.out_of_specification) != spec.out_of_specification:
        appointment.out_of_specification = spec.out_of_specification
        _touch(session, appointment)
    if domain.held_on_release(appointment.state, spec):
        reason = f"released out of specification ({spec.code}): its file is not complete"
        hold(
            session,
            appointment,
            reason,
            RiskCause.OUT_OF_SPECIFICATION,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )


def oos_file_completed(
    session: Session, case: Case, completed_at: datetime, *, correlation_id: str, causation_id: str | None
) -> None:
    """The out-of-specification file is complete in order intake: the product may be scheduled. An
    appointment goes on unless something else still holds it (`go_ahead`: resumed with
    `oos_file_complete`, confirmed at once if the product is already delivered clean, I4). The caller
    holds the case's lock."""
    if not case.out_of_specification or case.oos_file_completed_at is not None:
        return  # not this lot's, or already applied
    case.oos_file_completed_at = completed_at
    session.add(case)
    appointment = open_appointment(session, case.coi)
    if appointment is None:
        if case.product_delivered_at is not None:
            flag(session, case, "product delivered and verified: book the infusion")
        return
    go_ahead(
        session,
        case,
        appointment,
        SlotReasonCode.OOS_FILE_COMPLETE,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )


def raise_alert(
    session: Session,
    appointment: Appointment,
    cause: RiskCause,
    detail: str,
    *,
    calendar: domain.SiteCalendar,
    correlation_id: str,
    causation_id: str | None,
) -> SlotAlert:
    """An alert to the coordinators (on the worklist until one resolves it, with `detail`) and to the site
    (`slot.at_risk`, by event and by webhook: the cause and the appointment's state, not the detail)."""
    started = domain.conditioning_may_have_started(
        appointment.conditioning_start_on, utc_now(), calendar.timezone
    )
    alert = SlotAlert(
        appointment_id=appointment.id,
        coi=appointment.coi,
        treatment_center_id=appointment.treatment_center_id,
        cause=cause.value,
        detail=detail,
        conditioning_may_have_started=started,
    )
    session.add(alert)
    _publish(
        session,
        SlotAtRiskV2(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=SlotAtRiskDataV2(
                appointment_id=appointment.id,
                alert_id=alert.id,
                coi=appointment.coi,
                treatment_center_id=appointment.treatment_center_id,
                cause=SlotRiskCause(cause.value),
                appointment_state=appointment.state.value,
                conditioning_start_on=appointment.conditioning_start_on,
                infusion_on=appointment.infusion_on,
                conditioning_may_have_started=started,
                at=alert.raised_at,
            ),
        ),
    )
    notify_site(session, appointment, "slot.at_risk", domain.reason_code_of(cause))
    log.warning("scheduling.slot_at_risk", coi=appointment.coi, cause=cause.value)
    return alert


def resolve_alert(session: Session, alert: SlotAlert, resolution: str, *, resolved_by: str) -> None:
    """A coordinator has acted on the alert: it leaves the worklist, with who resolved it, when and how."""
    if alert.resolved_at is not None:
        raise Refused([f"the alert was already resolved by {alert.resolved_by}"])
    alert.resolved_at, alert.resolved_by, alert.resolution = utc_now(), resolved_by, resolution
    session.add(alert)


def record_infusion(
    session: Session, appointment: Appointment, case: Case, infused_on: date, *, correlation_id: str
) -> int:
    """Infusion done: the appointment is fulfilled and, for long-term follow-up therapies, the visits planned.
    The caller holds the case's lock (`lock_appointment`)."""
    calendar = calendar_of(session.get(Site, case.treatment_center_id))
    refuse(
        domain.infusion_problems(
            state=appointment.state,
            conditioning_start_on=appointment.conditioning_start_on,
            product_received_at=case.product_delivered_at,
            product_quarantined=case.quarantined,
            infused_on=infused_on,
            now=utc_now(),
            timezone=calendar.timezone,
        )
    )
    _touch(session, appointment, AppointmentState.INFUSED)
    appointment.infused_on = infused_on
    visits = domain.follow_up_schedule(infused_on) if case.long_term_follow_up else []
    for visit in visits:
        session.add(
            FollowUpVisit(
                coi=case.coi,
                treatment_center_id=case.treatment_center_id,
                number=visit.number,
                due_on=visit.due_on,
                window_start_on=visit.window_start,
                window_end_on=visit.window_end,
            )
        )
    _publish(
        session,
        InfusionRecorded(
            **_envelope(case.coi, correlation_id, None),
            data=InfusionRecordedData(
                appointment_id=appointment.id,
                coi=case.coi,
                treatment_center_id=case.treatment_center_id,
                infused_on=infused_on,
                follow_up_visits=len(visits),
            ),
        ),
    )
    notify_site(session, appointment, "infusion.recorded")
    return len(visits)


def publish_overdue_visits(session: Session, today: date, correlation_id: str) -> int:
    """Publish each overdue follow-up visit once; they stay on the worklist until completed."""
    overdue = session.exec(
        select(FollowUpVisit)
        .where(col(FollowUpVisit.window_end_on) < today)
        .where(col(FollowUpVisit.completed_on).is_(None))
        .where(col(FollowUpVisit.overdue_published_at).is_(None))
        .limit(500)
    ).all()
    for visit in overdue:
        visit.overdue_published_at = utc_now()
        session.add(visit)
        _publish(
            session,
            FollowUpVisitOverdue(
                **_envelope(visit.coi, correlation_id, None),
                data=FollowUpVisitOverdueData(
                    coi=visit.coi,
                    treatment_center_id=visit.treatment_center_id,
                    visit_number=visit.number,
                    due_on=visit.due_on,
                    window_end_on=visit.window_end_on,
                ),
            ),
        )
    return len(overdue)
