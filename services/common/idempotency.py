"""`Idempotency-Key` on write requests, once for every service (the behaviour of the IETF
Idempotency-Key header draft): the first answer to a caller's key is kept with a digest of the request, so
that a retry gets that same answer and nothing is done twice.

A key is the caller's own (the table is keyed by the caller's subject and the key). Before any work the
key is claimed (a row committed at once, with a token of this request):
- the same key with a different request is the caller's mistake: 422, naming the header;
- the same key while its first request is still being worked on: 409, retry later (`Retry-After`);
- the same key after the first request was answered: that answer again.
The answer is then kept in one of two ways:
- `Claim.keep` inside the request's own transaction (the answer is committed with its effect, or neither);
- `Claim.complete` after, for work committed elsewhere (scans, applied by the scan writer).
A request that fails releases its claim, so the key can be used again. A claim left pending longer than
`CLAIM_LEASE` belongs to a request that died: a retry with the same request takes it over (work kept with
`keep` was never committed; work finished with `complete` must be safe to repeat), and the old request, if
it was only slow, can no longer keep its answer (its token is gone): it is answered 409 and rolled back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from cgt_contracts.envelope import utc_now
from fastapi import Header
from fastapi.responses import JSONResponse
from sqlalchemy import Column, Text, UniqueConstraint, delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select, update

from services.common.db import UtcDateTime
from services.common.problems import CONFLICT, TYPE_PREFIX, FieldError, ProblemError
from services.common.unit_of_work import session_factory

HEADER = "Idempotency-Key"
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry safely: the same key again answers with the first answer (the same key with "
        "another request is 422; while the first request is still being answered, 409)",
    ),
]
KEY_REUSED = f"{TYPE_PREFIX}idempotency-key-reused"
CLAIM_LEASE = timedelta(seconds=30)
"""How long a claim without an answer counts as in flight: longer than any request may wait for a lock
(SQLite's writer, 30 s). A claim older than this belongs to a request that died between its claim and
its answer — or is very slow, and then loses its claim safely (see the module's docstring)."""
RETRY_AFTER_SECONDS = 1


class IdempotentResponse(SQLModel, table=True):
    """The first answer to a caller's Idempotency-Key, and the digest of the request it answered."""

    __tablename__ = "idempotent_response"
    __table_args__ = (UniqueConstraint("caller", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    caller: str = Field(max_length=64)
    key: str = Field(max_length=128)
    request_sha256: str = Field(max_length=64)
    status_code: int | None = None
    """None while the request is being worked on (claimed, not answered yet)."""
    body: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    """When the key was claimed (or its claim last taken over)."""
    claim_token: str | None = Field(default=None, max_length=32)
    """The request that holds the claim: only it may keep its answer or release the key."""


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


def _key_error(detail: str) -> list[FieldError]:
    return [FieldError(location="header", pointer=f"/{HEADER}", detail=detail)]


def reused_for_another_request() -> ProblemError:
    """422: the key answered (or is answering) a different request; the caller must use a new key."""
    return ProblemError(
        422,
        f"this {HEADER} was used before for a different request: use a new key for a new request",
        type=KEY_REUSED,
        title="The Idempotency-Key was used for another request",
        errors=_key_error("already used for another request"),
    )


def still_in_flight() -> ProblemError:
    """409: the first request with this key has not been answered yet; retrying later gets its answer."""
    return ProblemError(
        409,
        f"the first request with this {HEADER} is still being answered: retry it in a moment",
        type=CONFLICT,
        title="The request conflicts with the current state",
        errors=_key_error("its first request is still in flight"),
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key: the first answer to replay (`answer`), or the key reserved for this
    request (`token`), or nothing at all for a request without a key. Keep, complete or release it."""

    request: KeyedRequest | None
    answer: StoredAnswer | None = None
    token: str | None = None

    def _mine(self) -> Any:
        assert self.request is not None and self.token is not None
        return (
            (col(IdempotentResponse.caller) == self.request.caller)
            & (col(IdempotentResponse.key) == self.request.key)
            & (col(IdempotentResponse.claim_token) == self.token)
            & col(IdempotentResponse.status_code).is_(None)
        )

    def _store(self, session: Session, status_code: int, body: Any) -> bool:
        stored = session.exec(
            update(IdempotentResponse)
            .where(self._mine())
            .values(status_code=status_code, body=json.dumps(body))
        )
        return bool(stored.rowcount == 1)

    def keep(self, session: Session, status_code: int, body: Any) -> None:
        """Write the answer in the request's own transaction, to be committed with its effect. A claim
        taken over meanwhile (this request outlived `CLAIM_LEASE`) is 409: the caller rolls back."""
        if self.token is not None and not self._store(session, status_code, body):
            raise still_in_flight()

    def complete(self, engine: Engine, status_code: int, body: Any) -> None:
        """Keep the answer of work committed elsewhere (a claim taken over meanwhile keeps the other's)."""
        if self.token is None:
            return
        with session_factory(engine)() as session:
            self._store(session, status_code, body)
            session.commit()

    def release(self, engine: Engine) -> None:
        """Give the key back after a failed request (nothing was committed): it may be used again."""
        if self.token is None:
            return
        with session_factory(engine)() as session:
            session.exec(delete(IdempotentResponse).where(self._mine()))
            session.commit()


def _row(session: Session, request: KeyedRequest) -> IdempotentResponse | None:
    return session.exec(
        select(IdempotentResponse)
        .where(IdempotentResponse.caller == request.caller)
        .where(IdempotentResponse.key == request.key)
        .execution_options(populate_existing=True)
    ).first()


def claim(engine: Engine, request: KeyedRequest | None) -> Claim:
    """Reserve the key for this request, committed at once (call it before the request's own transaction
    writes anything); the first answer if there is one. 422 if the key is another request's, 409 while
    its first request is in flight."""
    if request is None:
        return Claim(None)
    token = secrets.token_hex(16)
    with session_factory(engine)() as session:
        row = _row(session, request)
        if row is None:
            session.add(
                IdempotentResponse(
                    caller=request.caller,
                    key=request.key,
                    request_sha256=request.request_sha256,
                    claim_token=token,
                )
            )
            try:
                session.commit()
                return Claim(request, token=token)
            except IntegrityError:  # a concurrent request with the same key claimed it first
                session.rollback()
                row = _row(session, request)
                assert row is not None  # a claim is deleted only by its own request, after it failed
        return _judge(session, row, request, token)


def _judge(session: Session, row: IdempotentResponse, request: KeyedRequest, token: str) -> Claim:
    """What an existing claim means for this request: another request's (422), answered (replay), in
    flight (409), or abandoned (taken over: compare-and-set on its token)."""
    if row.request_sha256 != request.request_sha256:
        raise reused_for_another_request()
    if row.status_code is not None and row.body is not None:
        return Claim(request, answer=StoredAnswer(row.status_code, json.loads(row.body)))
    if utc_now() - row.created_at < CLAIM_LEASE:
        raise still_in_flight()
    taken = session.exec(
        update(IdempotentResponse)
        .where(col(IdempotentResponse.id) == row.id)
        .where(col(IdempotentResponse.status_code).is_(None))
        .where(
            col(IdempotentResponse.claim_token).is_(None)
            if row.claim_token is None
            else col(IdempotentResponse.claim_token) == row.claim_token
        )
        .values(claim_token=token, created_at=utc_now())
    )
    session.commit()
    if taken.rowcount != 1:  # another retry took it over first
        raise still_in_flight()
    return Claim(request, token=token)


@contextmanager
def claimed(session: Session, request: KeyedRequest | None) -> Iterator[Claim]:
    """`claim` for a request whose work and answer are committed in `session` (with `Claim.keep`): if the
    work fails, the session is rolled back and the key released, so that a retry may do it."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    held = claim(engine, request)
    try:
        yield held
    except BaseException:
        session.rollback()  # first: on SQLite the release waits for this transaction's write lock
        held.release(engine)
        raise
