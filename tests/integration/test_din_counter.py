"""Two first collections for the same facility and year at the same moment (SQLite and PostgreSQL, no
broker): the DIN counter of that facility and year has no row yet, both create it, both get a DIN — one
after the other in the sequence, never the same, never a failed collection.

Without `INSERT … ON CONFLICT DO NOTHING` before the locking read, PostgreSQL lets both sessions find no
row (the first one's is not committed), both insert one, and the second fails on the primary key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.identifiers import has_valid_check
from services.common.unit_of_work import session_factory
from services.order_intake import commands
from services.order_intake.models import Collection, DinCounter
from tests.support.orders import BOSTON_FIN, COORDINATOR, ISSUER, order_database, outbox, place
from tests.support.races import Contender

COLLECTED_AT = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with order_database(request.param, tmp_path) as engine:
        yield engine


def a_session_waits_on_a_lock(engine: Engine) -> bool:
    """PostgreSQL: another session of this database waits on a lock (here: the counter's new row)."""
    with engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def test_two_first_collections_of_one_facility_and_year_at_once_both_get_a_din(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = place(engine), place(engine)

    def second_collection() -> None:
        with session_factory(engine)() as session:
            commands.record_collection(session, second.id, COLLECTED_AT, COORDINATOR, ISSUER, "second")
            session.commit()

    postgres = engine.dialect.name == "postgresql"
    # PostgreSQL: the second session is caught waiting on the first one's uncommitted counter row.
    # SQLite: caught as it locks its order, before the write lock (which serialises the two).
    contender = Contender(monkeypatch, commands, "din" if postgres else "lock_order", second_collection)
    with session_factory(engine)() as session:
        commands.record_collection(session, first.id, COLLECTED_AT, COORDINATOR, ISSUER, "first")
        session.flush()  # the counter's first row is written (uncommitted) before the second comes
        contender.arrive(or_waiting=(lambda: a_session_waits_on_a_lock(engine)) if postgres else None)
        session.commit()
    contender.finish()

    with session_factory(engine)() as session:
        dins = dict(session.exec(select(Collection.order_id, Collection.din)).all())
        counter = session.exec(select(DinCounter).where(col(DinCounter.fin) == BOSTON_FIN)).one()
    assert set(dins) == {first.id, second.id}, "a collection was lost"
    assert sorted(d[7:13] for d in dins.values()) == ["000001", "000002"], dins
    assert all(d.startswith(f"{BOSTON_FIN}26") and has_valid_check(d) for d in dins.values())
    assert (counter.year, counter.last) == (2026, 2)
    published = [data["din"] for kind, data in outbox(engine) if kind == "collection.recorded.v1"]
    assert sorted(published) == sorted(dins.values())
