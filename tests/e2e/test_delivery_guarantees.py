"""Nothing lost, nothing doubled (DESIGN §6): dead letters keep partitions flowing, redelivery is harmless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cgt_contracts.events import OrderAcceptedV2

from deploy.observe import EventLog
from services.common.topics import ORDERS, dlq
from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import place_accepted_order, shipment_for
from tests.support.infra import produce, wait_committed

pytestmark = pytest.mark.e2e


async def test_a_malformed_event_goes_to_the_dead_letter_topic_with_its_reason(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    dead = EventLog(stack.kafka, [dlq(ORDERS)])
    await dead.start()
    try:
        marker = json.dumps(
            {"type": "order.accepted.v1", "subject": "CHW4321269GARBG0", "m": id(dead)}
        ).encode()
        partition, offset = await produce(stack.kafka, ORDERS, marker, key=b"CHW4321269GARBG0")
        for group in ("coi-tracking", "scheduling"):
            await wait_committed(stack.kafka, group, ORDERS, partition, offset)
        found = await dead.wait_raw(lambda _topic, value, _headers: value == marker, count=2)
        letters = [(value, headers) for _, value, headers in found]
        groups = sorted(headers["dlq-consumer-group"].decode() for _, headers in letters)
        assert groups == ["coi-tracking", "scheduling"]
        for _, headers in letters:
            assert headers["dlq-source-topic"] == ORDERS.encode()
            assert headers["dlq-source-offset"] == str(offset).encode()
            reason = headers["dlq-reason"].decode()
            assert reason.startswith("invalid event:")
            assert (
                "order.accepted.v1.data: Field required" in reason
                and "order.accepted.v1.m: Extra inputs" in reason
            )
    finally:
        await dead.stop()


async def test_the_partition_keeps_flowing_after_a_poison_message(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    key = order["coi"].encode()
    await produce(stack.kafka, ORDERS, b"\x00\x01 not json", key=key)
    # The next order's events flow on, whatever partition they land on.
    following = await place_accepted_order(http, stack)
    assert (await shipment_for(http, stack, events, following["coi"]))["coi"] == following["coi"]


async def test_a_redelivered_event_is_applied_once(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    coi = order["coi"]
    await shipment_for(http, stack, events, coi)
    accepted = next(e for e in events.of(coi) if e.type == "order.accepted.v2")
    original = accepted.model_dump_json().encode()
    partition, offset = await produce(stack.kafka, ORDERS, original, key=coi.encode())
    for group in ("coi-tracking", "scheduling"):
        await wait_committed(stack.kafka, group, ORDERS, partition, offset)
    shipments = (
        await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COORDINATOR)
    ).json()
    assert len(shipments) == 1
    created = [e for e in events.of(coi) if e.type == "shipment.created.v1"]
    assert len(created) == 1


async def test_dead_letters_are_listed_and_one_is_replayed_after_a_fix(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    """An accepted order whose event a consumer once gave up on (a dead letter) is replayed with the CLI:
    the consumer that had not applied it now does, the others skip it through their inbox."""
    order = await place_accepted_order(http, stack)
    accepted = await events.wait_for(lambda e: e.type == "order.accepted.v2" and e.subject == order["coi"])
    assert isinstance(accepted, OrderAcceptedV2)
    lost_order = accepted.model_copy(
        update={
            "id": uuid.uuid4(),
            "subject": "CHW432126ZZZZZ0" + "1",
            "data": accepted.data.model_copy(update={"order_id": uuid.uuid4(), "coi": "CHW432126ZZZZZ01"}),
        }
    )
    headers = [
        ("dlq-reason", b"failed after 5 attempts: OperationalError('database unavailable')"),
        ("dlq-source-topic", ORDERS.encode()),
        ("dlq-source-partition", b"0"),
        ("dlq-source-offset", b"0"),
        ("dlq-consumer-group", b"coi-tracking"),
    ]
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**stack.kafka.client_options(), acks="all")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(
            dlq(ORDERS), lost_order.model_dump_json().encode(), key=b"CHW432126ZZZZZ01", headers=headers
        )
    finally:
        await producer.stop()
    listing = _cli(stack, "list", "--topic", dlq(ORDERS))
    assert listing.returncode == 0
    listed = [json.loads(line) for line in listing.stdout.splitlines()]
    mine = [d for d in listed if d["offset"] == metadata.offset]
    assert (
        mine and "database unavailable" in mine[0]["reason"] and mine[0]["consumer_group"] == "coi-tracking"
    )
    replayed = _cli(
        stack,
        "replay",
        "--topic",
        dlq(ORDERS),
        "--offset",
        str(metadata.offset),
        "--partition",
        str(metadata.partition),
    )
    assert replayed.returncode == 0, replayed.stderr
    created = await events.wait_for(
        lambda e: e.type == "shipment.created.v1" and e.subject == "CHW432126ZZZZZ01"
    )
    assert str(created.data.order_id) == str(lost_order.data.order_id)  # type: ignore[union-attr]


def _cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.common.dlq", *args, "--bootstrap", stack.kafka.bootstrap_servers],
        env={**os.environ, **stack.kafka.environment()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
