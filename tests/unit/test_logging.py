"""Log lines carry the correlation id of the scan, event or request being handled, and only while it is."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from services.common.logging import configure_logging, log_context


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """The services' logging set-up, writing its JSON lines here."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config, bound = structlog.get_config(), structlog.contextvars.get_contextvars()
    configure_logging("test-service", "INFO")
    lines = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=lines))
    try:
        yield lines
    finally:  # whatever the process had before, for the tests that follow
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**bound)
        structlog.configure(**config)
        root.handlers, root.level = handlers, level


def test_log_context_binds_for_the_block_and_restores_what_was_bound_before(written: io.StringIO) -> None:
    log = structlog.get_logger()
    with log_context(correlation_id="scan-1"):
        log.info("outer")
        with log_context(correlation_id="event-2", event_id="e-2"):
            log.info("inner")
        log.info("outer again")
    log.info("after")

    lines = {line["event"]: line for line in map(json.loads, written.getvalue().splitlines())}
    assert lines["outer"]["correlation_id"] == "scan-1" and "event_id" not in lines["outer"]
    assert (lines["inner"]["correlation_id"], lines["inner"]["event_id"]) == ("event-2", "e-2")
    assert lines["outer again"]["correlation_id"] == "scan-1" and "event_id" not in lines["outer again"]
    assert "correlation_id" not in lines["after"]
    assert {line["service"] for line in lines.values()} == {"test-service"}


def test_log_context_restores_when_the_block_fails(written: io.StringIO) -> None:
    log = structlog.get_logger()
    with pytest.raises(RuntimeError), log_context(correlation_id="failing-scan"):
        raise RuntimeError("refused")
    log.info("next")
    (line,) = map(json.loads, written.getvalue().splitlines())
    assert "correlation_id" not in line
