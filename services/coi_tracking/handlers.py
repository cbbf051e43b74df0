"""COI tracking's subscribers: an accepted order plans its return shipment; each recorded collection
plans a fresh outbound leg to manufacturing."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import structlog
from cgt_contracts.events import (
    AnyEvent,
    CollectionRecorded,
    OrderAccepted,
    ShipmentCreated,
    ShipmentCreatedData,
    ShipmentLeg,
)
from sqlmodel import Session, col, select

from services.coi_tracking.models import Bag, Container, Shipment
from services.common.consumer import register_consumer
from services.common.outbox import enqueue
from services.common.service import Runtime
from services.common.topics import ORDERS, SHIPMENTS

log = structlog.get_logger()
GROUP_ID = "coi-tracking"
SOURCE = "cgt/coi-tracking"
FRESH_MIN_CELSIUS = 2.0
FRESH_MAX_CELSIUS = 8.0


@dataclass(frozen=True)
class Planning:
    """Configuration for planned legs."""

    courier_company: str
    manufacturing_site: str
    bag_count: int
    fresh_max_transit_hours: float


def _plan(
    session: Session,
    event: AnyEvent,
    shipment: Shipment,
    bags: list[Bag],
) -> None:
    container = Container(id=f"DS-{secrets.token_hex(4).upper()}", shipment_id=shipment.id)
    session.add(shipment)
    session.flush()  # the shipment row first: container and bags refer to it
    session.add(container)
    for bag in bags:
        bag.shipment_id = shipment.id
        session.add(bag)
    enqueue(
        session,
        SHIPMENTS,
        ShipmentCreated(
            source=SOURCE,
            subject=shipment.coi,
            correlationid=event.correlationid,
            causationid=str(event.id),
            data=ShipmentCreatedData(
                shipment_id=shipment.id,
                order_id=shipment.order_id,
                coi=shipment.coi,
                leg=shipment.leg,
                treatment_center_id=shipment.treatment_center_id,
                container_id=container.id,
                bag_count=len(bags),
                courier_company=shipment.courier_company,
                storage_limit_celsius=shipment.storage_limit_celsius,
            ),
        ),
    )
    log.info("shipment.planned", shipment_id=str(shipment.id), coi=shipment.coi, leg=shipment.leg.value)


def plan_return_shipment(session: Session, event: OrderAccepted, planning: Planning) -> None:
    order = event.data
    exists = session.exec(
        select(Shipment.id)
        .where(Shipment.order_id == order.order_id)
        .where(Shipment.leg == ShipmentLeg.RETURN)
    ).first()
    if exists is not None:
        return
    shipment = Shipment(
        order_id=order.order_id,
        coi=order.coi,
        leg=ShipmentLeg.RETURN,
        treatment_center_id=order.treatment_center_id,
        courier_company=planning.courier_company,
        storage_limit_celsius=order.storage_limit_celsius,
        custodian=planning.manufacturing_site,
        destination=order.treatment_center_id,
    )
    bags = [
        Bag(shipment_id=shipment.id, coi=order.coi, number=n, of=planning.bag_count)
        for n in range(1, planning.bag_count + 1)
    ]
    _plan(session, event, shipment, bags)


def plan_outbound_leg(session: Session, event: CollectionRecorded, planning: Planning) -> None:
    """Collected cells travel fresh at 2-8 °C to manufacturing, within the maximum transit time."""
    collection = event.data
    exists = session.exec(select(Bag.id).where(col(Bag.din) == collection.din)).first()
    if exists is not None:
        return
    shipment = Shipment(
        order_id=collection.order_id,
        coi=collection.coi,
        leg=ShipmentLeg.OUTBOUND,
        treatment_center_id=collection.treatment_center_id,
        courier_company=planning.courier_company,
        storage_limit_celsius=FRESH_MAX_CELSIUS,
        min_celsius=FRESH_MIN_CELSIUS,
        max_transit_hours=planning.fresh_max_transit_hours,
        custodian=collection.treatment_center_id,
        destination=planning.manufacturing_site,
    )
    bag = Bag(shipment_id=shipment.id, coi=collection.coi, din=collection.din, number=1, of=1)
    _plan(session, event, shipment, [bag])


def wire(runtime: Runtime, planning: Planning) -> None:
    def on_order_accepted(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderAccepted)
        plan_return_shipment(session, event, planning)

    def on_collection_recorded(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, CollectionRecorded)
        plan_outbound_leg(session, event, planning)

    register_consumer(
        runtime.broker,
        topics=[ORDERS],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers={OrderAccepted: on_order_accepted, CollectionRecorded: on_collection_recorded},
        after_commit=runtime.relay.notify,
        max_attempts=runtime.settings.consumer_max_attempts,
    )
