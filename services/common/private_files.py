"""Files that hold patient data, keys or logs are created readable and writable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

OWNER_ONLY = 0o600
OWNER_ONLY_UMASK = 0o077
"""For child processes (the services, Kafka): every file they create is their owner's only."""


def ensure_owner_only(path: Path) -> None:
    """Create the file if it is missing; either way leave it mode 0600 (SQLite gives its -wal and -shm
    files the mode of the database file)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, OWNER_ONLY))
    os.chmod(path, OWNER_ONLY)


def open_owner_only_log(path: Path) -> BinaryIO:
    """A log file opened for appending, created (or narrowed to) 0600."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, OWNER_ONLY)
    os.fchmod(descriptor, OWNER_ONLY)
    return os.fdopen(descriptor, "ab")


def write_owner_only(path: Path, text: str) -> None:
    """Written readable by its owner only: keys and passwords."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
    os.fchmod(descriptor, OWNER_ONLY)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
