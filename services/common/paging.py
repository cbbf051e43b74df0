"""Cursor paging, one mechanism for every list (`limit`, `cursor`, a `Link: <...>; rel="next"` header).

A list is ordered by `(created_at, id)`, unique and growing as rows are added, and a page starts strictly
after the cursor's key: walking the cursor sees every row exactly once, rows added meanwhile included.
The cursor is opaque (base64url of the last row's key); one that does not decode is 422 naming `cursor`,
its value never echoed. The response body keeps its shape (a JSON array); the next page's URL, with the
same filters, is in the `Link` header, absent on the last page.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import Depends, Query, Request, Response
from sqlalchemy import and_, or_
from sqlmodel import Session, col
from sqlmodel.sql.expression import SelectOfScalar

from services.common import problems

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: tuple[datetime, UUID] | None


FIRST_PAGE = PageRequest(limit=DEFAULT_LIMIT, after=None)


def encode_cursor(created_at: datetime, row_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        instant = datetime.fromisoformat(created_at)
        if instant.tzinfo is None:
            raise ValueError("naive")
        return instant, UUID(row_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise problems.invalid("query", "cursor", "not a cursor this list gave") from None


def page_request(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (at most 500)")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=200, description='The `Link` rel="next" cursor of the previous page')
    ] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=None if cursor is None else decode_cursor(cursor))


Page = Annotated[PageRequest, Depends(page_request)]


def paged(
    query: SelectOfScalar[T], model: Any, page: PageRequest, *, newest_first: bool = False
) -> SelectOfScalar[T]:
    """`query` ordered by `(created_at, id)` (or the reverse), from just after the cursor, one row more
    than the page (so `page_of` knows whether there is another)."""
    created, row_id = col(model.created_at), col(model.id)
    if page.after is not None:
        at, after_id = page.after
        if newest_first:
            query = query.where(or_(created < at, and_(created == at, row_id < after_id)))
        else:
            query = query.where(or_(created > at, and_(created == at, row_id > after_id)))
    order = (created.desc(), row_id.desc()) if newest_first else (created, row_id)
    return query.order_by(*order).limit(page.limit + 1)


def page_of(
    session: Session, query: SelectOfScalar[T], model: Any, page: PageRequest, *, newest_first: bool = False
) -> tuple[list[T], str | None]:
    """The page's rows and the cursor of the next page (None on the last)."""
    rows = list(session.exec(paged(query, model, page, newest_first=newest_first)))
    if len(rows) <= page.limit:
        return rows, None
    last: Any = rows[page.limit - 1]
    return rows[: page.limit], encode_cursor(last.created_at, last.id)


def link_next(request: Request, response: Response, next_cursor: str | None) -> None:
    """Set `Link: <...>; rel="next"` to this list's URL, same filters, from `next_cursor` (if any)."""
    if next_cursor is not None:
        url = request.url.include_query_params(cursor=next_cursor)
        response.headers["Link"] = f'<{url}>; rel="next"'
