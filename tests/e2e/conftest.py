"""End-to-end fixtures: a real broker and the three services as separate processes, on SQLite and on
PostgreSQL (each backend gets its own broker, so the two runs cannot see each other's events).

The stack itself is tests/support/stack.py's (the browser tests start one too); its names stay importable
from here, where the journeys' tests have always found them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from services.common.topics import ALL_TOPICS
from tests.support.stack import (
    CENTER,
    COORDINATOR,
    COURIER,
    COURIER_2,
    OTHER_COURIER,
    QA,
    RunningStack,
    running_stack,
)

__all__ = [
    "CENTER",
    "COORDINATOR",
    "COURIER",
    "COURIER_2",
    "OTHER_COURIER",
    "QA",
    "RunningStack",
    "running_stack",
]


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
