"""The records an EPCIS query returns, read from the database one page at a time (epcis_query renders them).

Three sources: accepted scans, temperature readings (not those a scan carried: the scan's event has them)
and custody ledger entries. Each is filtered in SQL — the caller's scope (a treatment center its site's
shipments, a courier its company's), eventTime range, event type, bizStep, EPCs, shipments — and read in
the events' order (eventTime, source, record id) from just after the page token, `perPage + 1` rows at most
from each; the merge of the three keeps the first `perPage`. A page costs four queries (three sources and
the bags of the page's shipments), whatever the size of the history.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from typing import Any
from uuid import UUID

from sqlalchemy import and_, exists, or_
from sqlmodel import Session, col, select

from services.coi_tracking import epcis_query
from services.coi_tracking.domain import LedgerKind
from services.coi_tracking.epcis_query import (
    CUSTODY,
    READING,
    SCAN,
    CustodyFacts,
    EventQuery,
    PageToken,
    ReadingFacts,
    Record,
    ScanFacts,
)
from services.coi_tracking.models import Bag, LedgerEntry, ScanRecord, Shipment, TemperatureReading


def query_events(
    session: Session, site_scope: str | None, company_scope: str | None, query: EventQuery
) -> tuple[list[Record], PageToken | None]:
    """One page of the records the query asks for, within the caller's scope, in event order, and the token
    of the next page (None on the last)."""
    found: list[Record] = [
        *_scans(session, site_scope, company_scope, query),
        *_readings(session, site_scope, company_scope, query),
        *_custody(session, site_scope, company_scope, query),
    ]
    found.sort(key=epcis_query.sort_key)
    page, more = found[: query.per_page], len(found) > query.per_page
    return _with_bags(session, page), epcis_query.token_after(page[-1]) if more and page else None


def _scoped(
    statement: Any, owner: Any, site_scope: str | None, company_scope: str | None, query: EventQuery
) -> Any:
    statement = statement.join(Shipment, col(Shipment.id) == owner)
    if site_scope is not None:
        statement = statement.where(Shipment.treatment_center_id == site_scope)
    if company_scope is not None:
        statement = statement.where(Shipment.courier_company == company_scope)
    if query.shipment_ids is not None:
        statement = statement.where(col(Shipment.id).in_(query.shipment_ids))
    return statement


def _timed(statement: Any, at: Any, key: Any, source: int, query: EventQuery, record: Any) -> Any:
    """The eventTime range, the page token (strictly after it in event order), the order and the limit."""
    if query.ge_event_time is not None:
        statement = statement.where(at >= query.ge_event_time)
    if query.lt_event_time is not None:
        statement = statement.where(at < query.lt_event_time)
    after = query.after
    if after is not None:
        if source > after.source:
            statement = statement.where(at >= after.at)
        elif source < after.source:
            statement = statement.where(at > after.at)
        else:
            statement = statement.where(or_(at > after.at, and_(at == after.at, key > record(after.record))))
    return statement.order_by(at, key).limit(query.per_page + 1)


def _bags_match(owner: Any, query: EventQuery) -> Any:
    assert query.cois is not None
    return exists().where(and_(col(Bag.shipment_id) == owner, col(Bag.coi).in_(query.cois)))


def _scans(
    session: Session, site_scope: str | None, company_scope: str | None, query: EventQuery
) -> list[Record]:
    types = query.scan_types()
    if not types or query.cois == frozenset():
        return []
    statement = _scoped(select(ScanRecord), col(ScanRecord.shipment_id), site_scope, company_scope, query)
    statement = statement.where(col(ScanRecord.accepted).is_(True)).where(
        col(ScanRecord.scan_type).in_(types)
    )
    if query.cois is not None:  # a COI is letters, digits and `*`: nothing LIKE reads as a wildcard
        statement = statement.where(or_(*(col(ScanRecord.bag_cois).contains(f'"{c}"') for c in query.cois)))
    statement = _timed(statement, col(ScanRecord.device_time), col(ScanRecord.id), SCAN, query, UUID)
    return [
        ScanFacts(
            id=row.id,
            shipment_id=row.shipment_id,
            scan_type=row.scan_type,
            bag_cois=tuple(json.loads(row.bag_cois)),
            location=row.location,
            device_time=row.device_time,
            temperature_celsius=row.temperature_celsius,
            epcis_event_id=row.epcis_event_id,
            epcis_event_hash=row.epcis_event_hash,
            retracted_at=row.retracted_at,
        )
        for row in session.exec(statement)
    ]


def _readings(
    session: Session, site_scope: str | None, company_scope: str | None, query: EventQuery
) -> list[Record]:
    if not query.wants_readings() or query.cois == frozenset():
        return []
    owner = col(TemperatureReading.shipment_id)
    statement = _scoped(select(TemperatureReading), owner, site_scope, company_scope, query)
    statement = statement.where(TemperatureReading.source != "scan")
    if query.cois is not None:
        statement = statement.where(_bags_match(owner, query))
    statement = _timed(
        statement, col(TemperatureReading.read_at), col(TemperatureReading.id), READING, query, int
    )
    return [
        ReadingFacts(row.id or 0, row.shipment_id, row.read_at, row.celsius, ())
        for row in session.exec(statement)
    ]


def _custody(
    session: Session, site_scope: str | None, company_scope: str | None, query: EventQuery
) -> list[Record]:
    types = query.custody_scan_types()
    if not types or query.cois == frozenset():
        return []
    owner = col(LedgerEntry.shipment_id)
    statement = _scoped(select(LedgerEntry), owner, site_scope, company_scope, query)
    statement = statement.where(LedgerEntry.kind == LedgerKind.CUSTODY.value)
    if query.biz_steps is not None:  # the bizStep is the scan type the meaning starts with
        statement = statement.where(or_(*(col(LedgerEntry.meaning).startswith(f"{t.value}:") for t in types)))
    if query.cois is not None:
        statement = statement.where(_bags_match(owner, query))
    statement = _timed(statement, col(LedgerEntry.at), col(LedgerEntry.id), CUSTODY, query, int)
    return [
        CustodyFacts(
            row.id or 0,
            row.shipment_id,
            row.sequence,
            row.from_party,
            row.to_party,
            row.location,
            row.at,
            row.meaning,
            (),
        )
        for row in session.exec(statement)
    ]


def _with_bags(session: Session, records: list[Record]) -> list[Record]:
    """Readings and custody entries carry their shipment's bags (ordered by number)."""
    owners = {r.shipment_id for r in records if not isinstance(r, ScanFacts)}
    if not owners:
        return records
    bags: dict[UUID, list[str]] = defaultdict(list)
    for bag in session.exec(select(Bag).where(col(Bag.shipment_id).in_(owners)).order_by(col(Bag.number))):
        bags[bag.shipment_id].append(bag.coi)
    out: list[Record] = []
    for record in records:
        if isinstance(record, ReadingFacts | CustodyFacts):
            record = replace(record, bag_cois=tuple(bags[record.shipment_id]))
        out.append(record)
    return out
