"""Database engine and sessions: SQLite file by default, PostgreSQL through DATABASE_URL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    Dialect,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.types import TypeEngine
from sqlmodel import SQLModel, create_engine

from services.common.private_files import ensure_owner_only

if TYPE_CHECKING:  # what sqlmodel's Select and SelectOfScalar share
    from sqlmodel.sql._expression_select_cls import SelectBase

log = structlog.get_logger()


def _normalise(url: str) -> str:
    """Accept plain postgresql:// URLs and use psycopg 3 for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """An engine for the URL. SQLite: WAL, foreign keys on, every commit synced to disk before it returns
    (synchronous=FULL: a scan answered 201, or a Kafka offset committed after it, is never lost to a power
    cut), one writer at a time within the process. A SQLite file is readable by its owner only."""
    url = _normalise(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        if engine.url.database and engine.url.database != ":memory:":
            ensure_owner_only(Path(engine.url.database))  # patient data: before SQLite creates it 0644

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        _one_writer_at_a_time(engine)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_timeout=10, pool_pre_ping=True)


class WalCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a thread of its own, every `interval_seconds`.

    By default SQLite checkpoints inside the commit that takes the log past 1,000 pages; a batch of 2,000
    scans writes more than that, so nearly every batch commit also copied the log into the database file
    and synced it, while the batch's consumer waited. SQLite's documentation suggests this arrangement for
    such writers: automatic checkpoints off (here: bounded, `BOUND_PAGES`) and checkpoints run by a
    separate thread. A PASSIVE checkpoint never waits for readers or writers, and runs in SQLite's C code
    without Python's interpreter lock, on the other core."""

    BOUND_PAGES = 16_384
    """Commits still checkpoint once the log holds this many pages (64 MiB of 4 KiB pages): the bound if
    the thread falls behind or is not running."""

    def __init__(self, database: str, interval_seconds: float) -> None:
        self._database = database
        self._interval = interval_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self.last: tuple[int, int, int] | None = None
        """The last checkpoint's (busy, pages in the log, pages checkpointed), as SQLite reports it."""

    @classmethod
    def attach(cls, engine: Engine, interval_seconds: float = 0.2) -> WalCheckpointer | None:
        """Leave the log of a SQLite file database to a checkpointer (its connections from now on only
        checkpoint past `BOUND_PAGES`); None for PostgreSQL or an in-memory database. Start it to run."""
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None

        @event.listens_for(engine, "connect")
        def _bounded_autocheckpoint(connection: Any, _record: Any) -> None:
            connection.execute(f"PRAGMA wal_autocheckpoint={cls.BOUND_PAGES}")

        engine.dispose()  # pooled connections opened before would keep checkpointing at every commit
        return cls(database, interval_seconds)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self._database, check_same_thread=False, timeout=30)
        try:
            while not self._stopping.wait(self._interval):
                try:
                    busy, log_pages, checkpointed = connection.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                except sqlite3.Error as error:  # logged and tried again; commits still have the bound
                    log.warning("sqlite.checkpoint_failed", error=repr(error)[:300])
                else:
                    self.last = (busy, log_pages, checkpointed)
        finally:
            connection.close()


WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE")
"""What takes the process's writer lock: the first statement of a transaction that writes."""
_WRITE_PREFIX = max(len(prefix) for prefix in WRITE_STATEMENTS)


def _one_writer_at_a_time(engine: Engine, timeout_seconds: float = 30.0) -> None:
    """SQLite lets one transaction write at a time; a second writer gets SQLITE_BUSY and SQLite's busy
    handler sleeps (up to 100 ms a time) before trying again, which makes latency jump under load. Within
    the process, writers instead queue on a lock, taken at a transaction's first write and released when
    it commits or rolls back; readers never take it (WAL)."""
    lock = threading.Lock()
    holders: set[int] = set()
    dialect = engine.dialect
    commit, rollback, close = dialect.do_commit, dialect.do_rollback, dialect.do_close

    @event.listens_for(engine, "before_cursor_execute")
    def _take(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        key = id(connection.connection.dbapi_connection)
        if key not in holders and statement.lstrip()[:_WRITE_PREFIX].upper().startswith(WRITE_STATEMENTS):
            if not lock.acquire(timeout=timeout_seconds):
                raise sqlite3.OperationalError("database is locked (waited for this process's other writer)")
            holders.add(key)

    def _release(connection: Any) -> None:
        # SQLAlchemy passes the pool's proxy to do_commit/do_rollback and the driver's connection to do_close
        key = id(getattr(connection, "dbapi_connection", connection))
        if key in holders:
            holders.discard(key)
            lock.release()

    def do_commit(dbapi_connection: Any) -> None:
        try:
            commit(dbapi_connection)
        finally:
            _release(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        finally:
            _release(dbapi_connection)

    def do_close(dbapi_connection: Any) -> None:
        try:
            close(dbapi_connection)
        finally:
            _release(dbapi_connection)

    setattr(dialect, "do_commit", do_commit)  # noqa: B010 - released only once the commit is done
    setattr(dialect, "do_rollback", do_rollback)  # noqa: B010
    setattr(dialect, "do_close", do_close)  # noqa: B010 - a connection dropped mid-transaction


def lock_for_writing(session: OrmSession) -> None:
    """SQLite: take the write locks now (this process's writer lock, then SQLite's: BEGIN IMMEDIATE), before
    reading what the transaction's writes depend on — what SELECT ... FOR UPDATE does for the rows read
    on PostgreSQL. Nothing on PostgreSQL, nor once the transaction has written (it holds them already)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_Select = TypeVar("_Select", bound="SelectBase[*tuple[Any, ...]]")


def locked(session: OrmSession, query: _Select, **for_update: Any) -> _Select:
    """`query` as a locking read: the rows it reads are locked until the transaction ends (FOR UPDATE,
    `for_update` passed on; SQLite: `lock_for_writing`) and read as they are now, even those the session
    had loaded before. Every change judged on stored state (a scan, an order's transition) reads it so."""
    lock_for_writing(session)
    return query.with_for_update(**for_update).execution_options(populate_existing=True)


def lock_name(session: OrmSession, name: str) -> None:
    """Serialise the transactions that change what `name` stands for (rows that may not exist yet, so no row
    lock can): PostgreSQL's transaction-scoped advisory lock on the name's 64-bit hash; SQLite's write lock
    (`lock_for_writing`). Held until the transaction ends."""
    lock_for_writing(session)
    if session.connection().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name})


def create_tables(engine: Engine, tables: Sequence[Table]) -> None:
    """Create only this service's tables: each service owns its own database. A table that exists gets
    the nullable columns added since it was made, and its strings widened to the model's length
    (create_all alone creates only missing tables)."""
    SQLModel.metadata.create_all(engine, tables=list(tables))
    add_missing_columns(engine, tables)
    widen_string_columns(engine, tables)


def add_missing_columns(engine: Engine, tables: Sequence[Table]) -> list[str]:
    """`ALTER TABLE ... ADD COLUMN` for each nullable column a table lacks: the schema changes this
    project makes are new nullable columns; anything else needs a migration of its own. Returns what it added."""
    added: list[str] = []
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                quote = engine.dialect.identifier_preparer.quote
                connection.execute(
                    text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")
                )
                added.append(f"{table.name}.{column.name}")
    if added:
        log.info("db.columns_added", columns=added)
    return added


def widen_string_columns(engine: Engine, tables: Sequence[Table]) -> list[str]:
    """`ALTER COLUMN ... TYPE VARCHAR(n)` on PostgreSQL for each string column narrower in the database than
    in its model (SQLite does not enforce the length). Widening keeps every value. Returns what it widened."""
    if not is_postgres(engine):
        return []
    widened: list[str] = []
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in tables:
            present = {column["name"]: column["type"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                wanted = getattr(column.type, "length", None)
                have = getattr(present.get(column.name), "length", None)
                if wanted is None or have is None or have >= wanted:
                    continue
                quote = engine.dialect.identifier_preparer.quote
                connection.execute(
                    text(
                        f"ALTER TABLE {quote(table.name)} ALTER COLUMN {quote(column.name)} TYPE VARCHAR({wanted})"
                    )
                )
                widened.append(f"{table.name}.{column.name}")
    if widened:
        log.info("db.columns_widened", columns=widened)
    return widened


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def one_of(
    session: OrmSession,
    column: ColumnElement[Any] | Mapped[Any],
    values: list[Any],
    element_type: TypeEngine[Any],
) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL one array parameter (`column = ANY(:values)`) instead: an IN
    list of thousands of parameters costs more to build and send than the look-up itself."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(element_type)))
    return column.in_(values)


def database_reachable(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


class UtcDateTime(TypeDecorator[datetime]):
    """Stores instants as UTC on every database and gives them back timezone-aware (UTC)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: give a timezone")
        # Nearly every instant is in UTC already (the contracts normalise to it): no conversion then.
        return (value if value.tzinfo is UTC else value.astimezone(UTC)).replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_sqlite_text(value: datetime | None) -> str | None:
            # What SQLAlchemy's SQLite DATETIME stores ('YYYY-MM-DD HH:MM:SS.ffffff'), formatted in one C
            # call instead of a second layer of Python processor: most rows carry two or three instants.
            utc = self.process_bind_param(value, dialect)
            return None if utc is None else utc.isoformat(" ", "microseconds")

        return to_sqlite_text

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def tables_of(*models: type[SQLModel]) -> tuple[Table, ...]:
    """The tables behind SQLModel table classes (what `create_tables` takes)."""
    tables: list[Table] = []
    for model in models:
        table = getattr(model, "__table__", None)
        if not isinstance(table, Table):
            raise TypeError(f"{model.__name__} is not a table model")
        tables.append(table)
    return tuple(tables)
