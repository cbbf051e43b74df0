"""The one list of topics: one per producing service, keyed by COI, each with its dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from services.common.kafka_access import KafkaAccess

ORDERS = "orders.events"
SHIPMENTS = "shipments.events"
SCHEDULING = "scheduling.events"
COURIER_SCANS = "couriers.scans"
"""Inbound: scans that couriers' systems publish (consumed by COI tracking)."""
LEDGER_HEADS = "ledger.heads"
"""COI tracking's signed custody-ledger heads, one per entry (I3). Append-only: cleanup.policy=delete with
infinite retention keeps every head ever published, so a chain rewritten later still contradicts the heads
published before; compaction would keep only the newest head per key and let a later record erase the
evidence of an earlier one. No dead-letter topic: nobody consumes it but `verify`."""
ORDER_INTAKE_SOURCE = "cgt/order-intake"
COI_TRACKING_SOURCE = "cgt/coi-tracking"
SCHEDULING_SOURCE = "cgt/scheduling"
TOPIC_SOURCES = {ORDERS: ORDER_INTAKE_SOURCE, SHIPMENTS: COI_TRACKING_SOURCE, SCHEDULING: SCHEDULING_SOURCE}
"""The one service whose principal the broker's ACLs let write each service topic (deploy/principals.py):
an event there naming another `source` is forged or misrouted, and is believed no further than the ACL."""


def source_refusal(topic: str, source: str) -> str | None:
    """Why an event's `source` cannot be believed on `topic`, or None (couriers' scans are vouched for by
    their signature instead: services/coi_tracking/courier_keys.py)."""
    producer = TOPIC_SOURCES.get(topic)
    if producer is None or source == producer:
        return None
    return f"source is not {producer}, the only producer the ACL of {topic} admits"


APPEND_ONLY = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
EVENT_PARTITIONS = 6
DLQ_PARTITIONS = 1
_TOPIC_ALREADY_EXISTS = 36


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


ALL_TOPICS: tuple[TopicSpec, ...] = (
    *(
        spec
        for topic in (ORDERS, SHIPMENTS, SCHEDULING, COURIER_SCANS)
        for spec in (TopicSpec(topic, EVENT_PARTITIONS), TopicSpec(dlq(topic), DLQ_PARTITIONS))
    ),
    TopicSpec(LEDGER_HEADS, EVENT_PARTITIONS, APPEND_ONLY),
)


async def ensure_topics(
    kafka: KafkaAccess,
    topics: tuple[TopicSpec, ...] = ALL_TOPICS,
    replication_factor: int = 1,
    timeout_seconds: float = 60.0,
) -> None:
    """Create missing topics. A broker that is still joining its cluster answers with retriable errors
    (a node not ready yet): those are retried until `timeout_seconds`, anything else fails at once."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            await _create_missing(kafka, topics, replication_factor)
            return
        except KafkaError as error:
            if not error.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _create_missing(kafka: KafkaAccess, topics: tuple[TopicSpec, ...], replication_factor: int) -> None:
    """create_topics does not raise per topic, so every error code is checked."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topics if spec.name not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [
                NewTopic(spec.name, spec.partitions, replication_factor, topic_configs=spec.configs)
                for spec in missing
            ]
        )
        failures = [
            f"{name}: error {code} {message}"
            for name, code, *rest in response.topic_errors
            for message in [rest[0] if rest else ""]
            if code not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if failures:
            raise RuntimeError("could not create topics: " + "; ".join(failures))
    finally:
        await admin.close()
