"""Courier scans applied in groups: the same rules as one scan, one transaction and one commit for all the
scans that arrive together (group commit), shipments locked once and their facts looked up once.

Used by the HTTP route (`ScanWriter`, one writer thread: SQLite never waits on its own write lock) and by the
`couriers.scans` consumer (`apply_submissions` inside its batch transaction).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from uuid import UUID

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from services.coi_tracking import commands, domain
from services.common.logging import log_context
from services.common.scope import not_found
from services.common.unit_of_work import session_factory

log = structlog.get_logger()


@dataclass(frozen=True)
class ScanSubmission:
    shipment_id: UUID
    scan: commands.ScanInput
    actor: commands.Actor
    courier_company: str
    """The submitter's company: a shipment assigned to another company refuses the scan."""
    correlation_id: str


class ShipmentNotFound(Exception):
    """No shipment with this id (HTTP 404)."""


class OtherCourierCompany(Exception):
    """The shipment is assigned to another courier company (HTTP 403)."""


ScanResult = commands.ScanOutcome | ShipmentNotFound | OtherCourierCompany


def apply_submissions(session: Session, submissions: Sequence[ScanSubmission]) -> list[ScanResult]:
    """Apply scans in order inside the caller's transaction (their shipments locked first: `locked_with_facts`);
    the caller commits."""
    shipments, facts = commands.locked_with_facts(session, {s.shipment_id for s in submissions})
    results: list[ScanResult] = []
    for submission in submissions:
        shipment = shipments.get(submission.shipment_id)
        if shipment is None:
            results.append(ShipmentNotFound(not_found("shipment")))
            continue
        refusal = domain.other_company_refusal(shipment.courier_company, submission.courier_company)
        if refusal is not None:
            results.append(OtherCourierCompany(refusal))
            continue
        with log_context(correlation_id=submission.correlation_id):
            results.append(
                commands.record_scan(
                    session,
                    shipment,
                    submission.scan,
                    submission.actor,
                    submission.correlation_id,
                    facts[shipment.id],
                )
            )
    return results


_Pending = tuple[ScanSubmission, "Future[ScanResult]"]


class ScanWriter:
    """One thread that applies submitted scans in groups of up to `max_group`: whatever has queued up while
    the previous group committed. If a group fails as a whole, its scans are retried one by one, so one bad
    scan fails alone. A database outage fails the group's requests (the caller retries)."""

    def __init__(self, engine: Engine, max_group: int = 256) -> None:
        self._engine = engine
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="scan-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Apply what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    async def submit(self, submission: ScanSubmission) -> commands.ScanOutcome:
        future: Future[ScanResult] = Future()
        self._queue.put((submission, future))
        result = await asyncio.wrap_future(future)
        if isinstance(result, Exception):
            raise result
        return result

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
            self._apply(group)

    def _apply(self, group: list[_Pending]) -> None:
        try:
            with session_factory(self._engine)() as session:
                results = apply_submissions(session, [submission for submission, _ in group])
                session.commit()
        except (OperationalError, InterfaceError) as error:
            log.warning("scans.database_unavailable", error=repr(error)[:300])
            for _, future in group:
                future.set_exception(error)
            return
        except Exception as error:
            if len(group) > 1:
                for pending in group:
                    self._apply([pending])
            else:
                log.exception("scans.failed")
                group[0][1].set_exception(error)
            return
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)
