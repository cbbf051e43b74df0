"""The real stack for tests: a broker of its own and the three services as processes (deploy/stack.py's
`Stack`), on SQLite or PostgreSQL, and the development callers' Authorization headers.

tests/e2e (both backends) and tests/browser (SQLite, with the console in front) start theirs from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.stack import (
    SERVICES,
    KafkaAccounts,
    Stack,
    create_postgres_databases,
    drop_postgres_databases,
    sqlite_urls,
)
from services.common.kafka_access import KafkaAccess
from tests.support.infra import kafka_broker

COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
COURIER = {"Authorization": "Bearer dev-courier-token"}
COURIER_2 = {"Authorization": "Bearer dev-courier2-token"}
OTHER_COURIER = {"Authorization": "Bearer dev-other-courier-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}
QA = {"Authorization": "Bearer dev-qa-token"}

STACK_ENV = {
    "WEBHOOK_BACKOFF_SECONDS": "0.2",
    "WEBHOOK_MAX_ATTEMPTS": "4",
    "WEBHOOK_DISABLE_AFTER_FAILURES": "4",
    "OUTBOX_POLL_SECONDS": "0.2",
    "FOLLOW_UP_CHECK_SECONDS": "0.5",
}
"""Short periods, so that the tests' waits for the relays, retries and checks stay short."""


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
        running = Stack(kafka=broker, database_urls=urls, workdir=workdir / "logs", extra_env=STACK_ENV)
        try:
            running.start()
            yield RunningStack(backend, broker, running)
        finally:
            running.stop()
            if backend == "postgresql":
                with contextlib.suppress(Exception):
                    drop_postgres_databases(urls)
