"""COI tracking's subscribers: an accepted order plans its return shipment; each recorded collection
plans a fresh outbound leg to manufacturing; the product's release opens the return leg for pick-up; a
failed lot closes its return leg and plans the next lot's; a cancelled order's shipments are marked
cancelled."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from cgt_contracts.events import (
    AnyEvent,
    CollectionRecorded,
    CourierScanDataV2,
    CourierScanSubmitted,
    CourierScanSubmittedV2,
    ManufacturingFailed,
    OrderAccepted,
    OrderAcceptedV2,
    OrderCancelled,
    OrderCancelledV2,
    ProductReleasedForShipment,
    ProductReleasedForShipmentV2,
    ShipmentCreated,
    ShipmentCreatedData,
    ShipmentLeg,
)
from sqlmodel import Session, col, select

from services.coi_tracking import commands
from services.coi_tracking.courier_keys import CourierSignatures
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import Bag, Container, Shipment
from services.coi_tracking.scan_writer import ScanSubmission, apply_submissions
from services.common.consumer import BatchConsumer, register_consumer, subscribe_batches
from services.common.db import locked
from services.common.outbox import enqueue
from services.common.topics import COI_TRACKING_SOURCE, COURIER_SCANS, ORDERS, SHIPMENTS

if TYPE_CHECKING:
    from services.coi_tracking.runtime import TrackingRuntime

log = structlog.get_logger()
GROUP_ID = "coi-tracking"
SOURCE = COI_TRACKING_SOURCE
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


def plan_return_shipment(
    session: Session, event: OrderAccepted | OrderAcceptedV2, planning: Planning
) -> None:
    """v2 adds the site's qualifications and the payer authorization's last day, which are scheduling's
    concern: the leg is planned from what both versions carry."""
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
    _plan(session, event, shipment, _product_bags(shipment, planning))


def _product_bags(shipment: Shipment, planning: Planning) -> list[Bag]:
    """A return leg's bags: the product's, each under the shipment's COI, as many as the planning says."""
    return [
        Bag(shipment_id=shipment.id, coi=shipment.coi, number=n, of=planning.bag_count)
        for n in range(1, planning.bag_count + 1)
    ]


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


def mark_order_cancelled(session: Session, event: OrderCancelled | OrderCancelledV2) -> None:
    """Every shipment of a cancelled order is marked so: from now on it takes no scan (the domain refuses
    them, with the reason), and it shows as cancelled."""
    # Locked, so that a scan being judged right now is judged before the cancellation or after it, whole.
    shipments = session.exec(
        locked(session, select(Shipment).where(Shipment.order_id == event.data.order_id))
    ).all()
    for shipment in shipments:
        if shipment.order_cancelled_at is None:
            shipment.order_cancelled_at = event.data.cancelled_at
            shipment.status = ShipmentStatus.CANCELLED
            session.add(shipment)
    log.info("shipments.order_cancelled", order_id=str(event.data.order_id), shipments=len(shipments))


def replan_return_leg(session: Session, event: ManufacturingFailed, planning: Planning) -> None:
    """The lot failed: its return leg is closed (`commands.close_failed_lot_legs`) and a new one planned
    for the next lot, to the same site with the same limits; the next collection plans its outbound leg
    as any collection does. Redelivered, nothing is closed and nothing planned again."""
    for closed in commands.close_failed_lot_legs(session, event.data.order_id, event.data.failed_at):
        shipment = Shipment(
            order_id=closed.order_id,
            coi=closed.coi,
            leg=ShipmentLeg.RETURN,
            treatment_center_id=closed.treatment_center_id,
            courier_company=closed.courier_company,
            storage_limit_celsius=closed.storage_limit_celsius,
            custodian=closed.custodian,
            destination=closed.destination,
        )
        _plan(session, event, shipment, _product_bags(shipment, planning))


def open_return_leg(
    session: Session, event: ProductReleasedForShipment | ProductReleasedForShipmentV2
) -> None:
    """The manufacturer released the product: the order's return leg may now be picked up (the open one:
    a failed lot's is closed). A product released out of specification travels like any other (v2): it
    is scheduling that waits for its file before the infusion is booked."""
    shipment = session.exec(
        locked(
            session,
            select(Shipment)
            .where(Shipment.order_id == event.data.order_id)
            .where(Shipment.leg == ShipmentLeg.RETURN)
            .where(col(Shipment.lot_failed_at).is_(None))
            .order_by(col(Shipment.created_at).desc()),
        )
    ).first()
    if shipment is None:  # order.accepted, which plans it, comes first on the same partition (key: COI)
        log.warning("shipment.release_without_return_leg", order_id=str(event.data.order_id))
        return
    if shipment.product_released_at is None:
        shipment.product_released_at = event.data.released_at
        shipment.product_lot_number = event.data.lot_number
        session.add(shipment)
    log.info("shipment.product_released", shipment_id=str(shipment.id))


def wire(runtime: TrackingRuntime, planning: Planning) -> None:
    def on_order_accepted(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderAccepted | OrderAcceptedV2)
        plan_return_shipment(session, event, planning)

    def on_collection_recorded(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, CollectionRecorded)
        plan_outbound_leg(session, event, planning)

    def on_order_cancelled(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderCancelled | OrderCancelledV2)
        mark_order_cancelled(session, event)

    def on_product_released(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ProductReleasedForShipment | ProductReleasedForShipmentV2)
        open_return_leg(session, event)

    def on_manufacturing_failed(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ManufacturingFailed)
        replan_return_leg(session, event, planning)

    register_consumer(
        runtime.broker,
        topics=[ORDERS],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers={
            OrderAccepted: on_order_accepted,  # v1, still on the topic
            OrderAcceptedV2: on_order_accepted,
            CollectionRecorded: on_collection_recorded,
            OrderCancelled: on_order_cancelled,  # v1, still on the topic: its free text is not read
            OrderCancelledV2: on_order_cancelled,
            ProductReleasedForShipment: on_product_released,  # v1, still on the topic
            ProductReleasedForShipmentV2: on_product_released,
            ManufacturingFailed: on_manufacturing_failed,
        },
        max_attempts=runtime.settings.consumer_max_attempts,
    )
    wire_courier_scans(runtime)


SCANS_GROUP_ID = "coi-tracking-scans"


CourierScan = CourierScanSubmitted | CourierScanSubmittedV2
"""Every version of a courier's scan still accepted on `couriers.scans`."""


def submission_of(event: CourierScan) -> ScanSubmission:
    """A courier's Kafka scan as the same input an HTTP scan becomes (v1 has no container or seal ids)."""
    data = event.data
    container_id = data.container_id if isinstance(data, CourierScanDataV2) else None
    seal_id = data.seal_id if isinstance(data, CourierScanDataV2) else None
    return ScanSubmission(
        shipment_id=data.shipment_id,
        scan=commands.ScanInput(
            scan_type=data.scan_type,
            bag_cois=tuple(data.bag_cois),
            location=data.location,
            device_time=data.device_time,
            temperature_celsius=data.temperature_celsius,
            handed_to=data.handed_to,
            eta_at=data.eta_at,
            container_id=container_id,
            seal_id=seal_id,
        ),
        actor=commands.Actor(subject=data.courier_id, printed_name=data.courier_id),
        courier_company=data.courier_company,
        correlation_id=event.correlationid,
    )


def apply_scans(session: Session, events: list[CourierScan]) -> list[str | None]:
    """A batch of courier scans under the same rules as HTTP scans (`apply_submissions`). A scan the rules
    refuse is stored as refused; one for no shipment, or for another company's, is refused with the reason."""
    results = apply_submissions(session, [submission_of(event) for event in events])
    return [str(result) if isinstance(result, Exception) else None for result in results]


COURIER_SCANS_CONSUMER: BatchConsumer[CourierScan] = BatchConsumer(
    group_id=SCANS_GROUP_ID,
    topics=(COURIER_SCANS,),
    event_types=(CourierScanSubmitted, CourierScanSubmittedV2),
    apply=apply_scans,
    dead_letter_other_types=True,
    pipelined=True,
)
"""`couriers.scans`, consumed in batches, pipelined: one transaction and one offset commit per batch, each
event id once; anything but a courier scan is refused."""


def signed_by_company(signatures: CourierSignatures) -> Callable[[Any, CourierScan], str | None]:
    """A Kafka scan's company is the signing key's: the payload's `courier_company` must be it."""

    def vouch(record: Any, event: CourierScan) -> str | None:
        return signatures.refusal(record.headers, record.value, event.data.courier_company)

    return vouch


def wire_courier_scans(runtime: TrackingRuntime, *, batch_size: int = 2000) -> None:
    """Couriers' systems publish scans to `couriers.scans` (`COURIER_SCANS_CONSUMER`)."""
    subscribe_batches(
        runtime.broker,
        dataclasses.replace(
            COURIER_SCANS_CONSUMER,
            max_records=batch_size,
            vouch=signed_by_company(runtime.courier_signatures),
        ),
        engine=runtime.engine,
        max_attempts=runtime.settings.consumer_max_attempts,
        drains=runtime.drains,
    )
