"""structlog JSON logging with the correlation id of the request or event bound to every line."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Awaitable, Callable

import structlog
from fastapi import Request, Response
from fastapi.responses import JSONResponse

CORRELATION_HEADER = "X-Correlation-ID"


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


def new_correlation_id() -> str:
    return str(uuid.uuid4())


async def correlation_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Take the caller's correlation id (or make one), bind it for the request's logs, echo it back."""
    offered = request.headers.get(CORRELATION_HEADER, "")
    correlation_id = offered if 0 < len(offered) <= 128 else new_correlation_id()
    request.state.correlation_id = correlation_id
    with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
        try:
            response = await call_next(request)
        except Exception:
            structlog.get_logger().exception(
                "http.unhandled_error", method=request.method, path=request.url.path
            )
            response = JSONResponse(
                {"detail": "internal error; quote the correlation id", "correlation_id": correlation_id},
                status_code=500,
            )
        structlog.get_logger().info(
            "http.request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
        )
    response.headers[CORRELATION_HEADER] = correlation_id
    return response
