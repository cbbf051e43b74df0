"""COI tracking's subscribers: an accepted order plans its return shipment, container and bags."""

from __future__ import annotations

import secrets

import structlog
from cgt_contracts.events import AnyEvent, OrderAccepted, ShipmentCreated, ShipmentCreatedData, ShipmentLeg
from sqlmodel import Session, select

from services.coi_tracking.models import Bag, Container, Shipment
from services.common.consumer import register_consumer
from services.common.outbox import enqueue
from services.common.service import Runtime
from services.common.topics import ORDERS, SHIPMENTS

log = structlog.get_logger()
GROUP_ID = "coi-tracking"
SOURCE = "cgt/coi-tracking"


def plan_return_shipment(
    session: Session, event: OrderAccepted, *, courier_company: str, manufacturing_site: str, bag_count: int
) -> None:
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
        courier_company=courier_company,
        storage_limit_celsius=order.storage_limit_celsius,
        custodian=manufacturing_site,
    )
    container = Container(id=f"DS-{secrets.token_hex(4).upper()}", shipment_id=shipment.id)
    session.add(shipment)
    session.flush()  # the shipment row first: container and bags refer to it
    session.add(container)
    for number in range(1, bag_count + 1):
        session.add(Bag(shipment_id=shipment.id, coi=order.coi, number=number, of=bag_count))
    enqueue(
        session,
        SHIPMENTS,
        ShipmentCreated(
            source=SOURCE,
            subject=order.coi,
            correlationid=event.correlationid,
            causationid=str(event.id),
            data=ShipmentCreatedData(
                shipment_id=shipment.id,
                order_id=order.order_id,
                coi=order.coi,
                leg=ShipmentLeg.RETURN,
                treatment_center_id=order.treatment_center_id,
                container_id=container.id,
                bag_count=bag_count,
                courier_company=courier_company,
                storage_limit_celsius=order.storage_limit_celsius,
            ),
        ),
    )
    log.info("shipment.planned", shipment_id=str(shipment.id), coi=order.coi)


def wire(runtime: Runtime, *, courier_company: str, manufacturing_site: str, bag_count: int) -> None:
    def on_order_accepted(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderAccepted)
        plan_return_shipment(
            session,
            event,
            courier_company=courier_company,
            manufacturing_site=manufacturing_site,
            bag_count=bag_count,
        )

    register_consumer(
        runtime.broker,
        topics=[ORDERS],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers={OrderAccepted: on_order_accepted},
        after_commit=runtime.relay.notify,
        max_attempts=runtime.settings.consumer_max_attempts,
    )
