"""Issue 17, the broker: nobody forges on it. The broker itself refuses each write outside a principal's
ACL, and a consumer believes an event's `source` only as far as the topic's ACL vouches for it."""

from __future__ import annotations

import asyncio
import base64
import stat
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from cgt_contracts.events import (
    CourierScanDataV2,
    CourierScanSubmittedV2,
    ScanType,
    ShipmentDelivered,
    ShipmentDeliveredData,
)

from deploy.kafka.kafka_local import LocalKafka
from deploy.observe import EventLog
from deploy.principals import COURIER_COMPANIES, courier_principal, grants
from deploy.stack import courier_signature
from services.coi_tracking.courier_keys import signature_headers
from services.common.kafka_access import KafkaAccess
from services.common.topics import ALL_TOPICS, COURIER_SCANS, LEDGER_HEADS, ORDERS, SCHEDULING, SHIPMENTS, dlq
from tests.e2e import journey
from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import book_first_option
from tests.e2e.test_scheduling import dispatched_case, midday, new_site
from tests.support.infra import produce


def readable_by_others(directory: Path) -> list[str]:
    return [
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077
    ]


def test_the_stacks_database_log_and_broker_files_are_their_owners_only(stack: RunningStack) -> None:
    """Databases (SQLite: the file, its WAL and shared memory), service logs, and the broker's data, keys
    and log: none readable by group or others (PostgreSQL keeps its own files, 0600 by default)."""
    directories = [stack.stack.workdir]
    if isinstance(stack.broker, LocalKafka):  # not a broker the environment names
        directories.append(stack.broker.data_dir)
    if stack.backend == "sqlite":
        directories.append(stack.stack.workdir.parent / "db")
        assert len(list((stack.stack.workdir.parent / "db").glob("*.db*"))) >= 3
    assert all(list(directory.rglob("*")) for directory in directories)
    assert [readable_by_others(directory) for directory in directories] == [[] for _ in directories]


async def refused_write(access: KafkaAccess, topic: str) -> bool:
    """Whether the broker refuses this principal's write to `topic` (the record never reaches the log)."""
    producer = AIOKafkaProducer(**access.client_options(), acks="all", request_timeout_ms=10000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"forged")
    except TopicAuthorizationFailedError:
        return True
    finally:
        await producer.stop()
    return False


async def test_the_broker_refuses_every_write_outside_a_principals_acl(stack: RunningStack) -> None:
    """Each service writes only its own topic and its dead-letter topics; a courier's system only
    `couriers.scans`. Every other (principal, topic) pair is tried, and each is refused by the broker."""
    tried = 0
    for user, grant in grants().items():
        access = stack.broker.access(user)
        for topic in (spec.name for spec in ALL_TOPICS if spec.name not in grant.writes):
            assert await refused_write(access, topic), f"{user} could write {topic}"
            tried += 1
    assert tried == 33  # 3 services (17 refused) and 2 courier companies (8 each) against 9 topics


async def test_a_courier_system_cannot_read_the_services_topics_or_use_their_groups(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    """A courier's principal may write `couriers.scans` and nothing else: the services' topics are not even
    described to it, a fetch from them returns nothing although they hold events, and their consumer
    groups' offsets are refused."""
    site = await new_site(http, stack)
    order_body = journey.order_body(treatment_center_id=site.id, prescriber_npi=site.npi)
    placed = await http.post(f"{stack.orders}/orders", json=order_body, headers=COORDINATOR)
    assert placed.status_code == 201, placed.text
    access = stack.broker.access(courier_principal(COURIER_COMPANIES[0]))
    admin_view = AIOKafkaConsumer(**stack.kafka.client_options(), enable_auto_commit=False)
    reader = AIOKafkaConsumer(**access.client_options(), enable_auto_commit=False)
    await admin_view.start()
    await reader.start()
    try:
        assert {ORDERS, SHIPMENTS, SCHEDULING, LEDGER_HEADS} <= await admin_view.topics()
        assert not {ORDERS, SHIPMENTS, SCHEDULING, LEDGER_HEADS} & await reader.topics()
        held = sum((await admin_view.end_offsets([TopicPartition(ORDERS, p) for p in range(6)])).values())
        assert held > 0
        partitions = [TopicPartition(ORDERS, p) for p in range(6)]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        fetched = await reader.getmany(timeout_ms=2000)
        assert not any(fetched.values())
    finally:
        await reader.stop()
        await admin_view.stop()
    admin = AIOKafkaAdminClient(**access.client_options())
    await admin.start()
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            await admin.list_consumer_group_offsets("coi-tracking")
    finally:
        await admin.close()


async def dead_letters_of(
    log: EventLog, event_id: str, groups: set[str], timeout: float = 30
) -> dict[str, str]:
    """The dead-letter reason per consumer group for one event, once every group in `groups` has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reasons = {
            headers["dlq-consumer-group"].decode(): headers["dlq-reason"].decode()
            for _topic, value, headers in log.raw
            if event_id.encode() in value and "dlq-reason" in headers
        }
        if groups <= reasons.keys():
            return reasons
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no dead letter of {event_id} from {groups} within {timeout}s")


async def test_a_forged_delivery_on_shipments_events_is_dead_lettered_and_confirms_nothing(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    """Today's forgery: a `shipment.delivered.v1` whose source is not COI tracking, for a shipment still
    dispatched, confirmed its appointment and named the forger in order intake's history. Written here by
    the super user (as a stolen or misconfigured credential would), it is refused by both consumers."""
    site = await new_site(http, stack)
    coi, shipment_id = await dispatched_case(http, stack, events, site, eta=midday(3))
    booked = await book_first_option(http, stack, events, coi)
    forged = ShipmentDelivered(
        source="courier/cryo-express",
        subject=coi,
        correlationid=f"forged-{uuid.uuid4().hex[:8]}",
        data=ShipmentDeliveredData(
            shipment_id=uuid.UUID(shipment_id),
            coi=coi,
            treatment_center_id=site.id,
            delivered_at=datetime.now(UTC),
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=-180.0,
        ),
    )
    dead = EventLog(stack.kafka, [dlq(SHIPMENTS)])
    await dead.start()
    try:
        await produce(stack.kafka, SHIPMENTS, forged.model_dump_json().encode(), key=coi.encode())
        reasons = await dead_letters_of(dead, str(forged.id), {"order-intake", "scheduling"})
    finally:
        await dead.stop()
    for reason in reasons.values():
        assert "source is not cgt/coi-tracking" in reason
    appointment = await http.get(f"{stack.scheduling}/appointments/{booked['id']}", headers=COORDINATOR)
    assert appointment.json()["state"] == "tentative"
    shipment = await http.get(f"{stack.tracking}/shipments/{shipment_id}", headers=COORDINATOR)
    assert shipment.json()["status"] != "delivered"


def courier_scan_event(company: str) -> CourierScanSubmittedV2:
    """A checkpoint scan for a shipment nobody has: any that got past the signature check would be
    dead-lettered for another reason (no such shipment), so each reason below names its own refusal."""
    return CourierScanSubmittedV2(
        source="courier/cryo-express",
        subject="CHW43212600000M*",
        correlationid=f"signature-{uuid.uuid4().hex[:8]}",
        data=CourierScanDataV2(
            shipment_id=uuid.uuid4(),
            scan_type=ScanType.CHECKPOINT,
            bag_cois=["CHW43212600000M*"],
            location="JFK cargo",
            device_time=datetime.now(UTC),
            courier_id="courier-ben",
            courier_company=company,
        ),
    )


async def test_courier_scans_count_only_when_signed_by_their_companys_registered_key(
    stack: RunningStack,
) -> None:
    """The company of a Kafka scan is the signing key's: unsigned, badly signed, signed by an unknown key,
    or naming another company than the key's, a scan is dead-lettered with the reason before any rule."""
    unsigned = courier_scan_event("CRYO-EXPRESS")
    tampered = courier_scan_event("CRYO-EXPRESS")
    unknown = courier_scan_event("CRYO-EXPRESS")
    impostor = courier_scan_event("OTHER-LOGISTICS")  # CRYO-EXPRESS's system claiming another company
    signed_tampered = courier_signature(tampered.model_dump_json().encode())
    altered = tampered.model_copy(update={"data": tampered.data.model_copy(update={"location": "elsewhere"})})
    cases = {
        str(unsigned.id): (unsigned.model_dump_json().encode(), [], "unsigned"),
        str(tampered.id): (altered.model_dump_json().encode(), signed_tampered, "bad signature"),
        str(unknown.id): (
            unknown.model_dump_json().encode(),
            signature_headers(
                unknown.model_dump_json().encode(), "stolen-key", base64.b64encode(b"k" * 32).decode()
            ),
            "names no key registered",
        ),
        str(impostor.id): (
            impostor.model_dump_json().encode(),
            courier_signature(impostor.model_dump_json().encode(), "CRYO-EXPRESS"),
            "courier_company is not the company of the signing key",
        ),
    }
    courier = stack.broker.access(courier_principal("CRYO-EXPRESS"))
    dead = EventLog(stack.kafka, [dlq(COURIER_SCANS)])
    await dead.start()
    try:
        for value, headers, _ in cases.values():
            await produce(courier, COURIER_SCANS, value, headers=headers)
        for event_id, (_, _, expected) in cases.items():
            reasons = await dead_letters_of(dead, event_id, {"coi-tracking-scans"})
            assert expected in reasons["coi-tracking-scans"], (expected, reasons)
    finally:
        await dead.stop()
