"""Scheduling's subscribers: cases from orders; options, holds, moves and confirmations from shipments."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from cgt_contracts.envelope import EventEnvelope
from cgt_contracts.events import (
    AnyEvent,
    OrderAccepted,
    OrderCancelled,
    ShipmentDelayed,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentLeg,
    ShipmentQuarantined,
    ShipmentRejected,
    ShipmentReleased,
    parse_event,
)
from sqlmodel import Session, col, select

from services.common.consumer import EventHandler, register_consumer
from services.common.service import Runtime
from services.common.topics import ORDERS, SHIPMENTS
from services.scheduling import commands
from services.scheduling.domain import AppointmentState
from services.scheduling.models import Case, ParkedEvent

log = structlog.get_logger()
GROUP_ID = "scheduling"


def make_handlers(default_buffer_hours: float) -> dict[type[EventEnvelope], EventHandler]:
    handlers: dict[type[EventEnvelope], EventHandler] = {}

    def context(event: AnyEvent) -> dict[str, str]:
        return {"correlation_id": event.correlationid, "causation_id": str(event.id)}

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
                    long_term_follow_up=event.data.long_term_follow_up,
                )
            )
            session.flush()
            apply_parked(session, event.data.coi)

    def apply_parked(session: Session, coi: str) -> None:
        """Events about this case that came before its order are applied now, in arrival order."""
        parked = session.exec(
            select(ParkedEvent).where(ParkedEvent.coi == coi).order_by(col(ParkedEvent.id))
        ).all()
        for row in parked:
            event = parse_event(row.payload)
            handlers[type(event)](session, event)
            session.delete(row)

    def return_leg_case(session: Session, event: AnyEvent, coi: str, leg: ShipmentLeg) -> Case | None:
        if leg is not ShipmentLeg.RETURN:
            return None
        case = session.get(Case, coi)
        if case is None:
            # The order's event comes on another topic and may not have arrived yet: park this one.
            log.info("scheduling.event_parked", coi=coi)
            if (
                session.exec(select(ParkedEvent.id).where(ParkedEvent.event_id == str(event.id))).first()
                is None
            ):
                session.add(ParkedEvent(coi=coi, event_id=str(event.id), payload=event.model_dump_json()))
            return None
        commands.lock_case(session, case)
        return None if case.cancelled else case

    def on_shipment_dispatched(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ShipmentDispatched)
        case = return_leg_case(session, event, event.data.coi, event.data.leg)
        if case is None:
            return
        case.shipment_id, case.eta_at = event.data.shipment_id, event.data.eta_at
        commands.offer_options(session, case, default_buffer_hours=default_buffer_hours, **context(event))

    def on_shipment_delayed(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ShipmentDelayed)
        case = return_leg_case(session, event, event.data.coi, event.data.leg)
        if case is None:
            return
        case.eta_at = event.data.eta_at
        commands.reschedule_for_delay(
            session, case, default_buffer_hours=default_buffer_hours, **context(event)
        )

    def on_shipment_delivered(session: Session, event: AnyEvent) -> None:
        """The only way to confirm: a delivery with COI verified and a clean (or QA-released) record (I4)."""
        assert isinstance(event, ShipmentDelivered)
        case = return_leg_case(session, event, event.data.coi, event.data.leg)
        if case is None:
            return
        case.product_delivered_at, case.quarantined = event.data.delivered_at, False
        session.add(case)
        appointment = commands.open_appointment(session, case.coi)
        if appointment is None:
            commands.flag(session, case, "product delivered and verified: book the infusion")
        elif appointment.state is not AppointmentState.CONFIRMED:
            commands.confirm(session, appointment, **context(event))

    def on_shipment_quarantined(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ShipmentQuarantined)
        case = return_leg_case(session, event, event.data.coi, event.data.leg)
        if case is None:
            return
        appointment = commands.open_appointment(session, case.coi)
        case.quarantined = True
        session.add(case)
        if appointment is not None and appointment.state is AppointmentState.TENTATIVE:
            commands.hold(session, appointment, event.data.reason, **context(event))

    def on_shipment_released(session: Session, event: AnyEvent) -> None:
        """A signed QA release lifts the hold; confirmation still waits for the delivery (I4)."""
        assert isinstance(event, ShipmentReleased)
        case = return_leg_case(session, event, event.data.coi, event.data.leg)
        if case is None:
            return
        case.quarantined = False
        session.add(case)
        appointment = commands.open_appointment(session, case.coi)
        if appointment is not None and appointment.state is AppointmentState.ON_HOLD:
            commands.resume(
                session, appointment, f"QA released the shipment: {event.data.reason}", **context(event)
            )

    def on_shipment_rejected(session: Session, event: AnyEvent) -> None:
        """A rejected product must not be infused: the appointment is cancelled and the site told."""
        assert isinstance(event, ShipmentRejected)
        case = return_leg_case(session, event, event.data.coi, event.data.leg)
        if case is None:
            return
        appointment = commands.open_appointment(session, case.coi)
        if appointment is not None:
            commands.cancel(
                session, appointment, f"product rejected by QA: {event.data.reason}", **context(event)
            )
        commands.flag(session, case, "product rejected by QA: plan with the manufacturer")

    def on_order_cancelled(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderCancelled)
        case = session.get(Case, event.data.coi)
        if case is None:
            return
        commands.lock_case(session, case)
        case.cancelled = True
        commands.flag(session, case, None)
        appointment = commands.open_appointment(session, case.coi)
        if appointment is not None:
            commands.cancel(session, appointment, f"order cancelled: {event.data.reason}", **context(event))

    handlers.update(
        {
            OrderAccepted: on_order_accepted,
            OrderCancelled: on_order_cancelled,
            ShipmentDispatched: on_shipment_dispatched,
            ShipmentDelayed: on_shipment_delayed,
            ShipmentDelivered: on_shipment_delivered,
            ShipmentQuarantined: on_shipment_quarantined,
            ShipmentReleased: on_shipment_released,
            ShipmentRejected: on_shipment_rejected,
        }
    )
    return handlers


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
