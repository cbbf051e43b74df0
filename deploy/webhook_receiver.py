"""A treatment center's webhook endpoint, as a reference: it checks each request the way
docs/webhooks.md describes (a whole-number timestamp within the tolerance, an idempotency key, a signature
over `<timestamp>.<key>.<body>` under one of its secrets), takes each key once, and prints each message.

    python deploy/webhook_receiver.py --port 9000 --secret S [--secret PREVIOUS]

A malformed or stale request is 400, an unsigned one 401, a message already taken 204 again (a retry).
Give `--secret` twice while switching to a rotated secret: either then verifies.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    TIMESTAMP_TOLERANCE_SECONDS,
    request_refusal,
)

MAX_BODY_BYTES = 1_000_000
REMEMBER_SECONDS = 7 * 24 * 3600
"""How long a taken key is remembered: longer than the sender keeps retrying one message."""


class Receiver:
    """The checks and the de-duplication, apart from HTTP; safe to call from many threads."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance_seconds: int = TIMESTAMP_TOLERANCE_SECONDS,
        remember_seconds: float = REMEMBER_SECONDS,
        clock: Callable[[], float] = time.time,
        show: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        if not secrets:
            raise ValueError("a receiver needs at least one secret")
        self.secrets = list(secrets)
        self.tolerance_seconds = tolerance_seconds
        self.remember_seconds = remember_seconds
        self.clock = clock
        self.show = show
        self.taken: list[Any] = []
        """Each message taken, once (what a site's system would act on)."""
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """The HTTP status to answer and why. Nothing is taken before the signature is checked, so an
        unsigned request cannot make a later genuine one look like a duplicate."""
        lowered = {name.lower(): value for name, value in headers.items()}
        now = self.clock()
        refusal = request_refusal(
            self.secrets, lowered, body, now=now, tolerance_seconds=self.tolerance_seconds
        )
        if refusal is not None:
            return refusal.status, refusal.reason
        try:
            message = json.loads(body)
        except ValueError:
            return 400, "the body is not JSON"
        key = lowered[IDEMPOTENCY_HEADER.lower()]
        with self._lock:
            self._forget_older_than(now - self.remember_seconds)
            if key in self._seen:
                return 204, "already taken"
            self._seen[key] = now
            self.taken.append(message)
        self.show(_summary(message))
        return 204, "taken"

    def _forget_older_than(self, cutoff: float) -> None:
        # Keys are remembered in the order they were taken: the oldest come first.
        while self._seen:
            oldest_key, taken_at = next(iter(self._seen.items()))
            if taken_at >= cutoff:
                return
            del self._seen[oldest_key]


def _summary(message: Any) -> str:
    if not isinstance(message, dict):
        return "message (not an object)"
    fields = ("kind", "appointment_id", "coi", "state", "conditioning_start_on", "infusion_on")
    return " ".join(f"{name}={message.get(name)}" for name in fields)


def make_server(receiver: Receiver, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            declared = self.headers.get("Content-Length", "")
            if not declared.isdigit():
                self._answer(400, "Content-Length is missing or malformed")
                return
            if int(declared) > MAX_BODY_BYTES:
                self._answer(413, "the body is too large")
                return
            body = self.rfile.read(int(declared))
            status, reason = receiver.receive(dict(self.headers.items()), body)
            self._answer(status, reason)

        def _answer(self, status: int, reason: str) -> None:
            if status >= 400:
                receiver.show(f"refused ({status}): {reason}")
            payload = b"" if status == 204 else reason.encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--secret",
        action="append",
        required=True,
        help="the secret returned when the webhook was registered or its secret rotated (repeatable)",
    )
    args = parser.parse_args()
    server = make_server(Receiver(args.secret), args.port)
    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
