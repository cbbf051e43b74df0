"""The signed custody ledger (I3) on SQLite and PostgreSQL, in process: a database writer who edits entries
and recomputes every hash with the project's own hash function, removes the tail, or signs with a key of
their own is detected and located; a key rotation leaves old entries verifiable; no key, no start."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from cgt_contracts.events import LedgerHeadPublished
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.coi_tracking import ledger
from services.coi_tracking.domain import (
    ENTRY_SIGNATURE_CONTEXT,
    GENESIS_SHA256,
    ChainVerification,
    LedgerKeyError,
    LedgerKeyring,
    LedgerKind,
    entry_hash,
    ledger_keyring,
)
from services.coi_tracking.models import TABLES, LedgerEntry, Shipment
from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.topics import LEDGER_HEADS
from services.common.unit_of_work import session_factory
from tests.support.infra import database
from tests.support.shipments import planned_shipments


def _seed(fill: int) -> str:
    return base64.b64encode(bytes([fill]) * 32).decode()


def _public(keyring: LedgerKeyring, key_id: str) -> str:
    return base64.b64encode(keyring.public_keys[key_id].public_bytes_raw()).decode()


OLD = ledger_keyring({"ledger-2026-1": _seed(1)}, {})
ROTATED = ledger_keyring({"ledger-2026-1": _seed(1), "ledger-2026-2": _seed(2)}, {})
INSIDER = ledger_keyring({"ledger-2026-1": _seed(9)}, {})
"""Someone with database access signing with a key of their own under the real key's id."""


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


@pytest.fixture(autouse=True)
def keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test installs its keys; the process's own keyring is restored afterwards."""
    monkeypatch.setattr(ledger._Installed, "keyring", OLD)


def _append(engine: Engine, shipment_id: UUID, count: int) -> None:
    with session_factory(engine)() as session:
        shipment = session.exec(select(Shipment).where(Shipment.id == shipment_id).with_for_update()).one()
        for n in range(count):
            ledger.append_entry(
                session,
                shipment,
                kind=LedgerKind.CUSTODY,
                from_party=f"party-{shipment.ledger_length}",
                to_party=f"party-{shipment.ledger_length + 1}",
                location="hub",
                at=datetime(2026, 3, 1, 8, n, tzinfo=UTC),
                signer="Ben",
                meaning="custody handed over",
            )
        session.commit()


def _verify(engine: Engine, shipment_id: UUID) -> ChainVerification:
    with session_factory(engine)() as session:
        shipment = session.get_one(Shipment, shipment_id)
        return ledger.verify_shipment_ledger(session, shipment)


def _ledger_with(engine: Engine, count: int) -> UUID:
    (shipment,) = planned_shipments(engine, 1)
    _append(engine, shipment.id, count)
    return shipment.id


def _rewrite_as_an_insider(session: Session, shipment_id: UUID, edits: dict[int, str]) -> None:
    """Edit entries' `to_party`, then recompute every hash and link and the shipment's head, as anyone with
    the database and this repository could: only the signatures, made with a key they lack, stay old."""
    entries = list(
        session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.shipment_id == shipment_id)
            .order_by(col(LedgerEntry.sequence))
        )
    )
    previous = GENESIS_SHA256
    for entry in entries:
        entry.to_party = edits.get(entry.sequence, entry.to_party)
        content = ledger.stored(entry).content
        entry.previous_sha256 = previous
        entry.entry_sha256 = previous = entry_hash(content, previous)
        session.add(entry)
    shipment = session.get_one(Shipment, shipment_id)
    shipment.ledger_head_sha256 = previous
    session.add(shipment)
    session.commit()


def test_each_entry_is_signed_and_its_signed_head_enqueued_for_the_append_only_topic(engine: Engine) -> None:
    shipment_id = _ledger_with(engine, 3)
    with session_factory(engine)() as session:
        entries = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.sequence))).all()
        heads = [
            LedgerHeadPublished.model_validate_json(row.payload).data
            for row in session.exec(select(OutboxMessage).where(OutboxMessage.topic == LEDGER_HEADS))
        ]
    assert [e.key_id for e in entries] == ["ledger-2026-1"] * 3 and all(e.signature for e in entries)
    assert [(h.shipment_id, h.sequence, h.entry_sha256) for h in heads] == [
        (shipment_id, e.sequence, e.entry_sha256) for e in entries
    ]
    assert _verify(engine, shipment_id) == ChainVerification(True, 3)


def test_a_chain_rewritten_with_recomputed_hashes_fails_at_the_first_edited_entry(engine: Engine) -> None:
    shipment_id = _ledger_with(engine, 5)
    with session_factory(engine)() as session:
        _rewrite_as_an_insider(session, shipment_id, {2: "courier-evil", 4: "courier-evil"})
    result = _verify(engine, shipment_id)
    assert result.valid is False and result.broken_at_sequence == 2
    assert result.problem == (
        "entry 2 has a bad signature (signature does not verify with key 'ledger-2026-1'): "
        "it was rewritten, or not written by COI tracking"
    )


def test_a_removed_tail_is_detected_by_the_published_head(engine: Engine) -> None:
    shipment_id = _ledger_with(engine, 4)
    with session_factory(engine)() as session:
        third = session.exec(
            select(LedgerEntry).where(LedgerEntry.shipment_id == shipment_id, LedgerEntry.sequence == 3)
        ).one()
        session.execute(delete(LedgerEntry).where(col(LedgerEntry.sequence) == 4))
        # The database's own head and length put back to entry 3: only the published head remembers 4.
        session.execute(
            update(Shipment)
            .where(col(Shipment.id) == shipment_id)
            .values(ledger_length=3, ledger_head_sha256=third.entry_sha256)
        )
        session.commit()
    result = _verify(engine, shipment_id)
    assert result.valid is False and result.broken_at_sequence == 4
    assert "entry 4 was published" in (result.problem or "")


def test_an_entry_signed_by_another_key_is_detected_and_located(engine: Engine) -> None:
    shipment_id = _ledger_with(engine, 3)
    with session_factory(engine)() as session:
        second = session.exec(select(LedgerEntry).where(LedgerEntry.sequence == 2)).one()
        second.key_id, second.signature = INSIDER.sign(
            ENTRY_SIGNATURE_CONTEXT, str(shipment_id), 2, second.entry_sha256
        )
        session.add(second)
        session.commit()
    result = _verify(engine, shipment_id)
    assert result.valid is False and result.broken_at_sequence == 2
    assert "signature does not verify with key 'ledger-2026-1'" in (result.problem or "")
    with session_factory(engine)() as session:
        session.execute(update(LedgerEntry).where(col(LedgerEntry.sequence) == 2).values(key_id="insider-1"))
        session.commit()
    result = _verify(engine, shipment_id)
    assert result.broken_at_sequence == 2 and "unknown key 'insider-1'" in (result.problem or "")


def test_entries_signed_before_a_rotation_still_verify(engine: Engine) -> None:
    shipment_id = _ledger_with(engine, 2)
    ledger.install_keyring(ROTATED)
    _append(engine, shipment_id, 2)
    with session_factory(engine)() as session:
        keys = session.exec(select(LedgerEntry.key_id).order_by(col(LedgerEntry.sequence))).all()
    assert keys == ["ledger-2026-1", "ledger-2026-1", "ledger-2026-2", "ledger-2026-2"]
    assert _verify(engine, shipment_id).valid
    # The old private key destroyed, its public key kept: still every entry verifies.
    retired = ledger_keyring(
        {"ledger-2026-2": _seed(2)}, {"ledger-2026-1": _public(ROTATED, "ledger-2026-1")}
    )
    ledger.install_keyring(retired)
    assert _verify(engine, shipment_id).valid
    # Without it, the old entries are signed by a key nobody vouches for.
    ledger.install_keyring(ledger_keyring({"ledger-2026-2": _seed(2)}, {}))
    result = _verify(engine, shipment_id)
    assert result.broken_at_sequence == 1 and "unknown key 'ledger-2026-1'" in (result.problem or "")


def test_the_service_does_not_start_without_a_ledger_signing_key() -> None:
    """What the service's start-up installs (app.install_ledger_keys turns a refusal into its exit)."""
    retired_only = {"k0": _public(OLD, "ledger-2026-1")}
    with pytest.raises(LedgerKeyError, match=r"no ledger signing key \(LEDGER_SIGNING_KEYS\)"):
        ledger.install_configured_keys({}, retired_only)
    with pytest.raises(LedgerKeyError, match="'k1' is not 32 bytes") as refused:
        ledger.install_configured_keys({"k1": "c2hvcnQ="}, {})
    assert "c2hvcnQ=" not in str(refused.value)
    ledger.install_configured_keys({"k1": _seed(3)}, retired_only)
    assert ledger.current_keyring().signing_key_id == "k1"
