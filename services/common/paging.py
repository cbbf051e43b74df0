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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response
from sqlalchemy import TypeDecorator, tuple_
from sqlmodel import Session, col
from sqlmodel.sql.expression import SelectOfScalar

from services.common import problems

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: tuple[str, ...] | None
    """The cursor's key values as text (typed by the list's key columns when the page is read)."""


FIRST_PAGE = PageRequest(limit=DEFAULT_LIMIT, after=None)


def _text(value: object) -> str:
    """A key value as text; times in UTC with microseconds, fixed width, so that texts order as times do."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    return str(value)


def encode_cursor(*values: object) -> str:
    raw = json.dumps([_text(value) for value in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor() -> problems.ProblemError:
    return problems.invalid("query", "cursor", "not a cursor this list gave")


def decode_cursor(cursor: str) -> tuple[str, ...]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad_cursor() from None
    if (
        not isinstance(values, list)
        or not 1 <= len(values) <= 3
        or not all(isinstance(v, str) for v in values)
    ):
        raise _bad_cursor()
    return tuple(values)


def _typed(column: Any, text: str) -> object:
    """A cursor value as its key column's Python type; one that does not parse is the same 422."""
    column_type = column.type
    kind = (column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type).python_type
    try:
        if kind is datetime:
            instant = datetime.fromisoformat(text)
            if instant.tzinfo is None:
                raise ValueError("naive")
            return instant
        if kind is date:
            return date.fromisoformat(text)
        return kind(text)
    except (ValueError, TypeError):
        raise _bad_cursor() from None


def page_request(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (at most 500)")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=200, description='The `Link` rel="next" cursor of the previous page')
    ] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=None if cursor is None else decode_cursor(cursor))


Page = Annotated[PageRequest, Depends(page_request)]


Key = tuple[Any, ...]
"""The columns a list is ordered by, unique together and growing as rows are added (a time, then an id)."""


def key_of(model: Any) -> Key:
    return (col(model.created_at), col(model.id))


def paged(
    query: SelectOfScalar[T], key: Key, page: PageRequest, *, newest_first: bool = False
) -> SelectOfScalar[T]:
    """`query` ordered by `key` (or the reverse), from just after the cursor, one row more than the page
    (so `page_of` knows whether there is another)."""
    if page.after is not None:
        if len(page.after) != len(key):
            raise _bad_cursor()
        after = tuple_(*(_typed(column, text) for column, text in zip(key, page.after, strict=True)))
        query = query.where(tuple_(*key) < after if newest_first else tuple_(*key) > after)
    order = [column.desc() for column in key] if newest_first else list(key)
    return query.order_by(*order).limit(page.limit + 1)


def page_of(
    session: Session,
    query: SelectOfScalar[T],
    model: Any,
    page: PageRequest,
    *,
    key: Key | None = None,
    newest_first: bool = False,
) -> tuple[list[T], str | None]:
    """The page's rows and the cursor of the next page (None on the last). Ordered by `key`, by default
    the model's `(created_at, id)`."""
    key = key or key_of(model)
    rows = list(session.exec(paged(query, key, page, newest_first=newest_first)))
    if len(rows) <= page.limit:
        return rows, None
    last: Any = rows[page.limit - 1]
    return rows[: page.limit], encode_cursor(*(getattr(last, column.key) for column in key))


def page_list(
    items: list[T], key: Callable[[T], tuple[Any, ...]], page: PageRequest
) -> tuple[list[T], str | None]:
    """The same paging over a list computed in memory (the worklist), ordered by `key` (values whose text
    form orders as they do: ISO times, then a fixed-width id)."""
    ordered = sorted(items, key=key)
    if page.after is not None:
        after = page.after
        ordered = [item for item in ordered if tuple(_text(value) for value in key(item)) > after]
    if len(ordered) <= page.limit:
        return ordered, None
    return ordered[: page.limit], encode_cursor(*key(ordered[page.limit - 1]))


def link_next(request: Request, response: Response, next_cursor: str | None) -> None:
    """Set `Link: <...>; rel="next"` to this list's URL, same filters, from `next_cursor` (if any)."""
    if next_cursor is not None:
        url = request.url.include_query_params(cursor=next_cursor)
        response.headers["Link"] = f'<{url}>; rel="next"'
