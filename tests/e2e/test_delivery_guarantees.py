"""Nothing lost, nothing doubled (DESIGN §6): dead letters keep partitions flowing, redelivery is harmless."""

from __future__ import annotations

import json

import httpx
import pytest

from deploy.observe import EventLog
from services.common.topics import ORDERS, dlq
from tests.e2e.conftest import COORDINATOR, RunningStack
from tests.e2e.journey import place_accepted_order, shipment_for
from tests.support.infra import produce, wait_committed

pytestmark = pytest.mark.e2e


async def test_a_malformed_event_goes_to_the_dead_letter_topic_with_its_reason(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    dead = EventLog(stack.bootstrap, [dlq(ORDERS)])
    await dead.start()
    try:
        marker = json.dumps(
            {"type": "order.accepted.v1", "subject": "CHW4321269GARBG0", "m": id(dead)}
        ).encode()
        partition, offset = await produce(stack.bootstrap, ORDERS, marker, key=b"CHW4321269GARBG0")
        for group in ("coi-tracking", "scheduling"):
            await wait_committed(stack.bootstrap, group, ORDERS, partition, offset)
        letters = [(value, headers) for topic, value, headers in dead.raw if value == marker]
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
    await produce(stack.bootstrap, ORDERS, b"\x00\x01 not json", key=key)
    # The next order's events flow on, whatever partition they land on.
    following = await place_accepted_order(http, stack)
    assert (await shipment_for(http, stack, events, following["coi"]))["coi"] == following["coi"]


async def test_a_redelivered_event_is_applied_once(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    coi = order["coi"]
    await shipment_for(http, stack, events, coi)
    accepted = next(e for e in events.of(coi) if e.type == "order.accepted.v1")
    original = accepted.model_dump_json().encode()
    partition, offset = await produce(stack.bootstrap, ORDERS, original, key=coi.encode())
    for group in ("coi-tracking", "scheduling"):
        await wait_committed(stack.bootstrap, group, ORDERS, partition, offset)
    shipments = (
        await http.get(f"{stack.tracking}/shipments", params={"coi": coi}, headers=COORDINATOR)
    ).json()
    assert len(shipments) == 1
    created = [e for e in events.of(coi) if e.type == "shipment.created.v1"]
    assert len(created) == 1
