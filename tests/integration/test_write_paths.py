"""The write paths behind the throughput work, on real databases (SQLite and PostgreSQL, no broker): rows
queued in the unit of work, SQLite writers queuing on the process's lock, and courier scans applied in groups by the `ScanWriter`."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.envelope import new_uuid
from cgt_contracts.events import OrderCancelled, OrderCancelledData, ScanType
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from services.coi_tracking import commands
from services.coi_tracking.models import TABLES, ScanRecord, ScanRow, Shipment
from services.coi_tracking.scan_writer import ScanSubmission, ScanWriter, ShipmentNotFound
from services.common.consumer import ProcessedEvent, take_fresh
from services.common.db import (
    WalCheckpointer,
    lock_for_writing,
    make_engine,
    tables_of,
)
from services.common.identifiers import coi_identifier
from services.common.kafka_access import KafkaAccess
from services.common.outbox import OUTBOX_TABLE, OutboxMessage, OutboxRelay, OutboxRow, pending_rows
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import (
    COPY_FROM_ROWS,
    AppendRow,
    session_factory,
    transaction_cache,
    unit_of_work,
    wake_after_commit,
)
from tests.support.infra import database
from tests.support.shipments import planned_shipments


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


def outbox_row(n: int) -> OutboxRow:
    return OutboxRow(
        event_id=str(uuid.uuid4()),
        event_type="test.v1",
        topic="t",
        key=f"k{n}",
        payload=f'{{"n": {n}}}',
        correlation_id="c",
        created_at=datetime.now(UTC),
    )


def test_queued_rows_are_written_at_commit_in_order_and_dropped_on_rollback(engine: Engine) -> None:
    with session_factory(engine)() as session:
        for n in range(5):
            unit_of_work(session).append(outbox_row(n))
        session.rollback()
        session.commit()  # nothing queued survives a rollback
    with session_factory(engine)() as session:
        assert session.exec(select(func.count()).select_from(OutboxMessage)).one() == 0
        for n in range(300):
            unit_of_work(session).append(outbox_row(n))
        session.commit()
    with session_factory(engine)() as session:
        keys = session.exec(select(OutboxMessage.key).order_by(col(OutboxMessage.id))).all()
    assert keys == [f"k{n}" for n in range(300)]  # ids follow the order rows were queued in


def cancellation(n: int) -> OrderCancelled:
    return OrderCancelled(
        source="test",
        subject=coi_identifier("W0000", 2026, n),
        correlationid=f"c{n}",
        data=OrderCancelledData(
            order_id=uuid.uuid4(),
            coi=coi_identifier("W0000", 2026, n),
            reason="test",
            cancelled_by="coordinator-a",
            cancelled_at=datetime.now(UTC),
        ),
    )


def test_a_row_class_must_match_its_table_when_it_is_defined() -> None:
    outbox = tables_of(OutboxMessage)[0]
    with pytest.raises(TypeError, match=r"missing columns \['published_at'\]"):

        class ForgetsAColumn(AppendRow, table=outbox):
            event_id: str
            event_type: str
            topic: str
            key: str
            payload: str
            correlation_id: str
            created_at: datetime

    with pytest.raises(TypeError, match=r"unknown fields \['payloads'\]"):

        class MisspeltColumn(AppendRow, table=outbox):
            event_id: str
            event_type: str
            topic: str
            key: str
            payloads: str
            correlation_id: str
            created_at: datetime
            published_at: datetime | None = None

    with pytest.raises(dataclasses.FrozenInstanceError):
        outbox_row(1).key = "other"  # type: ignore[misc]


def test_only_the_services_session_factory_has_a_unit_of_work(engine: Engine) -> None:
    """Rows queued on a session that would never write them are refused, not silently lost; the
    factory's hooks are its own (one per engine), and what a transaction cached ends with it."""
    with Session(engine) as plain, pytest.raises(TypeError, match="session_factory"):
        unit_of_work(plain)
    assert session_factory(engine) is session_factory(engine)
    with session_factory(engine)() as session:
        transaction_cache(session, "couriers")["courier-ben"] = "CRYO-EXPRESS"
        unit_of_work(session).append(outbox_row(1))
        assert len(unit_of_work(session)) == 1
        session.commit()
        assert transaction_cache(session, "couriers") == {}
        assert len(unit_of_work(session)) == 0
        assert session.exec(select(func.count()).select_from(OutboxMessage)).one() == 1


def test_the_inbox_takes_only_events_not_applied_yet_and_only_if_the_transaction_commits(
    engine: Engine,
) -> None:
    """`take_fresh`: an event applied before is skipped, an id repeated within one batch counts once, and
    the inbox rows are written with the caller's transaction (a rollback leaves them out)."""
    applied, new, other = cancellation(1), cancellation(2), cancellation(3)
    with session_factory(engine)() as session:
        assert take_fresh(session, "g", [applied]) == [applied]
        session.commit()
    with session_factory(engine)() as session:
        assert take_fresh(session, "g", [other]) == [other]
        session.rollback()
    with session_factory(engine)() as session:
        assert take_fresh(session, "g", [applied, new, new, other]) == [new, other]
        assert take_fresh(session, "another-group", [applied]) == [applied]
        session.commit()
    with session_factory(engine)() as session:
        stored = session.exec(select(ProcessedEvent.consumer, ProcessedEvent.event_id)).all()
    assert sorted(stored) == sorted(
        [("g", str(applied.id)), ("g", str(new.id)), ("g", str(other.id)), ("another-group", str(applied.id))]
    )


def test_the_relay_claims_pending_rows_through_their_own_index(engine: Engine) -> None:
    """With thousands of rows published and a few pending, the relay's claim returns exactly the pending
    rows, walking their own index in id order (no sort, no bitmap scan: on PostgreSQL those revisit every
    published row's dead version until VACUUM). The plan is read inside the claim's own transaction, under
    whatever the claim set for it."""
    with session_factory(engine)() as session:
        for n in range(3000):
            unit_of_work(session).append(outbox_row(n))
        session.commit()
    with session_factory(engine)() as session:
        OutboxRelay._mark_published(session, list(range(1, 2991)))
    nowhere = KafkaAccess(bootstrap_servers="127.0.0.1:9", security_protocol="PLAINTEXT")
    relay = OutboxRelay(engine, nowhere, batch=4000)  # never connects: only its claim runs
    sql = str(pending_rows(4000).compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with session_factory(engine)() as session:
        assert [row.id for row in relay._claim(session)] == list(range(2991, 3001))
        if engine.dialect.name == "postgresql":
            plan = "\n".join(session.execute(text(f"EXPLAIN {sql}")).scalars())
            assert "Index Scan using ix_outbox_pending on outbox" in plan, plan
            assert "Bitmap" not in plan and "Sort" not in plan, plan
        else:
            plan = "\n".join(str(row[-1]) for row in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "USING INDEX ix_outbox_pending" in plan, plan
            assert "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize(
    "queued_rows",
    [1, COPY_FROM_ROWS - 1, COPY_FROM_ROWS],
    ids=["one-row", "values-list", "copy-on-postgresql"],
)
def test_rows_written_through_the_driver_are_stored_as_the_orm_stores_them(
    engine: Engine, queued_rows: int
) -> None:
    """Queued rows go to the driver directly after the columns' bind processors: the stored values must be
    exactly what an ORM insert stores (SQLite keeps instants as text, so the same text is what keeps
    ordering and comparisons right), and read back the same. On PostgreSQL one INSERT with a VALUES list
    (few rows) and COPY (many) are both checked; SQLite takes an executemany."""
    shipment = planned_shipments(engine, 1)[0]
    at = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=-5)))
    values: dict[str, object] = {
        "shipment_id": shipment.id,
        "scan_type": ScanType.HAND_OFF,
        "bag_cois": '["COI-1"]',
        "container_id": None,
        "seal_id": "SEAL-1",
        "location": "hub",
        "scanned_by": "courier-ben",
        "handed_to": "courier-cy",
        "device_time": at,
        "received_at": at + timedelta(seconds=1),
        "temperature_celsius": -180.5,
        "accepted": True,
        "refusal_reason": None,
        "coi_verified": False,
        "epcis_event_id": None,
        "epcis_event_hash": None,
        "content_sha256": None,
    }
    queued = [uuid.uuid4() for _ in range(queued_rows)]
    with session_factory(engine)() as session:
        for scan_id in queued:
            unit_of_work(session).append(ScanRow(id=scan_id, **values))  # type: ignore[arg-type]
        session.add(ScanRecord(id=uuid.uuid4(), **values))  # type: ignore[arg-type]
        session.commit()
    columns = ", ".join(name for name in values)
    with engine.connect() as connection:
        stored = [tuple(row) for row in connection.execute(text(f"SELECT {columns} FROM scan"))]
    assert len(stored) == queued_rows + 1 and len(set(stored)) == 1  # every queued row as the ORM's
    with session_factory(engine)() as session:
        for scan_id in queued:
            read = session.get(ScanRecord, scan_id)
            assert read is not None
            assert {name: getattr(read, name) for name in values} == values
            assert read.device_time == at and read.device_time.tzinfo is UTC


def on_four_threads(work: Callable[[], None]) -> None:
    """`work` on four threads at once; fails with the first error one of them raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def test_sqlite_connections_log_ahead_enforce_keys_and_sync_every_commit(tmp_path: Path) -> None:
    """What every SQLite connection is opened with: WAL, foreign keys, and synchronous=FULL — a commit
    (a scan answered 201, a batch whose offsets are then committed) is on disk before it returns."""
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    with engine.connect() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()
            for name in ("journal_mode", "foreign_keys", "synchronous")
        }
    engine.dispose()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 2}  # 2: FULL


def test_sqlite_writers_queue_on_the_process_lock_and_never_leak_it(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (n INTEGER)"))

    def writer() -> None:
        for n in range(40):
            with engine.begin() as connection:  # committed
                connection.execute(text("INSERT INTO counter VALUES (:n)"), {"n": n})
            with session_factory(engine)() as session:  # closed without commit: rolled back, lock released
                session.execute(text("INSERT INTO counter VALUES (-1)"))

    on_four_threads(writer)
    with engine.begin() as connection:  # the lock is free again
        connection.execute(text("INSERT INTO counter VALUES (0)"))
        count = connection.execute(text("SELECT count(*) FROM counter WHERE n >= 0")).scalar_one()
    assert count == 4 * 40 + 1
    engine.dispose()


def test_sqlite_reads_after_lock_for_writing_see_every_earlier_write(tmp_path: Path) -> None:
    """Read-then-write transactions from four threads: with `lock_for_writing` first, none reads a value
    another has changed meanwhile (no lost update), and none collides in SQLite itself (its busy handler is
    off here: a writer not queued on the process's lock would fail at once)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'counter.db'}")

    @event.listens_for(engine, "connect")
    def _no_busy_handler(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA busy_timeout = 0")

    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (n INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (0)"))

    def increment_40_times() -> None:
        for _ in range(40):
            with session_factory(engine)() as session:
                lock_for_writing(session)
                n = session.execute(text("SELECT max(n) FROM counter")).scalar_one()
                session.execute(text("INSERT INTO counter VALUES (:n)"), {"n": n + 1})
                session.commit()

    on_four_threads(increment_40_times)
    with engine.connect() as connection:
        values = connection.execute(text("SELECT n FROM counter ORDER BY n")).scalars().all()
    assert values == list(range(4 * 40 + 1))
    engine.dispose()


def test_with_background_checkpoints_commits_leave_the_log_to_the_checkpointer(tmp_path: Path) -> None:
    """Data pages reach a WAL database's main file only when the log is checkpointed: by default inside the
    commit that takes the log past 1,000 pages; with background checkpoints, by the checkpointer thread."""
    rows = [{"n": n, "body": f"{n:08d}" * 500} for n in range(3_000)]  # ~4 KiB each: ~3,000 pages

    def commit_rows(engine: Engine) -> None:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE reading (n INTEGER PRIMARY KEY, body TEXT)"))
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO reading VALUES (:n, :body)"), rows)

    inline = make_engine(f"sqlite:///{tmp_path / 'inline.db'}")
    commit_rows(inline)
    assert (tmp_path / "inline.db").stat().st_size > 10_000_000  # checkpointed by the commit itself
    inline.dispose()

    engine = make_engine(f"sqlite:///{tmp_path / 'background.db'}")
    with engine.connect():  # a connection pooled before the checkpointer is attached must not count
        pass
    checkpointer = WalCheckpointer.attach(engine, interval_seconds=0.05)
    assert checkpointer is not None
    commit_rows(engine)
    assert (tmp_path / "background.db").stat().st_size < 1_000_000  # the commit left the log alone
    checkpointer.start()
    try:
        deadline = time.monotonic() + 30
        while (tmp_path / "background.db").stat().st_size < 10_000_000:
            assert time.monotonic() < deadline, f"not checkpointed: {checkpointer.last}"
            time.sleep(0.05)
    finally:
        checkpointer.stop()
    assert checkpointer.last is not None and checkpointer.last[1] == checkpointer.last[2] >= 3_000
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM reading")).scalar_one() == len(rows)
    engine.dispose()
    assert WalCheckpointer.attach(make_engine("sqlite://")) is None
    assert WalCheckpointer.attach(make_engine("postgresql://cgt@localhost/none")) is None


def checkpoint(shipment: Shipment, company: str = "CRYO-EXPRESS") -> ScanSubmission:
    return ScanSubmission(
        shipment_id=shipment.id,
        scan=commands.ScanInput(
            scan_type=ScanType.CHECKPOINT,
            bag_cois=(shipment.coi,),
            location="hub",
            device_time=datetime.now(UTC),
            temperature_celsius=-180.0,
        ),
        actor=commands.Actor(subject="courier-ben", printed_name="Ben"),
        courier_company=company,
        correlation_id="test",
    )


async def test_a_group_of_scans_commits_together_and_a_failing_scan_fails_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = planned_shipments(engine, 2)
    commits: list[int] = []
    unregister = wake_after_commit(engine, OUTBOX_TABLE, lambda: commits.append(1))
    writer = ScanWriter(engine)
    record_scan = commands.record_scan

    def failing_for_bad(session: Session, shipment: Shipment, *args: object, **kwargs: object) -> object:
        if shipment.id == bad.id:
            raise RuntimeError("this scan cannot be stored")
        return record_scan(session, shipment, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(commands, "record_scan", failing_for_bad)
    writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit(checkpoint(good)) for _ in range(10)),
            writer.submit(checkpoint(bad)),
            writer.submit(dataclasses.replace(checkpoint(good), shipment_id=new_uuid())),
            return_exceptions=True,
        )
    finally:
        await asyncio.to_thread(writer.stop)
        unregister()
    outcomes, failed, missing = results[:10], results[10], results[11]
    assert all(isinstance(o, commands.ScanOutcome) and o.accepted for o in outcomes), outcomes
    assert isinstance(failed, RuntimeError) and isinstance(missing, ShipmentNotFound)
    with session_factory(engine)() as session:
        stored = session.exec(select(ScanRecord.shipment_id)).all()
        events = session.exec(select(func.count()).select_from(OutboxMessage)).one()
    assert stored.count(good.id) == 10 and bad.id not in stored
    assert events == 10  # one shipment.scanned per stored scan, none for the failed one
    assert commits  # the session factory wakes the relay after each commit that wrote outbox rows


def test_new_uuids_are_version_7_time_ordered_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_uuid() for _ in range(20_000)]
    time.sleep(0.002)
    later = new_uuid()
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 20_000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in [*ids, later])
    assert all(before <= u.int >> 80 <= after for u in [*ids, later])  # RFC 9562: Unix time in ms
    assert all(later > u for u in ids)  # made in a later millisecond: sorts after
    assert len({u.int & ((1 << 62) - 1) for u in ids}) == 20_000  # and the random bits differ
