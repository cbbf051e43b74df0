"""The console's one way to the services: an async httpx client per process, each call with the signed-in
user's bearer token and the request's correlation id. A service's refusal becomes a `ServiceError` that
carries the problem document's words (title, detail, field errors) and the correlation id, never the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
import structlog

from services.common.logging import CORRELATION_HEADER
from services.console.settings import ConsoleSettings

ServiceName = Literal["order_intake", "coi_tracking", "scheduling"]
SERVICE_TITLES: dict[str, str] = {
    "order_intake": "order intake",
    "coi_tracking": "COI tracking",
    "scheduling": "scheduling",
}


@dataclass(frozen=True)
class FieldProblem:
    """One field a service refused: where (query, body, path), which field, and why."""

    location: str
    pointer: str
    detail: str


@dataclass
class ServiceError(Exception):
    """A service said no (or did not answer): what it said, in words, with the correlation id."""

    service: str
    status: int
    title: str
    detail: str
    correlation_id: str
    errors: list[FieldProblem] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{SERVICE_TITLES.get(self.service, self.service)}: {self.status} {self.title}: {self.detail}"


class ServiceClient:
    """Calls to the three services on one connection pool. `transport`s by base URL let the tests put the
    real service apps in process (`httpx.ASGITransport`)."""

    def __init__(
        self,
        settings: ConsoleSettings,
        mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.base_urls: dict[str, str] = {
            "order_intake": settings.order_intake_url.rstrip("/"),
            "coi_tracking": settings.coi_tracking_url.rstrip("/"),
            "scheduling": settings.scheduling_url.rstrip("/"),
        }
        self.http = httpx.AsyncClient(
            timeout=settings.service_timeout_seconds,
            mounts=dict(mounts) if mounts else None,
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _send(
        self,
        method: str,
        service: ServiceName,
        path: str,
        *,
        token: str,
        correlation_id: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        url = self.base_urls[service] + path
        headers = {"Authorization": f"Bearer {token}", CORRELATION_HEADER: correlation_id}
        try:
            response = await self.http.request(
                method, url, params=dict(params or {}), headers=headers, json=body
            )
        except httpx.HTTPError as error:
            structlog.get_logger().warning(
                "console.service_unreachable", service=service, error=type(error).__name__
            )
            raise ServiceError(
                service,
                503,
                "Service unavailable",
                f"{SERVICE_TITLES[service]} did not answer ({type(error).__name__})",
                correlation_id,
            ) from None
        if response.is_success:
            return response
        raise service_error(service, response, correlation_id)

    async def post(
        self, service: ServiceName, path: str, body: Any, *, token: str, correlation_id: str
    ) -> Any:
        """The JSON a service answers a POST of `body` with; a `ServiceError` for anything but a 2xx. The
        body (a signing PIN, say) is sent, never logged."""
        response = await self._send(
            "POST", service, path, token=token, correlation_id=correlation_id, body=body
        )
        return response.json()

    async def get_pages(
        self,
        service: ServiceName,
        path: str,
        *,
        token: str,
        correlation_id: str,
        params: Mapping[str, str] | None = None,
        max_pages: int = 10,
    ) -> tuple[list[Any], bool]:
        """A paged list (`Link: <...>; rel="next"`) followed page by page, at most `max_pages`: the items,
        and whether more were left unread. Only the next link's `cursor` is taken, asked of the same
        service's base URL (a link naming another host is never followed)."""
        query = dict(params or {})
        items: list[Any] = []
        for _ in range(max_pages):
            response = await self._send(
                "GET", service, path, token=token, correlation_id=correlation_id, params=query
            )
            items.extend(response.json())
            cursor = next_cursor(response)
            if cursor is None:
                return items, False
            query = {**query, "cursor": cursor}
        return items, True

    async def get(
        self,
        service: ServiceName,
        path: str,
        *,
        token: str,
        correlation_id: str,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON a service answers a GET with; a `ServiceError` for anything but a 2xx."""
        response = await self._send(
            "GET", service, path, token=token, correlation_id=correlation_id, params=params
        )
        return response.json()


def next_cursor(response: httpx.Response) -> str | None:
    """The `cursor` of a list's next page, from its `Link` header; None on the last page."""
    link = response.links.get("next")
    if not link or not link.get("url"):
        return None
    values = parse_qs(urlsplit(link["url"]).query).get("cursor")
    return values[-1] if values else None


def service_error(service: str, response: httpx.Response, correlation_id: str) -> ServiceError:
    """The problem document of a refusal in words (a body that is no problem document: its status alone)."""
    try:
        document = response.json()
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    errors = [
        FieldProblem(str(e.get("location", "")), str(e.get("pointer", "")), str(e.get("detail", "")))
        for e in document.get("errors", [])
        if isinstance(e, dict)
    ]
    return ServiceError(
        service=service,
        status=response.status_code,
        title=str(document.get("title") or response.reason_phrase or "Error"),
        detail=str(document.get("detail") or ""),
        correlation_id=response.headers.get(CORRELATION_HEADER, correlation_id),
        errors=errors,
    )
