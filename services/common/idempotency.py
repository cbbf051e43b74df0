"""`Idempotency-Key` on write requests, once for every service: the first answer to a caller's key is
kept with a digest of the request, so that a retry gets that same answer and nothing is done twice.

A key is the caller's own (the table is keyed by the caller's subject and the key). The same key with a
different request is a mistake on the caller's side: 409, naming the header. Two ways to keep the answer:
- `remember` inside the request's own transaction (the answer is committed with its effect, or neither);
- `claim` before and `complete` after, for work committed elsewhere (scans, applied by the scan writer):
  the claim reserves the key for this request's digest, so that a different request racing with the same
  key is refused before it does anything. A claim left pending (the process died between the work and
  `complete`) is taken over by a retry with the same request, whose work must then be safe to repeat.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from cgt_contracts.envelope import utc_now
from fastapi import Header
from fastapi.responses import JSONResponse
from sqlalchemy import Column, Text, UniqueConstraint
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select, update

from services.common.db import UtcDateTime
from services.common.problems import CONFLICT, FieldError, ProblemError
from services.common.unit_of_work import session_factory

HEADER = "Idempotency-Key"
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry safely: the same key again answers with the first answer (another request "
        "with the same key is 409)",
    ),
]


class IdempotentResponse(SQLModel, table=True):
    """The first answer to a caller's Idempotency-Key, and the digest of the request it answered."""

    __tablename__ = "idempotent_response"
    __table_args__ = (UniqueConstraint("caller", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    caller: str = Field(max_length=64)
    key: str = Field(max_length=128)
    request_sha256: str = Field(max_length=64)
    status_code: int | None = None
    """None while the request is being worked on (`claim` without `complete` yet)."""
    body: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


@dataclass(frozen=True)
class KeyedRequest:
    """A request that came with an Idempotency-Key: whose key, and what was asked."""

    caller: str
    key: str
    request_sha256: str


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: Any

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status_code)


def keyed_request(caller: str, key: str | None, operation: str, payload: Any) -> KeyedRequest | None:
    """The keyed request, or None without a key. The digest covers the operation (method and path, so a
    key reused on another resource is a different request) and the validated body as canonical JSON
    (key order and spacing do not make a retry different)."""
    if key is None:
        return None
    canonical = json.dumps([operation, payload], sort_keys=True, separators=(",", ":"), default=str)
    return KeyedRequest(caller, key, hashlib.sha256(canonical.encode()).hexdigest())


def _other_request() -> ProblemError:
    return ProblemError(
        409,
        f"this {HEADER} was used before for a different request: use a new key for a new request",
        type=CONFLICT,
        title="The request conflicts with the current state",
        errors=[
            FieldError(location="header", pointer=f"/{HEADER}", detail="already used for another request")
        ],
    )


def _row(session: Session, request: KeyedRequest) -> IdempotentResponse | None:
    return session.exec(
        select(IdempotentResponse)
        .where(IdempotentResponse.caller == request.caller)
        .where(IdempotentResponse.key == request.key)
    ).first()


def earlier_answer(session: Session, request: KeyedRequest | None) -> StoredAnswer | None:
    """The first answer to this key, if there is one; 409 (`ProblemError`) if the key was used for
    another request. A pending claim of the same request has no answer yet: None."""
    if request is None:
        return None
    row = _row(session, request)
    if row is None:
        return None
    if row.request_sha256 != request.request_sha256:
        raise _other_request()
    if row.status_code is None or row.body is None:
        return None
    return StoredAnswer(row.status_code, json.loads(row.body))


def remember(session: Session, request: KeyedRequest | None, status_code: int, body: Any) -> None:
    """Keep the answer in the caller's transaction; a concurrent request with the same key then fails
    its commit (IntegrityError) and reads this answer with `earlier_answer`."""
    if request is None:
        return
    session.add(
        IdempotentResponse(
            caller=request.caller,
            key=request.key,
            request_sha256=request.request_sha256,
            status_code=status_code,
            body=json.dumps(body),
        )
    )


def claim(engine: Engine, request: KeyedRequest | None) -> StoredAnswer | None:
    """Reserve the key for this request (committed at once), or the first answer if it has one; 409 if
    the key is another request's. None: go ahead (and `complete` after)."""
    if request is None:
        return None
    with session_factory(engine)() as session:
        earlier = earlier_answer(session, request)
        if earlier is not None or _row(session, request) is not None:
            return earlier
        session.add(
            IdempotentResponse(caller=request.caller, key=request.key, request_sha256=request.request_sha256)
        )
        try:
            session.commit()
        except IntegrityError:  # a concurrent request with the same key claimed it first
            session.rollback()
            return earlier_answer(session, request)
    return None


def complete(engine: Engine, request: KeyedRequest | None, status_code: int, body: Any) -> None:
    """Keep the answer of a claimed request (the first one to complete wins)."""
    if request is None:
        return
    with session_factory(engine)() as session:
        session.exec(
            update(IdempotentResponse)
            .where(col(IdempotentResponse.caller) == request.caller)
            .where(col(IdempotentResponse.key) == request.key)
            .where(col(IdempotentResponse.status_code).is_(None))
            .values(status_code=status_code, body=json.dumps(body))
        )
        session.commit()
