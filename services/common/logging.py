"""structlog JSON logging with the correlation id of the request or event bound to every line."""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.headers import add_security_headers
from services.common.problems import internal_error, problem_response

CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
"""A caller's id is taken only if it is an identifier: it goes into every log line and problem document."""


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stderr, for our own logs and for the libraries' (aiokafka, FastStream) alike."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


@contextmanager
def log_context(**values: str) -> Iterator[None]:
    """Bind `values` to every log line written inside the block, then restore what was bound before.
    Restores through the bind's own tokens: structlog's `bound_contextvars` copies the whole context to
    save it first, and this runs once per courier scan (figures: docs/performance.md)."""
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def new_correlation_id() -> str:
    return str(uuid.uuid4())


class CorrelationMiddleware:
    """Take the caller's correlation id (or make one), bind it for the request's logs, echo it back with
    the security headers (`services.common.headers`).
    Plain ASGI (no per-request task or body buffering), so it costs next to nothing per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get(CORRELATION_HEADER, "")
        correlation_id = offered if _CORRELATION_ID.fullmatch(offered) else new_correlation_id()
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        status_code = [500]
        started = [False]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_code[0] = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append(CORRELATION_HEADER, correlation_id)
                add_security_headers(headers)
            await send(message)

        log = structlog.get_logger()
        with log_context(correlation_id=correlation_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("http.unhandled_error", method=scope["method"], path=scope["path"])
                if started[0]:
                    raise
                await problem_response(Request(scope), internal_error())(scope, receive, send_with_id)
            log.info("http.request", method=scope["method"], path=scope["path"], status=status_code[0])
