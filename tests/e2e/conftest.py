"""End-to-end fixtures: a real broker and the three services as separate processes, on SQLite and on
PostgreSQL (each backend gets its own broker, so the two runs cannot see each other's events)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from deploy.stack import (
    SERVICES,
    KafkaAccounts,
    Stack,
    create_postgres_databases,
    drop_postgres_databases,
    sqlite_urls,
)
from services.common.kafka_access import KafkaAccess
from services.common.topics import ALL_TOPICS
from tests.support.infra import kafka_broker

COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
COURIER = {"Authorization": "Bearer dev-courier-token"}
COURIER_2 = {"Authorization": "Bearer dev-courier2-token"}
OTHER_COURIER = {"Authorization": "Bearer dev-other-courier-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}
QA = {"Authorization": "Bearer dev-qa-token"}


@dataclass
class RunningStack:
    backend: str
    broker: KafkaAccounts
    """The broker and its principals (`broker.access("courier-cryo-express")`)."""
    stack: Stack

    @property
    def kafka(self) -> KafkaAccess:
        """The broker's super user: what the tests' own raw clients log in as."""
        return self.broker.access()

    @property
    def orders(self) -> str:
        return self.stack.url("order-intake")

    @property
    def tracking(self) -> str:
        return self.stack.url("coi-tracking")

    @property
    def scheduling(self) -> str:
        return self.stack.url("scheduling")


@contextlib.contextmanager
def running_stack(backend: str, workdir: Path) -> Iterator[RunningStack]:
    """A broker of its own and the three services on `backend` ("sqlite" or "postgresql")."""
    with kafka_broker(workdir / "kafka") as broker:
        urls = (
            sqlite_urls(workdir / "db") if backend == "sqlite" else create_postgres_databases(list(SERVICES))
        )
        running = Stack(
            kafka=broker,
            database_urls=urls,
            workdir=workdir / "logs",
            extra_env={
                "WEBHOOK_BACKOFF_SECONDS": "0.2",
                "WEBHOOK_MAX_ATTEMPTS": "4",
                "WEBHOOK_DISABLE_AFTER_FAILURES": "4",
                "OUTBOX_POLL_SECONDS": "0.2",
                "FOLLOW_UP_CHECK_SECONDS": "0.5",
            },
        )
        try:
            running.start()
            yield RunningStack(backend, broker, running)
        finally:
            running.stop()
            if backend == "postgresql":
                with contextlib.suppress(Exception):
                    drop_postgres_databases(urls)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    backend: str = request.param
    with running_stack(backend, tmp_path_factory.mktemp(f"stack-{backend}")) as running:
        yield running


@pytest.fixture
async def events(stack: RunningStack) -> AsyncIterator[EventLog]:
    log = EventLog(stack.kafka, [t.name for t in ALL_TOPICS if not t.name.endswith(".dlq")])
    await log.start()
    yield log
    await log.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them: with both at 5 s,
    # a request sent on a connection the server is closing fails with "Server disconnected" (seen in CI
    # after a step that ran a CLI for a few seconds).
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(keepalive_expiry=2.0)) as client:
        yield client


@pytest.fixture
def webhook_listener(stack: RunningStack) -> Iterator[WebhookListener]:
    """A receiver on loopback for one test. Its endpoints are deleted afterwards: the stack is shared by
    the session and a site has at most 5 endpoints, so one test's endpoints must not use up the next's."""
    listener = WebhookListener()
    listener.start()
    yield listener
    with httpx.Client(base_url=stack.scheduling, headers=COORDINATOR, timeout=30.0) as client:
        endpoints = client.get("/webhooks", params={"limit": 500}).json()
        for endpoint in endpoints:
            if endpoint["url"] == listener.url:
                client.delete(f"/webhooks/{endpoint['id']}").raise_for_status()
    listener.stop()
