"""Watching the system from outside: a webhook listener (a treatment center's endpoint) and an event log
(every event on the bus). Used by `make demo`, the tests, the fault suite and the benchmarks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiokafka import AIOKafkaConsumer
from cgt_contracts.events import AnyEvent, parse_event

from services.common.kafka_access import KafkaAccess


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop an aiokafka consumer. With a broker down, aiokafka's fetcher can re-raise the cancellation of
    its own retry sleep from stop(); that one is not ours, so it is absorbed (ours is re-raised)."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float = field(default_factory=time.perf_counter)
    """When the request arrived (time.perf_counter of this process)."""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookListener:
    """A real HTTP server that records every request; it can be told to fail the next N requests."""

    received: list[ReceivedWebhook] = field(default_factory=list)
    fail_next: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/cgt"

    def start(self) -> None:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with listener._lock:
                    listener.received.append(ReceivedWebhook(self.path, dict(self.headers.items()), body))
                    failing = listener.fail_next > 0
                    if failing:
                        listener.fail_next -= 1
                    listener._arrived.notify_all()
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default listen backlog of 5 drops simultaneous deliveries' SYNs
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def wait_for(
        self, predicate: Callable[[ReceivedWebhook], bool], timeout: float = 30.0
    ) -> ReceivedWebhook:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for hook in self.received:
                    if predicate(hook):
                        return hook
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
        raise TimeoutError(
            f"no matching webhook within {timeout}s; received {[h.json() for h in self.received]}"
        )


class EventLog:
    """Reads every event on the given topics from the beginning, in a group of its own."""

    def __init__(self, kafka: KafkaAccess, topics: list[str]) -> None:
        self.events: list[AnyEvent] = []
        self.positions: dict[str, tuple[str, int, int]] = {}
        self.notes: list[tuple[str, datetime, str]] = []
        """(COI, when, text) lines a caller adds to the story, such as the demo's coordinator steps."""
        """Event id -> (topic, partition, offset), to wait for a consumer group to pass an event."""
        self.raw: list[tuple[str, bytes, dict[str, bytes]]] = []
        self._consumer = AIOKafkaConsumer(
            *topics,
            **kafka.client_options(),
            group_id=f"test-observer-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for record in self._consumer:
            self.raw.append((record.topic, record.value, dict(record.headers or [])))
            with suppress(Exception):
                event = parse_event(record.value)
                self.positions[str(event.id)] = (record.topic, record.partition, record.offset)
                self.events.append(event)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await stop_consumer(self._consumer)

    async def wait_for(self, predicate: Callable[[AnyEvent], bool], timeout: float = 30.0) -> AnyEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no matching event within {timeout}s; saw {[e.type for e in self.events]}")

    async def wait_raw(
        self, predicate: Callable[[str, bytes, dict[str, bytes]], bool], count: int = 1, timeout: float = 30.0
    ) -> list[tuple[str, bytes, dict[str, bytes]]]:
        """Wait until `count` records (valid events or not) match, e.g. dead letters."""
        deadline = time.monotonic() + timeout
        while True:
            found = [record for record in self.raw if predicate(*record)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    def of(self, coi: str) -> list[AnyEvent]:
        return [e for e in self.events if e.subject == coi]
