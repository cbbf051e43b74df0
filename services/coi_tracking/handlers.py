"""COI tracking's subscribers: an accepted order plans its return shipment; each recorded collection
plans a fresh outbound leg to manufacturing; the product's release opens the return leg for pick-up; a
cancelled order's shipments are marked cancelled."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from cgt_contracts.events import (
    AnyEvent,
    CollectionRecorded,
    CourierScanDataV2,
    CourierScanSubmitted,
    CourierScanSubmittedV2,
    OrderAccepted,
    OrderCancelled,
    ProductReleasedForShipment,
    ShipmentCreated,
    ShipmentCreatedData,
    ShipmentLeg,
    parse_event,
)
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from pydantic import ValidationError
from sqlmodel import Session, col, select

from services.coi_tracking import commands
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import Bag, Container, Shipment
from services.coi_tracking.scan_writer import ScanSubmission, apply_submissions
from services.common.consumer import (
    BATCH_WAIT_MS,
    describe_validation_error,
    event_log_context,
    publish_dead_letter,
    register_consumer,
    run_with_retries,
    take_fresh,
)
from services.common.db import locked
from services.common.outbox import enqueue
from services.common.service import Runtime
from services.common.topics import COURIER_SCANS, ORDERS, SHIPMENTS

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


def mark_order_cancelled(session: Session, event: OrderCancelled) -> None:
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


def open_return_leg(session: Session, event: ProductReleasedForShipment) -> None:
    """The manufacturer released the product: the order's return leg may now be picked up."""
    shipment = session.exec(
        locked(
            session,
            select(Shipment)
            .where(Shipment.order_id == event.data.order_id)
            .where(Shipment.leg == ShipmentLeg.RETURN),
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


def wire(runtime: Runtime, planning: Planning) -> None:
    def on_order_accepted(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderAccepted)
        plan_return_shipment(session, event, planning)

    def on_collection_recorded(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, CollectionRecorded)
        plan_outbound_leg(session, event, planning)

    def on_order_cancelled(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, OrderCancelled)
        mark_order_cancelled(session, event)

    def on_product_released(session: Session, event: AnyEvent) -> None:
        assert isinstance(event, ProductReleasedForShipment)
        open_return_leg(session, event)

    register_consumer(
        runtime.broker,
        topics=[ORDERS],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers={
            OrderAccepted: on_order_accepted,
            CollectionRecorded: on_collection_recorded,
            OrderCancelled: on_order_cancelled,
            ProductReleasedForShipment: on_product_released,
        },
        after_commit=runtime.relay.notify,
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


def wire_courier_scans(runtime: Runtime, *, batch_size: int = 2000) -> None:
    """Couriers' systems publish scans to `couriers.scans`. They are consumed in batches: one transaction
    and one offset commit per batch, each scan under the same rules as an HTTP scan, each event id once."""
    engine = runtime.engine

    def apply_batch(events: list[CourierScan]) -> list[tuple[CourierScan, str]]:
        with Session(engine) as session:
            fresh = take_fresh(session, SCANS_GROUP_ID, events)
            results = apply_submissions(session, [submission_of(event) for event in fresh])
            session.commit()  # the batch's rows go in together: one driver call per table
        return [
            (event, str(result))
            for event, result in zip(fresh, results, strict=True)
            if isinstance(result, Exception)
        ]

    @runtime.broker.subscriber(
        COURIER_SCANS,
        group_id=SCANS_GROUP_ID,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        batch=True,
        batch_timeout_ms=BATCH_WAIT_MS,
        max_records=batch_size,
        decoder=lambda message: message.body,
        title="coi-tracking:couriers.scans",
    )
    async def consume_scans(bodies: list[bytes], message: KafkaMessage) -> None:
        records = message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
        events: list[CourierScan] = []
        record_of: dict[str, Any] = {}
        for record, body in zip(records, bodies, strict=True):
            try:
                event = parse_event(body)
            except ValidationError as error:
                await publish_dead_letter(
                    runtime.broker,
                    record,
                    f"invalid event: {describe_validation_error(error)}",
                    SCANS_GROUP_ID,
                )
                continue
            if isinstance(event, CourierScan):
                events.append(event)
                record_of[str(event.id)] = record
            else:
                await publish_dead_letter(
                    runtime.broker, record, f"refused: {event.type} is not a courier scan", SCANS_GROUP_ID
                )
        positions: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            positions[partition] = max(positions.get(partition, 0), record.offset + 1)
        # One batch is applied at a time, in order: this one starts once the previous one is done. Meanwhile
        # the consumer goes on fetching and parsing the next batch (while a batch waits on the database).
        if applying:
            await asyncio.wait(applying)
        task = asyncio.create_task(settle(events, record_of, positions, message.consumer))
        applying.add(task)
        task.add_done_callback(applying.discard)

    applying: set[asyncio.Task[None]] = set()
    last_commit: asyncio.Task[None] | None = None

    async def settle(
        events: list[CourierScan],
        record_of: dict[str, Any],
        positions: dict[TopicPartition, int],
        consumer: AIOKafkaConsumer,
    ) -> None:
        """Apply a batch, dead-letter what failed, then have the batch's positions committed (never a later
        batch's: those are not applied yet). The commit, a round trip to the broker, goes on while the next
        batch is applied; commits follow each other in batch order. A commit lost to a rebalance or a
        shutdown only means a redelivery, which the inbox drops."""
        nonlocal last_commit
        if events:
            for event, reason in await apply_or_isolate(events):
                await publish_dead_letter(runtime.broker, record_of[str(event.id)], reason, SCANS_GROUP_ID)
            runtime.relay.notify()
        last_commit = asyncio.create_task(commit_after(last_commit, positions, consumer))

    async def commit_after(
        previous: asyncio.Task[None] | None, positions: dict[TopicPartition, int], consumer: AIOKafkaConsumer
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await consumer.commit(positions)
        except KafkaError as error:
            log.warning("scans.commit_failed", error=repr(error)[:300])

    async def drain() -> None:
        """At shutdown, once consuming has stopped: let the batch being applied finish, and its commit."""
        if applying:
            await asyncio.wait(applying)
        if last_commit is not None:
            await asyncio.wait([last_commit])

    runtime.drains.append(drain)

    async def apply_or_isolate(events: list[CourierScan]) -> list[tuple[CourierScan, str]]:
        """The batch in one transaction; if it fails as a whole, each scan in its own transaction with the
        consumers' bounded retries, so that only a scan that keeps failing is dead-lettered. Returns the
        scans to dead-letter, with the reason."""
        try:
            refused = await run_with_retries(partial(apply_batch, events), max_attempts=1)
        except Exception as error:
            log.warning("scans.group_failed", events=len(events), error=repr(error)[:300])
        else:
            return [(event, f"refused: {reason}") for event, reason in refused]
        dead: list[tuple[CourierScan, str]] = []
        attempts = runtime.settings.consumer_max_attempts
        for event in events:
            with event_log_context(event):
                try:
                    refused = await run_with_retries(partial(apply_batch, [event]), attempts)
                except Exception as error:
                    dead.append((event, f"failed after {attempts} attempts: {error!r}"))
                    continue
            dead.extend((event, f"refused: {reason}") for event, reason in refused)
        return dead
