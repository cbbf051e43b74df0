"""Idempotent consumers with dead letters.

Invariant: an event's effect and its id in the inbox commit in one transaction, and the Kafka offset is
committed only after that (manual acknowledgement), so redelivery after a crash or rebalance is harmless.
A message that is not a valid event, or whose handling keeps failing after bounded retries, goes to
`<topic>.dlq` with the reason, its original headers and its source position; the partition keeps flowing.
An unreachable database is not the message's fault: the consumer waits for it instead of dead-lettering.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import structlog
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import AnyEvent, parse_event
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import ValidationError
from sqlalchemy import String
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, select

from services.common.db import UtcDateTime, insert_later, one_of, tables_of
from services.common.logging import log_context
from services.common.topics import dlq

log = structlog.get_logger()
T = TypeVar("T")
E = TypeVar("E", bound=EventEnvelope)
DATABASE_RETRY_SECONDS = 1.0
IGNORED_COMMIT_SECONDS = 1.0
MAX_BATCH = 2000
BATCH_WAIT_MS = 25
"""How long an idle batch consumer waits for records per poll (FastStream sleeps as long again after an
empty poll): the most an event waits before its batch starts."""

EventHandler = Callable[[Session, AnyEvent], None]
"""Applies one event inside the given session; must not commit (the consumer commits)."""


class ProcessedEvent(SQLModel, table=True):
    """The inbox: ids of events this service has applied, per consumer."""

    __tablename__ = "processed_event"

    consumer: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=36)
    event_type: str = Field(max_length=64)
    processed_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


INBOX_TABLE = tables_of(ProcessedEvent)[0]


def take_fresh(session: Session, consumer: str, events: Sequence[E]) -> list[E]:
    """The events `consumer` has not applied yet, in order (an id repeated within `events` counts once),
    each entered in its inbox in the caller's transaction: applied exactly when that transaction commits."""
    event_ids = [str(event.id) for event in events]
    done = already_processed(session, consumer, event_ids)
    processed_at = utc_now()
    fresh: list[E] = []
    for event, event_id in zip(events, event_ids, strict=True):
        if event_id in done:
            continue
        done.add(event_id)
        fresh.append(event)
        insert_later(
            session,
            INBOX_TABLE,
            {
                "consumer": consumer,
                "event_id": event_id,
                "event_type": event.type,
                "processed_at": processed_at,
            },
        )
    return fresh


def event_log_context(event: EventEnvelope) -> AbstractContextManager[None]:
    """The event's correlation id, id and type on every log line written while it is handled."""
    return log_context(correlation_id=event.correlationid, event_id=str(event.id), event_type=event.type)


async def run_with_retries(work: Callable[[], T], max_attempts: int) -> T:
    """Run `work` on a thread until it succeeds. An unreachable database is not the work's fault: it is
    waited out, uncounted (good events are not dead-lettered during an outage). Any other error is retried
    with backoff; after `max_attempts` failures the last error is raised (the caller dead-letters)."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(work)
        except (OperationalError, InterfaceError) as error:
            log.warning("consumer.database_unavailable", error=repr(error)[:300])
            await asyncio.sleep(DATABASE_RETRY_SECONDS)
        except Exception as error:
            attempt += 1
            log.warning("consumer.attempt_failed", attempt=attempt, error=repr(error)[:300])
            if attempt >= max_attempts:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


def already_processed(session: Session, consumer: str, event_ids: list[str]) -> set[str]:
    """Which of these events the consumer has applied."""
    query = (
        select(ProcessedEvent.event_id)
        .where(ProcessedEvent.consumer == consumer)
        .where(one_of(session, col(ProcessedEvent.event_id), event_ids, String()))
    )
    return set(session.exec(query))


async def publish_dead_letter(broker: KafkaBroker, record: Any, reason: str, group_id: str) -> None:
    """Put a record on `<topic>.dlq` with the reason, its headers and its source position. Retried until
    the broker takes it: a dead letter must not be lost either."""
    headers = {key: value.decode(errors="replace") for key, value in (record.headers or [])}
    headers.update(
        {
            "dlq-reason": reason[:2000],
            "dlq-source-topic": record.topic,
            "dlq-source-partition": str(record.partition),
            "dlq-source-offset": str(record.offset),
            "dlq-consumer-group": group_id,
        }
    )
    delay = 0.2
    while True:
        try:
            await broker.publish(record.value, topic=dlq(record.topic), key=record.key, headers=headers)
            break
        except Exception as error:
            log.warning("consumer.dead_letter_publish_failed", error=repr(error)[:300])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    log.warning("consumer.dead_lettered", topic=record.topic, offset=record.offset, reason=reason[:300])


def describe_validation_error(error: ValidationError, limit: int = 10) -> str:
    """`field.path: message` for each problem, so a dead letter names what was wrong."""
    problems = [
        f"{'.'.join(str(part) for part in detail['loc']) or '<message>'}: {detail['msg']}"
        for detail in error.errors(include_url=False)[:limit]
    ]
    return "; ".join(problems)


def _raw_bodies(message: KafkaMessage) -> Any:
    """Batch subscribers get the records' bodies as they are; parsing is the consumer's (errors to DLQ)."""
    return message.body


def register_consumer(
    broker: KafkaBroker,
    *,
    topics: list[str],
    group_id: str,
    engine: Engine,
    handlers: dict[type[EventEnvelope], EventHandler],
    after_commit: Callable[[], None],
    max_attempts: int = 5,
) -> None:
    """Subscribe `group_id` to `topics`; events of other types are acknowledged and ignored."""

    def apply(event: AnyEvent, handler: EventHandler) -> bool:
        with Session(engine) as session:
            if session.get(ProcessedEvent, (group_id, str(event.id))) is not None:
                return False
            handler(session, event)
            session.add(ProcessedEvent(consumer=group_id, event_id=str(event.id), event_type=event.type))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if session.get(ProcessedEvent, (group_id, str(event.id))) is not None:
                    return False
                raise
            return True

    handled_types = {handler_type.model_fields["type"].default for handler_type in handlers}

    def skippable(record: Any) -> bool:
        """An event whose CloudEvents type header names a type this consumer does not handle is skipped
        without being parsed (most of a topic's traffic is for other services)."""
        for key, value in record.headers or ():
            if key == "ce_type":
                return value.decode(errors="replace") not in handled_types
        return False

    last_commit = [time.monotonic()]

    @broker.subscriber(
        *topics,
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        batch=True,
        batch_timeout_ms=BATCH_WAIT_MS,
        max_records=MAX_BATCH,
        decoder=_raw_bodies,
        title=f"{group_id}:{'+'.join(topics)}",
    )
    async def consume(bodies: list[bytes], message: KafkaMessage) -> None:
        records = message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
        handled = 0
        work: list[tuple[Any, AnyEvent, EventHandler]] = []
        for record, body in zip(records, bodies, strict=True):
            if skippable(record):
                continue
            try:
                event = parse_event(body)
            except ValidationError as error:
                await publish_dead_letter(
                    broker, record, f"invalid event: {describe_validation_error(error)}", group_id
                )
                handled += 1
                continue
            handler = handlers.get(type(event))
            if handler is not None:
                work.append((record, event, handler))
        if work:
            handled += len(work)
            await apply_all(work)
        # Offsets are committed once per batch. Under load (full batches), a batch of events only for other
        # services commits at most every second; a batch that empties the backlog always commits, so that
        # lag reads zero once caught up. Re-read after a restart, skipped events are skipped again.
        caught_up = len(records) < MAX_BATCH
        if handled or caught_up or time.monotonic() - last_commit[0] > IGNORED_COMMIT_SECONDS:
            await message.ack()
            last_commit[0] = time.monotonic()

    def apply_group(work: list[tuple[Any, AnyEvent, EventHandler]]) -> int:
        """Apply a batch's events in order in one transaction (one commit); returns how many were new."""
        with Session(engine) as session:
            fresh = take_fresh(session, group_id, [event for _, event, _ in work])
            for event in fresh:
                with event_log_context(event):
                    handlers[type(event)](session, event)
                    log.info("consumer.applied")
            session.commit()
        return len(fresh)

    async def apply_all(work: list[tuple[Any, AnyEvent, EventHandler]]) -> None:
        """One transaction for the batch; if it fails as a whole, each event alone, with retries and
        dead letters, so that one bad event holds up nobody else."""
        try:
            applied = await run_with_retries(partial(apply_group, work), max_attempts=1)
        except Exception as error:
            log.warning("consumer.group_failed", events=len(work), error=repr(error)[:300])
            for record, event, handler in work:
                await apply_one(record, event, handler)
            return
        if applied:
            after_commit()

    async def apply_one(record: Any, event: AnyEvent, handler: EventHandler) -> None:
        """Apply one event in its own transaction, retried; dead-lettered after `max_attempts` failures."""
        with event_log_context(event):
            try:
                applied = await run_with_retries(partial(apply, event, handler), max_attempts)
            except Exception as error:
                reason = f"failed after {max_attempts} attempts: {error!r}"
                await publish_dead_letter(broker, record, reason, group_id)
                return
            log.info("consumer.applied" if applied else "consumer.duplicate_ignored")
            if applied:
                after_commit()
