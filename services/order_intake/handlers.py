"""Order intake's subscribers: shipment and scheduling events move the order's status forward."""

from __future__ import annotations

import structlog
from cgt_contracts.events import (
    AnyEvent,
    InfusionRecorded,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentLeg,
)
from sqlmodel import Session, select

from services.common.consumer import register_consumer
from services.common.service import Runtime
from services.common.topics import SCHEDULING, SHIPMENTS
from services.order_intake.api import record_transition
from services.order_intake.domain import OrderStatus, TransitionRefused
from services.order_intake.models import Order

log = structlog.get_logger()

GROUP_ID = "order-intake"


def _advance(session: Session, event: AnyEvent, target: OrderStatus) -> None:
    order = session.exec(select(Order).where(Order.coi == event.subject)).first()
    if order is None:
        log.warning("order.unknown_coi", coi=event.subject)
        return
    if order.status == target:
        return
    # A refused transition is logged and left unapplied; the event still counts as handled (inbox).
    try:
        record_transition(session, order, target, actor=event.source, cause_event_id=str(event.id))
    except TransitionRefused as refused:
        log.warning("order.transition_refused", order_id=str(order.id), reason=str(refused))


def on_shipment_dispatched(session: Session, event: AnyEvent) -> None:
    assert isinstance(event, ShipmentDispatched)
    if event.data.leg is ShipmentLeg.RETURN:
        _advance(session, event, OrderStatus.PRODUCT_SHIPPED)


def on_shipment_delivered(session: Session, event: AnyEvent) -> None:
    assert isinstance(event, ShipmentDelivered)
    if event.data.leg is ShipmentLeg.RETURN:
        _advance(session, event, OrderStatus.PRODUCT_DELIVERED)


def on_infusion_recorded(session: Session, event: AnyEvent) -> None:
    """Infused; with follow-up visits planned, the order is in long-term follow-up."""
    assert isinstance(event, InfusionRecorded)
    _advance(session, event, OrderStatus.INFUSED)
    if event.data.follow_up_visits:
        _advance(session, event, OrderStatus.IN_FOLLOW_UP)


def wire(runtime: Runtime) -> None:
    register_consumer(
        runtime.broker,
        topics=[SHIPMENTS, SCHEDULING],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers={
            ShipmentDispatched: on_shipment_dispatched,
            ShipmentDelivered: on_shipment_delivered,
            InfusionRecorded: on_infusion_recorded,
        },
        after_commit=runtime.relay.notify,
        max_attempts=runtime.settings.consumer_max_attempts,
    )
