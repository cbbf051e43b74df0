"""The CloudEvents 1.0 envelope every CGT Logistics event travels in.

Every event is keyed by its chain-of-identity (COI) identifier (`subject`) so that all events of one
patient's therapy stay in order on their topic. Payloads carry no patient-identifying data (DESIGN I6).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
"""A timezone-aware instant, normalised to UTC. Naive datetimes are refused."""

COI_REGEX = r"^CH[A-NP-Z][0-9]{4}[0-9]{2}[0-9A-Z]{6}[0-9A-Z*]$"
"""The one definition of a chain-of-identity identifier's form (ISBT 128 ST-028, data structure 040):
`CH`, the issuer's FIN (a letter other than O and 4 digits), a two-digit year, a six-character sequence
and the MOD 37-2 check character. Services and contracts use it from here; the check character itself
is verified by `services.common.identifiers.has_valid_check`."""

COI_LENGTH = 16

CoiIdentifier = Annotated[str, Field(min_length=COI_LENGTH, max_length=COI_LENGTH, pattern=COI_REGEX)]
"""A chain-of-identity identifier as printed on labels, without the `&/` label prefix."""

ORDER_SUBJECT_REGEX = r"^[0-9A-F]{32}$"
"""An order rejected before it had a COI is keyed by its id: 32 upper-case hex digits."""

EventSubject = Annotated[
    str, Field(min_length=COI_LENGTH, max_length=32, pattern=f"({COI_REGEX})|({ORDER_SUBJECT_REGEX})")
]
"""What an event is about: the COI, or the order id of an order rejected before it had one."""

IDENTIFIER_REGEX = r"^[A-Za-z0-9._:\-]+$"

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=IDENTIFIER_REGEX)]


class ContractModel(BaseModel):
    """Base of every message shape: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


class _RandomPool(threading.local):
    """Random bytes from the OS, drawn 4 KiB at a time (a system call per UUID is costly at volume)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0

    def take16(self) -> bytes:
        if self.offset + 16 > len(self.buffer):
            self.buffer, self.offset = os.urandom(4096), 0
        chunk = self.buffer[self.offset : self.offset + 16]
        self.offset += 16
        return chunk


_POOL = _RandomPool()


_RAND_B = (1 << 62) - 1
"""The 62 random bits after the variant (RFC 9562's rand_b)."""


def new_uuid() -> UUID:
    """A version 7 UUID (RFC 9562 §5.7): 48 bits of Unix time in milliseconds, then 74 bits of OS randomness.
    Ids made close in time sort close together, so the database indexes they key (scans, the inbox, the
    outbox) grow at one end instead of having a random page rewritten for every row."""
    random = int.from_bytes(_POOL.take16(), "big")
    return UUID(
        int=(time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (random >> 64 & 0xFFF) << 64
        | 0b10 << 62
        | random & _RAND_B
    )


class EventEnvelope(ContractModel):
    """CloudEvents 1.0 attributes plus correlation and causation ids.

    Concrete events narrow `type` to a versioned literal (``order.accepted.v1``) and `data` to a payload.
    """

    specversion: Literal["1.0"] = "1.0"
    id: UUID = Field(default_factory=new_uuid)
    source: Annotated[str, Field(min_length=1, max_length=128)]
    type: str
    time: UtcDatetime = Field(default_factory=utc_now)
    subject: EventSubject
    datacontenttype: Literal["application/json"] = "application/json"
    correlationid: Annotated[str, Field(min_length=1, max_length=128)]
    causationid: Annotated[str | None, Field(max_length=128)] = None
