"""Database and log files are created readable by their owner only (mode 0600), whatever the umask: a
SQLite database with its write-ahead log and shared-memory files, and the logs the stack writes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from services.common.db import make_engine
from services.common.private_files import open_owner_only_log


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default (files 0644): what the files must not inherit."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_a_sqlite_database_and_its_log_files_are_the_owners_only(tmp_path: Path) -> None:
    database = tmp_path / "service.db"
    engine = make_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE patient (identity TEXT)"))
        connection.execute(text("INSERT INTO patient VALUES ('encrypted')"))
    with engine.connect() as connection:  # WAL and shared memory exist while a connection is open
        connection.execute(text("SELECT * FROM patient")).all()
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        assert all(path.exists() for path in files)
        assert [mode(path) for path in files] == [0o600, 0o600, 0o600]
    engine.dispose()


@pytest.mark.usefixtures("permissive_umask")
def test_an_existing_readable_database_file_is_narrowed_to_its_owner(tmp_path: Path) -> None:
    database = tmp_path / "older.db"
    database.touch(mode=0o644)
    assert mode(database) == 0o644
    make_engine(f"sqlite:///{database}").dispose()
    assert mode(database) == 0o600


@pytest.mark.usefixtures("permissive_umask")
def test_a_log_file_is_created_and_kept_the_owners_only(tmp_path: Path) -> None:
    created, older = tmp_path / "service.log", tmp_path / "older.log"
    older.write_text("before\n")
    older.chmod(0o644)
    for path in (created, older):
        with open_owner_only_log(path) as log:
            log.write(b"a line\n")
        assert mode(path) == 0o600
    assert older.read_text() == "before\na line\n"  # appended to, not truncated
