"""Scheduling's subscribers: cases from orders; proposals, holds and confirmations from shipments."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import date

import structlog
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import (
    AnyEvent,
    OrderAccepted,
    OrderCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentLeg,
    ShipmentQuarantined,
    ShipmentRejected,
    ShipmentReleased,
    SlotConfirmed,
    SlotConfirmedData,
    SlotHeld,
    SlotHeldData,
    SlotProposed,
    SlotProposedData,
)
from sqlmodel import Session, col, select

from services.common.consumer import EventHandler, register_consumer
from services.common.outbox import enqueue
from services.common.service import Runtime
from services.common.topics import ORDERS, SCHEDULING, SHIPMENTS
from services.scheduling import domain
from services.scheduling.domain import AppointmentState
from services.scheduling.models import Appointment, Case, Site, WebhookDelivery, WebhookEndpoint

log = structlog.get_logger()
GROUP_ID = "scheduling"
SOURCE = "cgt/scheduling"
DEFAULT_CALENDAR = domain.SiteCalendar("UTC", 1, frozenset({1, 2, 3, 4, 5}), frozenset())


def calendar_of(site: Site | None) -> domain.SiteCalendar:
    if site is None:
        return DEFAULT_CALENDAR
    return domain.SiteCalendar(
        timezone=site.timezone,
        infusions_per_day=site.infusions_per_day,
        working_weekdays=frozenset(int(d) for d in site.working_weekdays.split(",") if d),
        blackout_dates=frozenset(date.fromisoformat(d) for d in site.blackout_dates.split(",") if d),
    )


def booked_per_day(session: Session, site_id: str) -> Counter[date]:
    days = session.exec(
        select(col(Appointment.infusion_on))
        .where(Appointment.treatment_center_id == site_id)
        .where(col(Appointment.state) != AppointmentState.CANCELLED)
    ).all()
    return Counter(days)


def appointment_payload(appointment: Appointment, kind: str) -> dict[str, object]:
    """What a treatment center receives: identifiers and dates, never patient-identifying data."""
    return {
        "kind": kind,
        "appointment_id": str(appointment.id),
        "coi": appointment.coi,
        "treatment_center_id": appointment.treatment_center_id,
        "state": appointment.state.value,
        "conditioning_start_on": appointment.conditioning_start_on.isoformat(),
        "infusion_on": appointment.infusion_on.isoformat(),
        "hold_reason": appointment.hold_reason,
        "sent_at": utc_now().isoformat(),
    }


def notify_site(session: Session, appointment: Appointment, kind: str) -> None:
    """Queue a signed webhook to each of the site's endpoints, in the same transaction as the change."""
    endpoints = session.exec(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.treatment_center_id == appointment.treatment_center_id)
        .where(col(WebhookEndpoint.active).is_(True))
    ).all()
    payload = json.dumps(appointment_payload(appointment, kind), sort_keys=True)
    for endpoint in endpoints:
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id, appointment_id=appointment.id, kind=kind, payload=payload
            )
        )


def _envelope(event: EventEnvelope) -> dict[str, str]:
    return {
        "source": SOURCE,
        "subject": event.subject,
        "correlationid": event.correlationid,
        "causationid": str(event.id),
    }


def on_order_accepted(session: Session, event: AnyEvent) -> None:
    assert isinstance(event, OrderAccepted)
    if session.get(Case, event.data.coi) is None:
        session.add(
            Case(
                coi=event.data.coi,
                order_id=event.data.order_id,
                patient_ref=event.data.patient_ref,
                therapy_code=event.data.therapy_code,
                treatment_center_id=event.data.treatment_center_id,
                conditioning_days=event.data.conditioning_days,
            )
        )


def _open_appointment(session: Session, coi: str) -> Appointment | None:
    return session.exec(
        select(Appointment)
        .where(Appointment.coi == coi)
        .where(col(Appointment.state) != AppointmentState.CANCELLED)
        .order_by(col(Appointment.created_at).desc())
    ).first()


def _move(session: Session, appointment: Appointment, target: AppointmentState) -> bool:
    if not domain.can_move(appointment.state, target):
        log.warning("appointment.transition_refused", state=appointment.state, target=target)
        return False
    appointment.state = target
    session.add(appointment)
    return True


def make_handlers(receipt_buffer_hours: float) -> dict[type[EventEnvelope], EventHandler]:
    def on_shipment_dispatched(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ShipmentDispatched)
        if event.data.leg is not ShipmentLeg.RETURN:
            return
        case = session.get(Case, event.data.coi)
        if case is None or case.cancelled or _open_appointment(session, case.coi) is not None:
            return
        site = session.get(Site, case.treatment_center_id)
        options = domain.feasible_options(
            eta_at=event.data.eta_at,
            calendar=calendar_of(site),
            conditioning_days=case.conditioning_days,
            receipt_buffer_hours=receipt_buffer_hours,
            booked_per_day=booked_per_day(session, case.treatment_center_id),
        )
        if not options:
            log.warning("appointment.no_feasible_option", coi=case.coi)
            return
        chosen = options[0]
        appointment = Appointment(
            coi=case.coi,
            treatment_center_id=case.treatment_center_id,
            conditioning_start_on=chosen.conditioning_start_on,
            infusion_on=chosen.infusion_on,
            shipment_id=event.data.shipment_id,
        )
        session.add(appointment)
        enqueue(
            session,
            SCHEDULING,
            SlotProposed(
                **_envelope(event),
                data=SlotProposedData(
                    appointment_id=appointment.id,
                    coi=case.coi,
                    treatment_center_id=case.treatment_center_id,
                    conditioning_start_on=chosen.conditioning_start_on,
                    infusion_on=chosen.infusion_on,
                ),
            ),
        )
        notify_site(session, appointment, "slot.proposed")

    def on_shipment_delivered(session: Session, event: AnyEvent) -> None:
        """The only way to confirm: a delivery with COI verified and a clean temperature record (I4)."""
        assert isinstance(event, ShipmentDelivered)
        if event.data.leg is not ShipmentLeg.RETURN:
            return
        appointment = _open_appointment(session, event.data.coi)
        if appointment is None or not _move(session, appointment, AppointmentState.CONFIRMED):
            return
        appointment.confirmed_at = utc_now()
        appointment.hold_reason = None
        enqueue(
            session,
            SCHEDULING,
            SlotConfirmed(
                **_envelope(event),
                data=SlotConfirmedData(
                    appointment_id=appointment.id,
                    coi=appointment.coi,
                    treatment_center_id=appointment.treatment_center_id,
                    conditioning_start_on=appointment.conditioning_start_on,
                    infusion_on=appointment.infusion_on,
                    shipment_id=event.data.shipment_id,
                    confirmed_at=appointment.confirmed_at,
                ),
            ),
        )
        notify_site(session, appointment, "slot.confirmed")

    def on_shipment_quarantined(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ShipmentQuarantined)
        appointment = _open_appointment(session, event.data.coi)
        if appointment is None or not _move(session, appointment, AppointmentState.ON_HOLD):
            return
        appointment.hold_reason = event.data.reason
        enqueue(
            session,
            SCHEDULING,
            SlotHeld(
                **_envelope(event),
                data=SlotHeldData(
                    appointment_id=appointment.id,
                    coi=appointment.coi,
                    treatment_center_id=appointment.treatment_center_id,
                    reason=event.data.reason,
                    held_at=utc_now(),
                ),
            ),
        )
        notify_site(session, appointment, "slot.held")

    def on_shipment_released(session: Session, event: AnyEvent) -> None:
        """A signed QA release lifts the hold; confirmation still waits for the delivery (I4)."""
        assert isinstance(event, ShipmentReleased)
        if event.data.leg is not ShipmentLeg.RETURN:
            return
        appointment = _open_appointment(session, event.data.coi)
        if appointment is None or appointment.state is not AppointmentState.ON_HOLD:
            return
        _move(session, appointment, AppointmentState.TENTATIVE)
        appointment.hold_reason = None
        notify_site(session, appointment, "slot.resumed")

    def on_shipment_rejected(session: Session, event: AnyEvent) -> None:
        """A rejected product must not be infused: the appointment is cancelled and the site told."""
        assert isinstance(event, ShipmentRejected)
        if event.data.leg is not ShipmentLeg.RETURN:
            return
        appointment = _open_appointment(session, event.data.coi)
        if appointment is not None and _move(session, appointment, AppointmentState.CANCELLED):
            appointment.hold_reason = f"product rejected by QA: {event.data.reason}"
            notify_site(session, appointment, "slot.cancelled")

    def on_order_cancelled(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderCancelled)
        case = session.get(Case, event.data.coi)
        if case is not None:
            case.cancelled = True
            session.add(case)
        appointment = _open_appointment(session, event.data.coi)
        if appointment is not None and _move(session, appointment, AppointmentState.CANCELLED):
            notify_site(session, appointment, "slot.cancelled")

    return {
        OrderAccepted: on_order_accepted,
        OrderCancelled: on_order_cancelled,
        ShipmentDispatched: on_shipment_dispatched,
        ShipmentDelivered: on_shipment_delivered,
        ShipmentQuarantined: on_shipment_quarantined,
        ShipmentReleased: on_shipment_released,
        ShipmentRejected: on_shipment_rejected,
    }


def wire(runtime: Runtime, *, receipt_buffer_hours: float, after_commit: Callable[[], None]) -> None:
    register_consumer(
        runtime.broker,
        topics=[ORDERS, SHIPMENTS],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers=make_handlers(receipt_buffer_hours),
        after_commit=after_commit,
        max_attempts=runtime.settings.consumer_max_attempts,
    )
