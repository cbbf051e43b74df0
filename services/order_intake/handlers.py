"""Order intake's subscribers: thin adapters from shipment and scheduling events to `commands`, which
move the order's status forward."""

from __future__ import annotations

from typing import Any

from cgt_contracts.events import (
    AnyEvent,
    InfusionRecorded,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentLeg,
)
from sqlmodel import Session

from services.common.consumer import register_consumer
from services.common.service import Runtime
from services.common.topics import SCHEDULING, SHIPMENTS
from services.order_intake import commands
from services.order_intake.domain import OrderStatus, Way

GROUP_ID = "order-intake"


def on_shipment_dispatched(session: Session, event: AnyEvent) -> None:
    assert isinstance(event, ShipmentDispatched)
    if event.data.leg is ShipmentLeg.RETURN:
        commands.follow_event(session, event, OrderStatus.PRODUCT_SHIPPED, Way.SHIPMENT_EVENT)


def on_shipment_delivered(session: Session, event: AnyEvent) -> None:
    assert isinstance(event, ShipmentDelivered)
    if event.data.leg is ShipmentLeg.RETURN:
        commands.follow_event(session, event, OrderStatus.PRODUCT_DELIVERED, Way.SHIPMENT_EVENT)


def on_infusion_recorded(session: Session, event: AnyEvent) -> None:
    """Infused; with follow-up visits planned, the order is in long-term follow-up."""
    assert isinstance(event, InfusionRecorded)
    commands.follow_event(session, event, OrderStatus.INFUSED, Way.INFUSION_EVENT)
    if event.data.follow_up_visits:
        commands.follow_event(session, event, OrderStatus.IN_FOLLOW_UP, Way.INFUSION_EVENT)


def wire(runtime: Runtime[Any]) -> None:
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
        max_attempts=runtime.settings.consumer_max_attempts,
    )
