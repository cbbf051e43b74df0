"""The unit of work: append-only rows (scans, readings, ledger entries, inbox, outbox) queued in a
transaction and written just before it commits, table by table, in one driver call each.

A row is a typed, frozen value whose class names its table (`class ScanRow(AppendRow, table=SCAN_TABLE)`);
its fields are checked against the table's columns when the class is defined, so a missing or misspelt
column fails at import, not as a NULL in production. Rows are queued with
`unit_of_work(session).append(ScanRow(...))`. The writing is hooked to the service's own session factory
(`session_factory(engine)`), not to every SQLAlchemy session in the process: a session made elsewhere
refuses `unit_of_work` instead of silently dropping its rows.

The same factory wakes what waits for committed rows (the outbox relay, the webhook deliverer): a waker
registered with `wake_after_commit(engine, table, waker)` is called once after each commit whose
transaction wrote that table. No route, consumer or writer wakes anything by hand, so none can forget to.

For rows that are only ever inserted, this replaces one ORM object and one statement per row: the cost
SQLAlchemy's per-object bookkeeping added to a batch of thousands of scans (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar, Literal, dataclass_transform

import structlog
from sqlalchemy import Table, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, UOWTransaction, sessionmaker
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session

_UNIT_OF_WORK = "cgt_unit_of_work"
_FACTORY_MARK = "cgt_session_factory"
_TRANSACTION_CACHES = "cgt_transaction_caches"
_WRITTEN = "cgt_tables_written"
log = structlog.get_logger()
Write = Literal["insert", "update"]
Waker = Callable[[], None]


@dataclass_transform(frozen_default=True, kw_only_default=True)
class AppendRow:
    """Base of a row written by the unit of work. Subclasses name their table and declare its columns as
    fields (every column but a generated integer key); they become frozen, keyword-only dataclasses."""

    table: ClassVar[Table]
    columns: ClassVar[tuple[str, ...]]
    values: ClassVar[Callable[[Any], tuple[Any, ...]]]

    def __init_subclass__(cls, *, table: Table, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True, slots=False)(cls)
        names = tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]
        _check_columns(cls.__name__, names, table)
        cls.table = table
        cls.columns = names
        cls.values = staticmethod(attrgetter(*names)) if len(names) > 1 else staticmethod(_one(names[0]))


def _one(name: str) -> Callable[[Any], tuple[Any, ...]]:
    get = attrgetter(name)
    return lambda row: (get(row),)


def _check_columns(row_class: str, fields: tuple[str, ...], table: Table) -> None:
    """The row's fields are the table's columns, except an integer primary key the database generates."""
    columns = {column.name for column in table.columns}
    unknown = sorted(set(fields) - columns)
    generated = {
        column.name
        for column in table.primary_key.columns
        if column.autoincrement in (True, "auto") and column.type.python_type is int
    }
    missing = sorted(columns - set(fields) - generated)
    if unknown or missing:
        raise TypeError(
            f"{row_class} does not match table {table.name}: "
            f"unknown fields {unknown or 'none'}, missing columns {missing or 'none'}"
        )


class UnitOfWork:
    """The rows one transaction appends, per table in the order they were appended."""

    def __init__(self, session: OrmSession) -> None:
        self._session = session
        self._rows: dict[type[AppendRow], list[AppendRow]] = {}

    def append(self, row: AppendRow) -> None:
        self._rows.setdefault(type(row), []).append(row)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def write(self) -> None:
        """Write the queued rows now (ORM objects first: rows may refer to them) and empty the queue."""
        rows, self._rows = self._rows, {}
        if not rows:
            return
        self._session.flush()
        connection = self._session.connection()
        for row_class, table_rows in rows.items():
            _mark_written(self._session, row_class.table.name, "insert")
            insert_rows(
                connection, row_class.table, row_class.columns, [row_class.values(r) for r in table_rows]
            )


def unit_of_work(session: OrmSession) -> UnitOfWork:
    """The session's unit of work (its transaction begun, so that a rollback before any SQL still drops
    what was appended). Only sessions of a `session_factory` have one."""
    if not session.info.get(_FACTORY_MARK):
        raise TypeError("this session was not made by services.common.unit_of_work.session_factory")
    uow: UnitOfWork | None = session.info.get(_UNIT_OF_WORK)
    if uow is None:
        if not session.in_transaction():
            session.begin()
        uow = session.info[_UNIT_OF_WORK] = UnitOfWork(session)
    return uow


def transaction_cache(session: OrmSession, name: str) -> dict[Any, Any]:
    """A dictionary that lives as long as the session's current transaction (lookups a batch repeats)."""
    caches: dict[str, dict[Any, Any]] = session.info.setdefault(_TRANSACTION_CACHES, {})
    return caches.setdefault(name, {})


_factories: weakref.WeakKeyDictionary[Engine, sessionmaker[Session]] = weakref.WeakKeyDictionary()
_wakers: weakref.WeakKeyDictionary[Engine, dict[tuple[str, Write], list[Waker]]] = weakref.WeakKeyDictionary()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """The sessions of the service whose database `engine` is: they write their unit of work before each
    commit and drop it on rollback, and wake what waits for the tables a commit wrote. One factory per
    engine, so every caller shares its hooks."""
    factory = _factories.get(engine)
    if factory is None:
        factory = sessionmaker(engine, class_=Session, info={_FACTORY_MARK: True})
        event.listen(factory, "before_commit", _write_before_commit)
        event.listen(factory, "after_flush", _note_flushed)
        event.listen(factory, "do_orm_execute", _note_statement)
        event.listen(factory, "after_commit", _wake_after_commit)
        event.listen(factory, "after_transaction_end", _end_transaction)
        _factories[engine] = factory
    return factory


def wake_after_commit(
    engine: Engine, table: Table, waker: Waker, *, on: tuple[Write, ...] = ("insert",)
) -> Callable[[], None]:
    """Call `waker` after every commit of `engine`'s sessions that wrote `table` (rows inserted, or also
    updated if `on` says so). It runs in the committing thread, so it must only signal (e.g. set an
    event thread-safely). Returns what unregisters it."""
    registered = _wakers.setdefault(engine, {})
    keys = [(table.name, write) for write in on]
    for key in keys:
        registered.setdefault(key, []).append(waker)

    def unregister() -> None:
        for key in keys:
            if waker in registered.get(key, []):
                registered[key].remove(waker)

    return unregister


def _mark_written(session: OrmSession, table_name: str, write: Write) -> None:
    written: set[tuple[str, Write]] = session.info.setdefault(_WRITTEN, set())
    written.add((table_name, write))


def _note_flushed(session: OrmSession, flush_context: UOWTransaction) -> None:
    """ORM objects the flush inserted or updated (after_flush still sees them as new and dirty)."""
    for instance in session.new:
        _mark_written(session, _table_name(instance), "insert")
    for instance in session.dirty:
        _mark_written(session, _table_name(instance), "update")


def _table_name(instance: object) -> str:
    return str(getattr(type(instance), "__tablename__", ""))


def _note_statement(state: ORMExecuteState) -> None:
    """INSERT and UPDATE statements run through the session (`session.exec(update(Model)...)`)."""
    if state.is_insert or state.is_update:
        table = getattr(state.statement, "table", None)
        if isinstance(table, Table):
            _mark_written(state.session, table.name, "insert" if state.is_insert else "update")


def _wake_after_commit(session: OrmSession) -> None:
    written: set[tuple[str, Write]] = session.info.pop(_WRITTEN, set())
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    registered = _wakers.get(engine)
    if not written or not registered:
        return
    called: set[int] = set()
    for key in written:
        for waker in registered.get(key, ()):
            if id(waker) in called:
                continue
            called.add(id(waker))
            try:
                waker()
            except Exception:
                # The transaction is committed: a waker that fails only delays its reader to its next poll.
                log.exception("commit.waker_failed", table=key[0])


def _write_before_commit(session: OrmSession) -> None:
    uow: UnitOfWork | None = session.info.get(_UNIT_OF_WORK)
    if uow is not None:
        uow.write()


def _end_transaction(session: OrmSession, transaction: Any) -> None:
    """After a commit or any rollback (`unit_of_work` begins the transaction, so even a rollback before any
    SQL ends one): what was queued, cached and noted as written belonged to that transaction."""
    if transaction.parent is None:  # the outermost transaction, not a savepoint
        session.info.pop(_UNIT_OF_WORK, None)
        session.info.pop(_TRANSACTION_CACHES, None)
        session.info.pop(_WRITTEN, None)


COPY_FROM_ROWS = 8
"""From this many rows on, PostgreSQL gets them by COPY; fewer go as one INSERT with a VALUES list. A
pipelined executemany costs client CPU for every row; COPY costs least per row but pays a second round
trip, which outweighs its savings for a few rows. The split point was measured (docs/performance.md)."""
_ProcessedColumns = list[tuple[int, Callable[[Any], Any]]]
_bind_processors: dict[tuple[Table, str, tuple[str, ...]], _ProcessedColumns] = {}


def insert_rows(
    connection: Connection, table: Table, names: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Rows converted by the columns' own bind processors (what SQLAlchemy would send), then handed to the
    driver in one call: COPY or one multi-row INSERT on PostgreSQL, executemany on SQLite. SQLAlchemy's
    per-parameter bookkeeping cost more than the database's own work for a batch of thousands of rows."""
    dialect = connection.dialect
    key = (table, dialect.name, names)
    processed = _bind_processors.get(key)
    if processed is None:
        processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
        processed = [(i, process) for i, process in enumerate(processors) if process is not None]
        _bind_processors[key] = processed
    converted: list[tuple[Any, ...]] = rows
    if processed:
        converted = []
        for row in rows:
            values = list(row)
            for i, process in processed:
                values[i] = process(values[i])
            converted.append(tuple(values))
    quote = dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in names)
    if dialect.name == "postgresql":
        driver_connection = connection.connection.driver_connection
        assert driver_connection is not None
        with driver_connection.cursor() as cursor:
            if len(converted) >= COPY_FROM_ROWS:
                with cursor.copy(f"COPY {quote(table.name)} ({columns}) FROM STDIN") as copy:
                    for converted_row in converted:
                        copy.write_row(converted_row)
            else:
                values_row = f"({', '.join('%s' for _ in names)})"
                cursor.execute(
                    f"INSERT INTO {quote(table.name)} ({columns}) VALUES {', '.join(values_row for _ in converted)}",
                    [value for converted_row in converted for value in converted_row],
                )
    else:
        placeholders = ", ".join("?" for _ in names)
        connection.exec_driver_sql(
            f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({placeholders})", converted
        )
