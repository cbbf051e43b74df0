"""Appending to and reading the custody ledger in the database (the rules are in domain.py).

Every entry is signed with the ledger key (configuration, never the database) and its head is published,
signed, to the append-only `ledger.heads` topic through the outbox, in the entry's own transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime

from cgt_contracts.events import LedgerHeadPublished, LedgerHeadPublishedData
from sqlmodel import Session, col, select

from services.coi_tracking.domain import (
    ENTRY_SIGNATURE_CONTEXT,
    GENESIS_SHA256,
    HEAD_SIGNATURE_CONTEXT,
    ChainVerification,
    LedgerContent,
    LedgerKeyError,
    LedgerKeyring,
    LedgerKind,
    PublishedHead,
    StoredEntry,
    entry_hash,
    ledger_keyring,
    verify_chain,
)
from services.coi_tracking.models import LedgerEntry, LedgerRow, Shipment
from services.coi_tracking.translate import SOURCE
from services.common.outbox import OutboxMessage, enqueue
from services.common.topics import LEDGER_HEADS
from services.common.unit_of_work import unit_of_work

SIGNING_KEYS_VARIABLE = "LEDGER_SIGNING_KEYS"
VERIFY_KEYS_VARIABLE = "LEDGER_VERIFY_KEYS"


class _Installed:
    """The process's keyring: installed by the service at start-up from its settings."""

    keyring: LedgerKeyring | None = None


def install_keyring(keyring: LedgerKeyring) -> None:
    _Installed.keyring = keyring


def install_configured_keys(private_keys: Mapping[str, str], public_keys: Mapping[str, str]) -> None:
    """The service's keys; LedgerKeyError (the service refuses to start) without a signing key."""
    keyring = ledger_keyring(private_keys, public_keys)
    if keyring.signing_key_id is None:
        raise LedgerKeyError(f"no ledger signing key ({SIGNING_KEYS_VARIABLE})")
    install_keyring(keyring)


def keyring_from_environment(environ: Mapping[str, str] = os.environ) -> LedgerKeyring:
    """LEDGER_SIGNING_KEYS (JSON {key id: base64 private key}, the last signs) and LEDGER_VERIFY_KEYS
    (JSON {key id: base64 public key}, retired keys): what the service and `verify` read."""
    try:
        private = json.loads(environ.get(SIGNING_KEYS_VARIABLE) or "{}")
        public = json.loads(environ.get(VERIFY_KEYS_VARIABLE) or "{}")
    except json.JSONDecodeError:
        raise LedgerKeyError(
            f"{SIGNING_KEYS_VARIABLE} and {VERIFY_KEYS_VARIABLE} must be JSON objects"
        ) from None
    if not isinstance(private, dict) or not isinstance(public, dict):
        raise LedgerKeyError(f"{SIGNING_KEYS_VARIABLE} and {VERIFY_KEYS_VARIABLE} must be JSON objects")
    return ledger_keyring(private, public)


def current_keyring() -> LedgerKeyring:
    """The installed keyring, else the environment's (a process that writes entries without the service)."""
    if _Installed.keyring is None:
        _Installed.keyring = keyring_from_environment()
    return _Installed.keyring


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
    digest = entry_hash(content, previous)
    keyring = current_keyring()
    key_id, signature = keyring.sign(ENTRY_SIGNATURE_CONTEXT, content.shipment_id, content.sequence, digest)
    entry = StoredEntry(content, previous, digest, key_id, signature)
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
            key_id=key_id,
            signature=signature,
        )
    )
    enqueue(session, LEDGER_HEADS, head_event(shipment, entry, keyring))
    shipment.ledger_length = content.sequence
    shipment.ledger_head_sha256 = entry.entry_sha256
    if shipment not in session:  # a loaded shipment is saved anyway (and add() walks its cascades)
        session.add(shipment)
    return entry


def head_event(shipment: Shipment, entry: StoredEntry, keyring: LedgerKeyring) -> LedgerHeadPublished:
    """The chain's new head, signed apart from the entry (another context), for the append-only topic."""
    sequence = entry.content.sequence
    key_id, signature = keyring.sign(HEAD_SIGNATURE_CONTEXT, str(shipment.id), sequence, entry.entry_sha256)
    return LedgerHeadPublished(
        source=SOURCE,
        subject=shipment.coi,
        correlationid=f"ledger:{shipment.id}",
        data=LedgerHeadPublishedData(
            shipment_id=shipment.id,
            coi=shipment.coi,
            sequence=sequence,
            entry_sha256=entry.entry_sha256,
            key_id=key_id,
            signature=signature,
        ),
    )


def published_head(data: LedgerHeadPublishedData) -> PublishedHead:
    return PublishedHead(str(data.shipment_id), data.sequence, data.entry_sha256, data.key_id, data.signature)


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
        key_id=entry.key_id,
        signature=entry.signature,
    )


def read_entries(session: Session, shipment: Shipment) -> list[LedgerEntry]:
    return list(
        session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.shipment_id == shipment.id)
            .order_by(col(LedgerEntry.sequence))
        )
    )


def outbox_head(session: Session, shipment: Shipment) -> PublishedHead | None:
    """The newest head this database enqueued for the shipment (published or about to be). A database
    writer can delete it along with the tail: only `verify` reading the topic itself sees through that."""
    rows = session.exec(
        select(OutboxMessage.payload)
        .where(OutboxMessage.topic == LEDGER_HEADS, OutboxMessage.key == shipment.coi)
        .order_by(col(OutboxMessage.id).desc())
    )
    for payload in rows:
        data = LedgerHeadPublished.model_validate_json(payload).data
        if data.shipment_id == shipment.id:
            return published_head(data)
    return None


def verify_shipment_ledger(
    session: Session, shipment: Shipment, published: PublishedHead | None = None, *, trust_outbox: bool = True
) -> ChainVerification:
    """The chain, every signature, the database's head, and the published head: `published` if given (read
    from the topic by `verify`), else, for the API, the outbox's copy."""
    if published is None and trust_outbox:
        published = outbox_head(session, shipment)
    return verify_chain(
        [stored(e) for e in read_entries(session, shipment)],
        shipment.ledger_head_sha256,
        keyring=current_keyring(),
        published=published,
    )
