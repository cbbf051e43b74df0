"""Scheduling's state changes — offering options, booking, confirming, holding, moving, cancelling,
recording infusion — each inside the caller's transaction with its events (outbox) and its webhooks
(delivery rows). Shared by the event handlers and the HTTP routes."""

from __future__ import annotations

import json
from datetime import date, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import (
    FollowUpVisitOverdue,
    FollowUpVisitOverdueData,
    InfusionRecorded,
    InfusionRecordedData,
    SlotCancelled,
    SlotChangedData,
    SlotConfirmed,
    SlotConfirmedData,
    SlotHeld,
    SlotHeldData,
    SlotOption,
    SlotOptionsOffered,
    SlotOptionsOfferedData,
    SlotProposed,
    SlotProposedData,
    SlotRescheduled,
    SlotRescheduledData,
    SlotResumed,
)
from sqlmodel import Session, col, select, update

from services.common.outbox import enqueue
from services.common.topics import SCHEDULING
from services.scheduling import domain, webhook_commands
from services.scheduling.domain import ACTIVE_STATES, AppointmentState
from services.scheduling.models import (
    Appointment,
    Case,
    FollowUpVisit,
    OfferedOption,
    Site,
    TherapyProtocol,
)

SOURCE = "cgt/scheduling"
log = structlog.get_logger()
DEFAULT_CALENDAR = domain.SiteCalendar("UTC", 1, frozenset({1, 2, 3, 4, 5}), frozenset(), 1)


class Refused(Exception):
    """A command that breaks a scheduling rule (HTTP 409), with every reason."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


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


def receipt_buffer(session: Session, case: Case, default_hours: float) -> float:
    protocol = session.get(TherapyProtocol, case.therapy_code)
    return protocol.receipt_buffer_hours if protocol else default_hours


def conditioning_days(session: Session, case: Case) -> int:
    protocol = session.get(TherapyProtocol, case.therapy_code)
    return protocol.conditioning_days if protocol else case.conditioning_days


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


def appointment_payload(appointment: Appointment, kind: str, reason: str | None = None) -> dict[str, object]:
    """What a treatment center receives: identifiers and dates, never patient-identifying data."""
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
        "reason": reason,
        "sent_at": utc_now().isoformat(),
    }


def notify_site(session: Session, appointment: Appointment, kind: str, reason: str | None = None) -> None:
    """Queue a signed webhook to each of the site's endpoints, in the same transaction as the change."""
    payload = json.dumps(appointment_payload(appointment, kind, reason), sort_keys=True)
    webhook_commands.queue_deliveries(
        session,
        site=appointment.treatment_center_id,
        appointment_id=appointment.id,
        coi=appointment.coi,
        kind=kind,
        payload=payload,
    )


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
    session.exec(update(OfferedOption).where(col(OfferedOption.coi) == case.coi).values(current=False))
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
    flag(session, case, None if rows else "no feasible infusion option within 90 days: call the site")
    return rows


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


def book(
    session: Session,
    case: Case,
    option: domain.SlotOption,
    *,
    booked_by: str,
    default_buffer_hours: float,
    correlation_id: str,
) -> Appointment:
    """Book a tentative appointment; confirm it at once if the product is already on site and clean."""
    lock_case(session, case)
    if case.cancelled:
        raise Refused(["the order was cancelled"])
    if open_appointment(session, case.coi) is not None:
        raise Refused(["this case already has an appointment: reschedule or cancel it"])
    site = session.get(Site, case.treatment_center_id)
    problems = domain.booking_problems(
        option,
        eta_at=case.eta_at,
        receipt_buffer_hours=receipt_buffer(session, case, default_buffer_hours),
        calendar=calendar_of(site),
        load=load_of(session, case.treatment_center_id),
    )
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
    if case.product_delivered_at is not None and not case.quarantined:
        confirm(session, appointment, correlation_id=correlation_id, causation_id=None)
    return appointment


def confirm(
    session: Session, appointment: Appointment, *, correlation_id: str, causation_id: str | None
) -> None:
    """I4: called only once the product is delivered, COI verified, temperature record clean (or released)."""
    _touch(session, appointment, AppointmentState.CONFIRMED)
    appointment.confirmed_at = utc_now()
    appointment.hold_reason = None
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
    session: Session, appointment: Appointment, reason: str, *, correlation_id: str, causation_id: str | None
) -> None:
    _touch(session, appointment, AppointmentState.ON_HOLD)
    appointment.hold_reason = reason
    _publish(
        session,
        SlotHeld(
            **_envelope(appointment.coi, correlation_id, causation_id),
            data=SlotHeldData(
                appointment_id=appointment.id,
                coi=appointment.coi,
                treatment_center_id=appointment.treatment_center_id,
                reason=reason[:500],
                held_at=utc_now(),
            ),
        ),
    )
    notify_site(session, appointment, "slot.held", reason)


def resume(
    session: Session, appointment: Appointment, reason: str, *, correlation_id: str, causation_id: str | None
) -> None:
    _touch(session, appointment, AppointmentState.TENTATIVE)
    appointment.hold_reason = None
    _publish(
        session,
        SlotResumed(
            **_envelope(appointment.coi, correlation_id, causation_id), data=_changed(appointment, reason)
        ),
    )
    notify_site(session, appointment, "slot.resumed", reason)


def cancel(
    session: Session, appointment: Appointment, reason: str, *, correlation_id: str, causation_id: str | None
) -> None:
    _touch(session, appointment, AppointmentState.CANCELLED)
    appointment.hold_reason = reason
    _publish(
        session,
        SlotCancelled(
            **_envelope(appointment.coi, correlation_id, causation_id), data=_changed(appointment, reason)
        ),
    )
    notify_site(session, appointment, "slot.cancelled", reason)


def _changed(appointment: Appointment, reason: str) -> SlotChangedData:
    return SlotChangedData(
        appointment_id=appointment.id,
        coi=appointment.coi,
        treatment_center_id=appointment.treatment_center_id,
        reason=reason[:500],
        at=utc_now(),
    )


def reschedule_for_delay(
    session: Session,
    case: Case,
    *,
    default_buffer_hours: float,
    correlation_id: str,
    causation_id: str | None,
) -> None:
    """A delay moves a tentative appointment to the next feasible option and tells the site; when none
    fits, or conditioning has already started, it is never moved silently: a coordinator is alerted. The
    caller holds the case's lock (`lock_case`), so capacity is counted under the site's lock."""
    appointment = open_appointment(session, case.coi)
    if appointment is None:
        offer_options(
            session,
            case,
            default_buffer_hours=default_buffer_hours,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        return
    assert case.eta_at is not None
    site = session.get(Site, case.treatment_center_id)
    calendar = calendar_of(site)
    buffer = receipt_buffer(session, case, default_buffer_hours)
    earliest = domain.earliest_conditioning_day(case.eta_at, buffer, calendar.timezone)
    if appointment.conditioning_start_on >= earliest:
        return  # the appointment still leaves the product time to arrive
    if domain.conditioning_started(appointment.conditioning_start_on, utc_now(), calendar.timezone):
        flag(
            session,
            case,
            f"delayed product (ETA {case.eta_at.isoformat()}) but conditioning started on {appointment.conditioning_start_on}: clinical decision needed",
        )
        notify_site(session, appointment, "slot.at_risk", case.attention)
        return
    if appointment.state is AppointmentState.CONFIRMED:
        flag(session, case, "a confirmed appointment's product is reported delayed: check with the courier")
        return
    options = domain.feasible_options(
        eta_at=case.eta_at,
        calendar=calendar,
        conditioning_days=conditioning_days(session, case),
        receipt_buffer_hours=buffer,
        load=load_of(session, case.treatment_center_id, excluding=appointment.id),
        count=1,
    )
    if not options:
        flag(
            session,
            case,
            f"delayed product (ETA {case.eta_at.isoformat()}): no feasible option, choose a new date",
        )
        notify_site(session, appointment, "slot.at_risk", case.attention)
        return
    previous = (appointment.conditioning_start_on, appointment.infusion_on)
    appointment.conditioning_start_on, appointment.infusion_on = (
        options[0].conditioning_start_on,
        options[0].infusion_on,
    )
    _touch(session, appointment)
    reason = f"product delayed: new ETA {case.eta_at.isoformat()}"
    _publish(
        session,
        SlotRescheduled(
            **_envelope(case.coi, correlation_id, causation_id),
            data=SlotRescheduledData(
                appointment_id=appointment.id,
                coi=case.coi,
                treatment_center_id=case.treatment_center_id,
                previous_conditioning_start_on=previous[0],
                previous_infusion_on=previous[1],
                conditioning_start_on=appointment.conditioning_start_on,
                infusion_on=appointment.infusion_on,
                reason=reason,
            ),
        ),
    )
    notify_site(session, appointment, "slot.rescheduled", reason)


def record_infusion(
    session: Session, appointment: Appointment, case: Case, infused_on: date, *, correlation_id: str
) -> int:
    """Infusion done: the appointment is fulfilled and, for long-term follow-up therapies, the visits planned."""
    if infused_on > utc_now().date() + timedelta(days=1):
        raise Refused([f"infused_on {infused_on} is in the future"])
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
