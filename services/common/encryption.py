"""Secrets at rest under a key ring: several Fernet keys, the first encrypting, every one decrypting, so a
key is rotated without downtime (list the new key first, re-encrypt the rows, then drop the old key)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Column, Table, select, update
from sqlalchemy.engine import Engine

log = structlog.get_logger()
FERNET_TOKEN_PREFIX = "gAAAAA"
"""How every Fernet token starts (version byte 0x80 and a timestamp's high bytes, base64)."""


class KeyRingError(ValueError):
    """A key ring variable that does not hold Fernet keys (the message names the variable, not the value)."""


def ring_keys(configured: str) -> list[str]:
    """The keys of a ring variable: one Fernet key, or several separated by commas, newest first."""
    return [key.strip() for key in configured.split(",") if key.strip()]


def key_ring(configured: str, variable: str) -> MultiFernet:
    keys = ring_keys(configured)
    if not keys:
        raise KeyRingError(f"{variable}: no key configured")
    fernets: list[Fernet] = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except ValueError:
            raise KeyRingError(
                f"{variable}: key {position} is not a Fernet key (urlsafe base64 of 32 bytes)"
            ) from None
    return MultiFernet(fernets)


def reencrypt_column(
    engine: Engine,
    table: Table,
    column: Column[str],
    ring: MultiFernet,
    *,
    plaintext_before: bool = False,
    batch_size: int = 500,
) -> int:
    """Re-encrypt every value of `column` under the ring's first key, a batch per transaction, while the
    service runs. Each row is written only if it still holds what was read (compare-and-set), so a value
    the service changes meanwhile is never overwritten with an older one. `plaintext_before`: values
    written before the column was encrypted are encrypted now. Returns the number of rows rewritten."""
    (key,) = table.primary_key.columns
    rewritten = 0
    after = None
    while True:
        query = (
            select(key, column).where(column.is_not(None)).where(column != "").order_by(key).limit(batch_size)
        )
        if after is not None:
            query = query.where(key > after)
        with engine.begin() as connection:
            rows = connection.execute(query).all()
            for row_key, stored in rows:
                token = _rotated(ring, stored, plaintext_before, f"{table.name}.{column.name}")
                result = connection.execute(
                    update(table).where(key == row_key).where(column == stored).values({column.name: token})
                )
                rewritten += result.rowcount
        if len(rows) < batch_size:
            break
        after = rows[-1][0]
    log.info("encryption.reencrypted", table=table.name, column=column.name, rows=rewritten)
    return rewritten


def _rotated(ring: MultiFernet, stored: str, plaintext_before: bool, where: str) -> str:
    try:
        return ring.rotate(stored.encode()).decode()
    except InvalidToken:
        if plaintext_before and not stored.startswith(FERNET_TOKEN_PREFIX):
            return ring.encrypt(stored.encode()).decode()
        raise KeyRingError(f"{where}: a value is encrypted under none of the configured keys") from None


def rekey_command(rewrite: Callable[[], dict[str, object]]) -> int:
    """A rekey CLI's run: prints what `rewrite` re-encrypted as one JSON line (exit 0), or why it stopped
    (exit 2: a value under none of the listed keys)."""
    try:
        done = rewrite()
    except KeyRingError as error:
        print(f"rekey stopped: {error}", file=sys.stderr)
        return 2
    print(json.dumps(done))
    return 0
