"""Appending to and reading the custody ledger in the database (the rules are in domain.py)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from services.coi_tracking.domain import (
    GENESIS_SHA256,
    ChainVerification,
    LedgerContent,
    LedgerKind,
    StoredEntry,
    entry_hash,
    verify_chain,
)
from services.coi_tracking.models import LedgerEntry, LedgerRow, Shipment
from services.common.unit_of_work import unit_of_work


def append_entry(
    session: Session,
    shipment: Shipment,
    *,
    kind: LedgerKind,
    from_party: str,
    to_party: str,
    location: str,
    at: datetime,
    signer: str,
    meaning: str,
    reason: str = "",
) -> StoredEntry:
    """Add the next entry, chained to the shipment's current head. The caller holds the shipment's lock.
    The row is written with the transaction's other ledger rows when it commits."""
    content = LedgerContent(
        shipment_id=str(shipment.id),
        sequence=shipment.ledger_length + 1,
        kind=kind,
        from_party=from_party,
        to_party=to_party,
        location=location,
        at=at,
        signer=signer,
        meaning=meaning,
        reason=reason,
    )
    previous = shipment.ledger_head_sha256 or GENESIS_SHA256
    entry = StoredEntry(content=content, previous_sha256=previous, entry_sha256=entry_hash(content, previous))
    unit_of_work(session).append(
        LedgerRow(
            shipment_id=shipment.id,
            sequence=content.sequence,
            kind=kind.value,
            from_party=from_party,
            to_party=to_party,
            location=location,
            at=at,
            signer=signer,
            meaning=meaning,
            reason=reason,
            previous_sha256=previous,
            entry_sha256=entry.entry_sha256,
        )
    )
    shipment.ledger_length = content.sequence
    shipment.ledger_head_sha256 = entry.entry_sha256
    if shipment not in session:  # a loaded shipment is saved anyway (and add() walks its cascades)
        session.add(shipment)
    return entry


def stored(entry: LedgerEntry) -> StoredEntry:
    return StoredEntry(
        content=LedgerContent(
            shipment_id=str(entry.shipment_id),
            sequence=entry.sequence,
            kind=LedgerKind(entry.kind),
            from_party=entry.from_party,
            to_party=entry.to_party,
            location=entry.location,
            at=entry.at,
            signer=entry.signer,
            meaning=entry.meaning,
            reason=entry.reason,
        ),
        previous_sha256=entry.previous_sha256,
        entry_sha256=entry.entry_sha256,
    )


def read_entries(session: Session, shipment: Shipment) -> list[LedgerEntry]:
    return list(
        session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.shipment_id == shipment.id)
            .order_by(col(LedgerEntry.sequence))
        )
    )


def verify_shipment_ledger(session: Session, shipment: Shipment) -> ChainVerification:
    return verify_chain([stored(e) for e in read_entries(session, shipment)], shipment.ledger_head_sha256)
