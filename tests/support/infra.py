"""Real infrastructure for tests: a Kafka broker, PostgreSQL databases, a webhook listener, an event log.

The broker is a real Apache Kafka: the one named by KAFKA_BOOTSTRAP_SERVERS, else a Testcontainers
Kafka where a Docker engine answers, else one started from the Maven Central artifacts.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Table
from sqlalchemy.engine import Engine

from deploy.stack import ConfiguredKafka, KafkaAccounts, create_postgres_databases, drop_postgres_databases
from services.common.db import create_tables, make_engine
from services.common.kafka_access import KafkaAccess, kafka_from_environment
from services.common.topics import COURIER_SCANS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
from kafka_local import LocalKafka  # type: ignore[import-not-found]  # noqa: E402


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@contextmanager
def kafka_broker(data_dir: Path) -> Iterator[KafkaAccounts]:
    """Yield a real broker with its principals' credentials (`access(user)`), stopped afterwards if this
    started it: one started here runs SASL over TLS with the project's ACLs, as production does."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield ConfiguredKafka(kafka_from_environment())
        return
    if docker_engine_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            address = container.get_bootstrap_server()
            yield ConfiguredKafka(KafkaAccess(bootstrap_servers=address, security_protocol="PLAINTEXT"))
        return
    broker = LocalKafka(data_dir=data_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def service_kafka_settings(access: KafkaAccess) -> dict[str, str]:
    """A service's settings fields (ServiceSettings) for this access, as its environment would give them."""
    return {name.lower(): value for name, value in access.environment().items()}


async def produce(
    kafka: KafkaAccess,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[int, int]:
    """Put raw bytes on a topic (as a misbehaving or duplicating producer would); returns (partition, offset)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, value, key=key, headers=headers)
        return metadata.partition, metadata.offset
    finally:
        await producer.stop()


async def publish_courier_scan(
    broker: KafkaAccounts, value: bytes, key: bytes | None = None, company: str = "CRYO-EXPRESS"
) -> tuple[int, int]:
    """A scan as a courier company's system publishes it: as its own principal, signed with its key."""
    from deploy.principals import courier_principal
    from deploy.stack import courier_signature

    access = broker.access(courier_principal(company))
    return await produce(access, COURIER_SCANS, value, key=key, headers=courier_signature(value, company))


async def wait_committed(
    kafka: KafkaAccess, group: str, topic: str, partition: int, offset: int, timeout: float = 30
) -> None:
    """Wait until `group` has committed past `offset` on the partition: it has handled that message."""
    import asyncio
    import time

    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(
                group, partitions=[TopicPartition(topic, partition)]
            )
            committed = offsets.get(TopicPartition(topic, partition))
            if committed is not None and committed.offset > offset:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{group} did not commit past {topic}[{partition}]@{offset} within {timeout}s")
    finally:
        await admin.close()


@contextmanager
def database(kind: str, directory: Path, tables: Sequence[Table]) -> Iterator[Engine]:
    """A fresh database with `tables`: a SQLite file in `directory`, or a PostgreSQL database dropped
    afterwards (`kind` is "sqlite" or "postgresql")."""
    urls = (
        {"test": f"sqlite:///{directory / 'test.db'}"}
        if kind == "sqlite"
        else create_postgres_databases(["test"])
    )
    engine = make_engine(urls["test"])
    create_tables(engine, tables)
    try:
        yield engine
    finally:
        engine.dispose()
        if kind == "postgresql":
            drop_postgres_databases(urls)
