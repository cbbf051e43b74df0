"""Dead letters: list them, and replay one to its source topic once the cause is fixed.

    python -m services.common.dlq list   [--topic orders.events.dlq] [--bootstrap 127.0.0.1:9092]
    python -m services.common.dlq replay --topic orders.events.dlq --offset 7

A replayed message goes back to `dlq-source-topic` with its original key, value and headers (the dlq-*
headers dropped). Every consumer group of that topic sees it again: the groups that had applied it skip
it through their inbox; the one that could not now applies it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.common.kafka_access import KafkaAccess, kafka_from_environment
from services.common.topics import ALL_TOPICS

DLQ_TOPICS = [spec.name for spec in ALL_TOPICS if spec.name.endswith(".dlq")]


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def reason(self) -> str:
        return self.headers.get("dlq-reason", b"").decode(errors="replace")

    def summary(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key.decode(errors="replace") if self.key else None,
            "source": f"{self.headers.get('dlq-source-topic', b'?').decode()}"
            f"[{self.headers.get('dlq-source-partition', b'?').decode()}]@{self.headers.get('dlq-source-offset', b'?').decode()}",
            "consumer_group": self.headers.get("dlq-consumer-group", b"").decode(),
            "reason": self.reason[:500],
            "bytes": len(self.value),
        }


async def read_dead_letters(kafka: KafkaAccess, topics: list[str]) -> list[DeadLetter]:
    """Everything currently in the dead-letter topics, read without a consumer group (nothing committed)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        counts = {spec.name: spec.partitions for spec in ALL_TOPICS}
        partitions = [TopicPartition(topic, p) for topic in topics for p in range(counts[topic])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    letters.append(
                        DeadLetter(
                            record.topic,
                            record.partition,
                            record.offset,
                            record.key,
                            record.value,
                            dict(record.headers or []),
                        )
                    )
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        return letters
    finally:
        await consumer.stop()


async def replay(kafka: KafkaAccess, letter: DeadLetter) -> tuple[str, int, int]:
    source = letter.headers["dlq-source-topic"].decode()
    headers = [(k, v) for k, v in letter.headers.items() if not k.startswith("dlq-")]
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(source, letter.value, key=letter.key, headers=headers)
        return source, metadata.partition, metadata.offset
    finally:
        await producer.stop()


async def _main(args: argparse.Namespace) -> int:
    topics = [args.topic] if args.topic else DLQ_TOPICS
    kafka = kafka_from_environment().model_copy(update={"bootstrap_servers": args.bootstrap})
    letters = await read_dead_letters(kafka, topics)
    if args.command == "list":
        for letter in letters:
            print(json.dumps(letter.summary()))
        print(f"{len(letters)} dead letters", file=sys.stderr)
        return 0
    chosen = [
        d
        for d in letters
        if d.offset == args.offset and (args.partition is None or d.partition == args.partition)
    ]
    if len(chosen) != 1:
        print(f"no single dead letter at {args.topic} offset {args.offset}", file=sys.stderr)
        return 2
    topic, partition, offset = await replay(kafka, chosen[0])
    print(json.dumps({"replayed": chosen[0].summary(), "to": f"{topic}[{partition}]@{offset}"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["list", "replay"])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--topic", choices=DLQ_TOPICS)
    parser.add_argument("--partition", type=int)
    parser.add_argument("--offset", type=int)
    args = parser.parse_args(argv)
    if args.command == "replay" and (args.topic is None or args.offset is None):
        parser.error("replay needs --topic and --offset")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
