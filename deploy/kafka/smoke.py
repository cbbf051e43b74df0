"""Smoke check of the local broker with the client the services use (aiokafka): a topic, an idempotent
producer, a consumer group with manual commits, and a broker restart in the middle.

    python deploy/kafka/smoke.py        # exit 0 on success, prints what it measured
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from kafka_local import LocalKafka  # type: ignore[import-not-found]

from services.common.kafka_access import KafkaAccess

TOPIC = "smoke"
GROUP = "smoke-group"
PARTITIONS = 3
BEFORE, CONSUMED_BEFORE, AFTER = 30, 20, 10
TIMEOUT = 180.0


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAIL: {message}")


async def create_topic(kafka: KafkaAccess) -> None:
    """create_topics does not raise on per-topic errors: every code in the response is checked."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        new = [NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)]
        response = await admin.create_topics(new)
        for topic, code, *_ in response.topic_errors:
            check(code == 0, f"create {topic}: {for_code(code).__name__} ({code})")
        again = await admin.create_topics(new)
        codes = [code for _, code, *_ in again.topic_errors]
        check(codes == [36], f"second create should answer TOPIC_ALREADY_EXISTS (36), got {codes}")
        check(TOPIC in await admin.list_topics(), "topic missing from metadata")
    finally:
        await admin.close()


def producer(kafka: KafkaAccess) -> AIOKafkaProducer:
    return AIOKafkaProducer(**kafka.client_options(), enable_idempotence=True, acks="all")


async def produce(client: AIOKafkaProducer, prefix: str, count: int) -> float:
    started = time.monotonic()
    for i in range(count):
        await client.send_and_wait(TOPIC, f"{prefix}-{i}".encode(), key=str(i).encode())
    return time.monotonic() - started


async def consume(kafka: KafkaAccess, limit: int) -> dict[TopicPartition, list[int]]:
    """Read `limit` records as GROUP (bounded by a deadline); commit exactly what was read."""
    consumer = AIOKafkaConsumer(
        TOPIC,
        **kafka.client_options(),
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: dict[TopicPartition, list[int]] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(map(len, seen.values())) < limit:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if sum(map(len, seen.values())) >= limit:
                        break
                    seen.setdefault(tp, []).append(record.offset)
        await consumer.commit({tp: offsets[-1] + 1 for tp, offsets in seen.items()})
    finally:
        await consumer.stop()
    return seen


async def log_size(kafka: KafkaAccess) -> int:
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def committed(kafka: KafkaAccess) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def run(kafka: LocalKafka) -> None:
    await create_topic(kafka.access())
    old = producer(kafka.access())
    await old.start()
    try:
        took = await produce(old, "before", BEFORE)
        print(f"produced {BEFORE} (idempotent, acks=all) in {took * 1000:.0f} ms")
        first = await consume(kafka.access(), CONSUMED_BEFORE)
        check(sum(map(len, first.values())) == CONSUMED_BEFORE, f"consumed {first}")
        before = await committed(kafka.access())
        print(f"consumed and committed {CONSUMED_BEFORE}: {before}")

        started = time.monotonic()
        await asyncio.to_thread(kafka.restart)  # start() runs its own event loop: not on this one
        print(f"broker restarted (SIGTERM + start, same data) in {time.monotonic() - started:.1f}s")

        # Right after a restart the group coordinator may still be loading its offsets: wait, bounded.
        deadline = time.monotonic() + 30
        while (after := await committed(kafka.access())) != before and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        check(after == before, f"committed offsets changed across the restart: {before} -> {after}")
        took = await produce(old, "after-old", AFTER)
        print(f"producer from before the restart published {AFTER} again in {took * 1000:.0f} ms")
    finally:
        await old.stop()
    new = producer(kafka.access())
    await new.start()
    try:
        took = await produce(new, "after-new", AFTER)
        print(f"new producer published {AFTER} in {took * 1000:.0f} ms")
    finally:
        await new.stop()

    expected = BEFORE - CONSUMED_BEFORE + 2 * AFTER
    rest = await consume(kafka.access(), expected)  # waits for the records, not for a quiet poll
    for tp, offsets in rest.items():
        start = before.get(tp.partition) or 0
        check(offsets == list(range(start, start + len(offsets))), f"{tp}: {offsets} not from {start}")
    total = sum(map(len, rest.values()))
    check(total == expected, f"after restart the group read {total}, expected {expected}")
    written = await log_size(kafka.access())
    check(written == BEFORE + 2 * AFTER, f"the log holds {written} records: a send was duplicated or lost")
    print(f"group resumed at its committed offsets and read the remaining {total}, no gaps or repeats")


def main() -> int:
    kafka = LocalKafka()
    started = time.monotonic()
    kafka.start()
    print(f"broker {kafka.bootstrap} ready in {time.monotonic() - started:.1f}s (first start, formatted)")
    try:  # bounded: aiokafka retries a vanished broker forever
        asyncio.run(asyncio.wait_for(run(kafka), timeout=TIMEOUT))
    except BaseException:
        code = kafka.process.poll() if kafka.process else "not started"
        print(f"broker exit code: {code}\n{kafka.log_tail()}", file=sys.stderr)
        raise
    finally:
        started = time.monotonic()
        kafka.cleanup()
        print(f"broker stopped in {time.monotonic() - started:.1f}s")
    print("smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
