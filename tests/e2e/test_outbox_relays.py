"""Several outbox relays on one PostgreSQL database (several instances of a service): every row is published
exactly once, and in id order per key, because one relay at a time publishes (the outbox's advisory lock)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from services.common.kafka_access import KafkaAccess
from services.common.outbox import OutboxMessage, OutboxRelay, PendingMessage
from services.common.service import COMMON_TABLES
from services.common.topics import TopicSpec, ensure_topics
from services.common.unit_of_work import session_factory
from tests.support.infra import database, kafka_broker

pytestmark = pytest.mark.e2e
KEYS = 17


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaAccess]:
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker.access()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with database("postgresql", tmp_path, COMMON_TABLES) as engine:
        yield engine


@pytest.fixture
async def topic(kafka: KafkaAccess) -> AsyncIterator[str]:
    name = f"relay.test.{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka, (TopicSpec(name, 3),))
    yield name


def enqueue_rows(engine: Engine, topic: str, rows: int) -> None:
    """`rows` events over `KEYS` keys, each payload carrying its position."""
    with session_factory(engine)() as session:
        for n in range(rows):
            session.add(
                OutboxMessage(
                    event_id=str(uuid.uuid4()),
                    event_type="t",
                    topic=topic,
                    key=f"k{n % KEYS}",
                    payload=json.dumps({"n": n}),
                    correlation_id="c",
                )
            )
        session.commit()


def unpublished(engine: Engine) -> int:
    with session_factory(engine)() as session:
        query = (
            select(func.count()).select_from(OutboxMessage).where(col(OutboxMessage.published_at).is_(None))
        )
        return session.exec(query).one()


async def published(kafka: KafkaAccess, topic: str, expected: int) -> dict[str, list[int]]:
    """Every record on the topic (waiting for `expected`, then a little longer for any extra one): each
    key's positions in the order they arrived."""
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_options(), auto_offset_reset="earliest", group_id=f"g-{topic}"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        while len(records) < expected:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout=30)
            records.extend(record for partition in batch.values() for record in partition)
        extra = await consumer.getmany(timeout_ms=1500)
        records.extend(record for partition in extra.values() for record in partition)
    finally:
        await consumer.stop()
    per_key: dict[str, list[int]] = {}
    for record in records:
        per_key.setdefault(record.key.decode(), []).append(json.loads(record.value)["n"])
    return per_key


async def test_two_relays_publish_every_row_exactly_once_in_order_per_key(
    engine: Engine, kafka: KafkaAccess, topic: str
) -> None:
    rows = 600
    enqueue_rows(engine, topic, rows)
    relays = [OutboxRelay(engine, kafka, batch=25) for _ in range(2)]
    for relay in relays:
        await relay.connect()

    async def publish_until_empty(relay: OutboxRelay) -> None:
        """Keep trying while rows are pending: a relay that finds the other one publishing gets none."""
        async with asyncio.timeout(60):
            while await asyncio.to_thread(unpublished, engine) > 0:
                if await relay.publish_pending() == 0:
                    await asyncio.sleep(0.01)

    try:
        await asyncio.gather(*(publish_until_empty(relay) for relay in relays))
    finally:
        for relay in relays:
            await relay.stop()
    per_key = await published(kafka, topic, rows)
    assert sum(len(positions) for positions in per_key.values()) == rows  # none twice, none lost
    for key, positions in per_key.items():
        assert positions == sorted(positions), f"{key} published out of order: {positions}"
    assert sorted(n for positions in per_key.values() for n in positions) == list(range(rows))


async def test_a_second_relay_waits_while_the_first_publishes_then_takes_the_next_rows(
    engine: Engine, kafka: KafkaAccess, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue_rows(engine, topic, 50)
    first, second = OutboxRelay(engine, kafka, batch=25), OutboxRelay(engine, kafka, batch=25)
    for relay in (first, second):
        await relay.connect()
    first_claimed, release_first = asyncio.Event(), asyncio.Event()
    send = OutboxRelay._send_in_batches

    async def first_waits_before_sending(producer: Any, rows: list[PendingMessage]) -> list[Any]:
        if producer is first._producer:
            first_claimed.set()
            await release_first.wait()
        return await send(producer, rows)

    monkeypatch.setattr(OutboxRelay, "_send_in_batches", staticmethod(first_waits_before_sending))
    try:
        first_round = asyncio.create_task(first.publish_pending())
        async with asyncio.timeout(30):
            await first_claimed.wait()
        assert await second.publish_pending() == 0, "the second relay published while the first held its rows"
        release_first.set()
        assert await first_round == 25
        assert await second.publish_pending() == 25
    finally:
        release_first.set()
        for relay in (first, second):
            await relay.stop()
    per_key = await published(kafka, topic, 50)
    assert sorted(n for positions in per_key.values() for n in positions) == list(range(50))
    for key, positions in per_key.items():
        assert positions == sorted(positions), f"{key} published out of order: {positions}"
