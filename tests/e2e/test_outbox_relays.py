"""Several outbox relays on one PostgreSQL database never publish a row twice (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from sqlmodel import Session

from deploy.stack import create_postgres_databases, drop_postgres_databases
from services.common.db import create_tables, make_engine
from services.common.outbox import OutboxMessage, OutboxRelay
from services.common.service import COMMON_TABLES
from services.common.topics import TopicSpec, ensure_topics
from tests.support.infra import kafka_broker

pytestmark = pytest.mark.e2e
ROWS = 600


async def test_two_relays_publish_every_row_exactly_once(tmp_path: Path) -> None:
    urls = create_postgres_databases(["relay-test"])
    engine = make_engine(urls["relay-test"])
    topic = f"relay.test.{uuid.uuid4().hex[:6]}"
    try:
        create_tables(engine, COMMON_TABLES)
        with Session(engine) as session:
            for n in range(ROWS):
                session.add(
                    OutboxMessage(
                        event_id=str(uuid.uuid4()),
                        event_type="t",
                        topic=topic,
                        key=f"k{n % 17}",
                        payload=f'{{"n": {n}}}',
                        correlation_id="c",
                    )
                )
            session.commit()
        broker_context = kafka_broker(tmp_path / "kafka")
        bootstrap = await asyncio.to_thread(
            broker_context.__enter__
        )  # the launcher blocks: keep it off the loop
        try:
            await ensure_topics(bootstrap, (TopicSpec(topic, 3),))
            relays = [OutboxRelay(engine, bootstrap, batch=25) for _ in range(2)]
            for relay in relays:
                await relay.connect()

            async def drain(relay: OutboxRelay) -> int:
                published = 0
                while (count := await relay.publish_pending()) > 0:
                    published += count
                return published

            counts = await asyncio.gather(*(drain(relay) for relay in relays))
            for relay in relays:
                await relay.stop()
            assert sum(counts) == ROWS and all(c > 0 for c in counts), (
                counts
            )  # both relays worked, no row twice
            consumer = AIOKafkaConsumer(
                topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"g-{topic}"
            )
            await consumer.start()
            seen: list[bytes] = []
            try:
                while len(seen) < ROWS:
                    batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout=30)
                    seen.extend(record.value for records in batch.values() for record in records)
                extra = await consumer.getmany(timeout_ms=1500)
                seen.extend(record.value for records in extra.values() for record in records)
            finally:
                await consumer.stop()
            assert len(seen) == ROWS and len(set(seen)) == ROWS
        finally:
            await asyncio.to_thread(broker_context.__exit__, None, None, None)
    finally:
        engine.dispose()
        drop_postgres_databases(urls)
