"""The coordinator console: sign-in, sessions, CSRF, and the pages (worklist, case) over the services' APIs.

A factory, nothing built at import. Run: uvicorn --factory services.console.app:create_app
It owns no credentials and no domain data: every page is what the services answer the signed-in user's own
token, and every permission is the services' to check (docs/console.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from services.common.logging import CorrelationMiddleware, configure_logging, new_correlation_id
from services.common.service import Caller
from services.console import timeline
from services.console.client import ServiceClient, ServiceError
from services.console.sessions import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_SECONDS,
    ConsoleSession,
    SessionStore,
    csrf_ok,
)
from services.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings", "create_app"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
HTMX_PATH = ROOT / ".cache" / "console" / "htmx.min.js"
"""Where deploy/fetch_console_assets.py puts htmx (a unit test holds the two together)."""
CONSOLE_ROLES = frozenset({"coordinator", "qa", "treatment_center"})
"""Who the console is for: the pharmacy's coordinators and QA reviewers, and the treatment centers."""
READ_ONLY_ROLES = frozenset({"treatment_center"})
"""Who sees the console read-only: every template shows its action forms only `{% if not read_only %}`."""
MAX_FORM_BYTES = 16 * 1024
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
"""On every answer of the console: its own scripts and styles only (htmx adds one inline style), never in a
frame (no clickjacking of its buttons), forms posted only to itself, no address leaked in a Referer."""
WORKLIST_REFRESH_SECONDS = 30


class SignInRequired(Exception):
    """No live session: the page sends the browser to the sign-in page."""


class CsrfRefused(Exception):
    """A form posted without its CSRF token (or with another): refused, nothing done."""


@dataclass
class Console:
    settings: ConsoleSettings
    client: ServiceClient
    sessions: SessionStore
    templates: Jinja2Templates
    outcomes: dict[str, Any] = field(default_factory=dict)
    """Each session's last action on a case (a `case_page.Outcome`), shown once on the page it went back to."""


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def correlation_id_of(request: Request) -> str:
    return str(getattr(request.state, "correlation_id", "") or new_correlation_id())


def signed_in(request: Request) -> ConsoleSession:
    session = console_of(request).sessions.find(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired
    return session


async def posted_form(request: Request, session: ConsoleSession | None) -> dict[str, str]:
    """The form a POST carries (`application/x-www-form-urlencoded`), once its CSRF token is checked: the
    session's, or for the sign-in form (no session yet) the one in the signed sign-in cookie. Every POST
    route reads its form here, so none acts without the token."""
    body = await request.body()
    form: dict[str, str] = {}
    if len(body) <= MAX_FORM_BYTES:
        for name, values in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items():
            form[name] = values[-1]
    offered = form.get(CSRF_FIELD)
    if session is not None:
        ok = csrf_ok(session, offered)
    else:
        ok = console_of(request).sessions.sign_in_token_ok(request.cookies.get(SIGN_IN_COOKIE), offered)
    if not ok:
        raise CsrfRefused
    return form


def render(
    request: Request,
    template: str,
    session: ConsoleSession | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    console = console_of(request)
    return console.templates.TemplateResponse(
        request,
        template,
        {
            "caller": session.caller if session else None,
            "csrf_token": session.csrf_token if session else None,
            "read_only": session is not None and session.caller.role in READ_ONLY_ROLES,
            "correlation_id": correlation_id_of(request),
            "kind_labels": timeline.KIND_LABELS,
            **context,
        },
        status_code=status_code,
    )


def error_page(request: Request, session: ConsoleSession | None, error: ServiceError) -> HTMLResponse:
    """A service's refusal in words: who said it, what, which fields, and the correlation id to quote."""
    status_code = error.status if 400 <= error.status < 500 else 502
    return render(request, "error.html", session, status_code, error=error)


def _cookie_options(settings: ConsoleSettings) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": settings.console_cookie_secure, "path": "/"}


def create_app(
    settings: ConsoleSettings | None = None,
    *,
    mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> FastAPI:
    """The console's app; `mounts` (by base URL) put the services in process for the tests."""
    settings = settings or ConsoleSettings()  # CONSOLE_SESSION_KEY from the environment
    configure_logging(settings.service_name, settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its lines name every URL the console calls
    if settings.cgt_dev_mode:
        structlog.get_logger().warning("service.development_mode", development_secrets="accepted")
    client = ServiceClient(settings, mounts)
    console = Console(
        settings=settings,
        client=client,
        sessions=SessionStore(settings.console_session_key.get_secret_value(), settings.session_seconds),
        templates=Jinja2Templates(directory=HERE / "templates"),
    )
    log = structlog.get_logger()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("service.started", services=client.base_urls)
        try:
            yield
        finally:
            await client.close()
            log.info("service.stopped")

    app = FastAPI(
        title="CGT Logistics — coordinator console",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.console = console

    @app.middleware("http")
    async def page_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.add_middleware(CorrelationMiddleware)

    _add_basics(app, console, log)
    _add_sign_in_routes(app, console, log)
    _add_worklist_routes(app, console)

    # ------------------------------------------------------------------------ case (services/console/case_page.py)

    from services.console.case_page import router as case_router  # it uses this module's page helpers

    app.router.routes.extend(case_router.routes)  # flat, as if declared here (include_router nests them)

    from services.console import qa_sites  # its routes use this module's helpers

    app.router.routes.extend(qa_sites.router.routes)  # as the app's own: the CSRF test lists every POST
    return app


def _add_basics(app: FastAPI, console: Console, log: Any) -> None:
    """The sign-in and CSRF handlers, `/health`, htmx and the static files, on the app itself."""
    settings = console.settings

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, _: SignInRequired) -> Response:
        if request.headers.get("HX-Request"):
            return Response(status_code=401, headers={"HX-Redirect": "/sign-in"})
        return RedirectResponse("/sign-in", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, _: CsrfRefused) -> Response:
        session = console.sessions.find(request.cookies.get(SESSION_COOKIE))
        log.warning("console.csrf_refused", path=request.url.path)
        return render(request, "csrf.html", session, 403)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/static/htmx.min.js", include_in_schema=False)
    async def htmx() -> Response:
        if not HTMX_PATH.is_file():
            return Response("htmx is not installed: run make install", status_code=404)
        return FileResponse(
            HTMX_PATH, media_type="text/javascript", headers={"Cache-Control": "max-age=3600"}
        )

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def _add_sign_in_routes(app: FastAPI, console: Console, log: Any) -> None:
    """`GET`/`POST /sign-in` and `POST /sign-out`, on the app itself."""
    settings, client = console.settings, console.client

    def sign_in_page(request: Request, status_code: int = 200, problem: str | None = None) -> HTMLResponse:
        token, cookie = console.sessions.sign_in_token()
        response = render(request, "sign_in.html", None, status_code, sign_in_token=token, problem=problem)
        response.set_cookie(SIGN_IN_COOKIE, cookie, max_age=SIGN_IN_SECONDS, **_cookie_options(settings))
        return response

    @app.get("/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request) -> Response:
        return sign_in_page(request)

    @app.post("/sign-in", response_class=HTMLResponse)
    async def sign_in(request: Request) -> Response:
        form = await posted_form(request, None)
        token = form.get("token", "").strip()
        if not token:
            return sign_in_page(request, 400, "Enter your access token.")
        try:
            found = await client.get(
                "scheduling", "/whoami", token=token, correlation_id=correlation_id_of(request)
            )
        except ServiceError as error:
            if error.status == 401:
                log.info("console.sign_in_refused", reason="token not accepted")
                return sign_in_page(request, 401, "That access token was not accepted.")
            return sign_in_page(request, 502, f"{error} (correlation id {error.correlation_id})")
        caller = Caller.model_validate(found)
        if caller.role not in CONSOLE_ROLES:
            log.info("console.sign_in_refused", reason="role", role=caller.role)
            return sign_in_page(
                request, 403, "The console is for coordinators, QA reviewers and treatment centers."
            )
        old = console.sessions.find(request.cookies.get(SESSION_COOKIE))
        if old is not None:
            console.sessions.close(old)
        _, cookie = console.sessions.open(token, caller)
        log.info("console.signed_in", subject=caller.subject, role=caller.role)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, cookie, max_age=settings.session_seconds, **_cookie_options(settings)
        )
        response.delete_cookie(SIGN_IN_COOKIE, **_cookie_options(settings))
        return response

    @app.post("/sign-out", response_class=HTMLResponse)
    async def sign_out(request: Request) -> Response:
        session = signed_in(request)
        await posted_form(request, session)
        console.sessions.close(session)
        log.info("console.signed_out", subject=session.caller.subject)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, **_cookie_options(settings))
        return response


def _add_worklist_routes(app: FastAPI, console: Console) -> None:
    """`GET /`, `/worklist` and `/worklist/rows`, on the app itself."""
    client = console.client

    async def site_zones(session: ConsoleSession, request: Request, sites: set[str]) -> dict[str, Any]:
        """Each site's time zone (scheduling `GET /sites/{id}`); UTC for a site it has no calendar of."""

        async def zone(site: str) -> Any:
            try:
                found = await client.get(
                    "scheduling",
                    f"/sites/{site}",
                    token=session.token,
                    correlation_id=correlation_id_of(request),
                )
            except ServiceError:
                return timeline.zone_of(None)
            return timeline.zone_of(found.get("timezone"))

        names = sorted(sites)
        return dict(zip(names, await asyncio.gather(*(zone(s) for s in names)), strict=True))

    async def worklist_rows(request: Request, session: ConsoleSession) -> dict[str, Any]:
        kind = request.query_params.get("kind", "")
        site = request.query_params.get("site", "") if session.caller.role != "treatment_center" else ""
        params = {"limit": "500"}
        if kind:
            params["kind"] = kind
        if site:
            params["treatment_center_id"] = site
        items = await client.get(
            "scheduling",
            "/worklist",
            token=session.token,
            correlation_id=correlation_id_of(request),
            params=params,
        )
        zones = await site_zones(session, request, {item["treatment_center_id"] for item in items})
        rows = [
            {**item, "since_local": timeline.local_time(item["since"], zones[item["treatment_center_id"]])}
            for item in items
        ]
        query = urlencode({k: v for k, v in (("kind", kind), ("site", site)) if v})
        return {"rows": rows, "kind": kind, "site": site, "query": query, "kinds": timeline.WORK_KINDS}

    @app.get("/", response_class=HTMLResponse)
    @app.get("/worklist", response_class=HTMLResponse)
    async def worklist(request: Request) -> Response:
        session = signed_in(request)
        try:
            context = await worklist_rows(request, session)
        except ServiceError as error:
            return error_page(request, session, error)
        return render(request, "worklist.html", session, refresh_seconds=WORKLIST_REFRESH_SECONDS, **context)

    @app.get("/worklist/rows", response_class=HTMLResponse)
    async def worklist_partial(request: Request) -> Response:
        """The worklist's rows alone, for the page's own refresh (htmx)."""
        session = signed_in(request)
        try:
            context = await worklist_rows(request, session)
        except ServiceError as error:
            return render(request, "_error.html", session, 200, error=error)
        return render(request, "_worklist_rows.html", session, **context)
