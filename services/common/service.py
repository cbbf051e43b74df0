"""One wiring point for a service: settings, logging, database, broker, outbox relay, FastAPI app.

A plain FastStream `KafkaBroker` is started and stopped in the FastAPI lifespan (the FastStream FastAPI
plugin is deprecated). Shutdown stops consuming first, then drains the outbox, then closes the producer.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import structlog
from cgt_contracts.envelope import EventEnvelope
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.common.asyncapi import declare_publishers, service_document
from services.common.auth import BEARER, Principal, Role, authenticate, require
from services.common.consumer import ProcessedEvent
from services.common.db import (
    WalCheckpointer,
    create_tables,
    database_reachable,
    make_engine,
    tables_of,
)
from services.common.edge import EdgeRoute, check_admitted
from services.common.idempotency import IdempotentResponse
from services.common.kafka_access import KafkaAccess
from services.common.logging import CorrelationMiddleware, configure_logging
from services.common.outbox import OUTBOX_TABLE, OutboxMessage, OutboxRelay
from services.common.problems import (
    ProblemError,
    document_problems,
    install_problem_handlers,
    problem_response,
)
from services.common.ratelimit import RateLimits
from services.common.settings import ServiceSettings
from services.common.topics import ensure_topics
from services.common.unit_of_work import session_factory, wake_after_commit

COMMON_TABLES: tuple[Table, ...] = tables_of(OutboxMessage, ProcessedEvent, IdempotentResponse)


S = TypeVar("S", bound=ServiceSettings)


@dataclass(kw_only=True, eq=False)
class Runtime(Generic[S]):
    """Everything one service's routes and handlers share, built from its settings (no I/O: the
    lifespan connects). A service subclasses it with its own parts; routes get it from a dependency
    (`RuntimeDep`), never from `app.state`. After each commit that wrote outbox rows, the session factory
    wakes the relay (`unit_of_work.wake_after_commit`): nothing else does."""

    settings: S
    engine: Engine = field(init=False)
    kafka: KafkaAccess = field(init=False)
    """The service's own principal on the broker."""
    broker: KafkaBroker = field(init=False)
    relay: OutboxRelay = field(init=False)
    checkpointer: WalCheckpointer | None = field(init=False)
    drains: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Awaited at shutdown after consuming has stopped and before the outbox is drained: work that
    handlers left running (a batch still being applied)."""

    def __post_init__(self) -> None:
        settings = self.settings
        name = settings.service_name
        configure_logging(name, settings.log_level)
        if settings.cgt_dev_mode:
            structlog.get_logger().warning("service.development_mode", development_secrets="accepted")
        self.engine = make_engine(settings.database_url)
        self.checkpointer = WalCheckpointer.attach(self.engine)
        self.kafka = settings.kafka_access()
        self.broker = KafkaBroker(
            self.kafka.servers,
            security=self.kafka.broker_security(),
            client_id=name,
            acks="all",
            enable_idempotence=True,
            allow_auto_create_topics=False,
            logger=structlog.get_logger("faststream"),
        )
        self.relay = OutboxRelay(
            self.engine,
            self.kafka,
            client_id=name,
            poll_seconds=settings.outbox_poll_seconds,
        )
        wake_after_commit(self.engine, OUTBOX_TABLE, self.relay.notify)

    async def on_startup(self) -> None:
        """The service's own start-up (seeding, background workers), once broker and relay run."""

    async def on_shutdown(self) -> None:
        """The service's own shutdown, before consuming stops."""


R = TypeVar("R", bound=Runtime[Any])


def build_service(
    runtime: R,
    *,
    tables: Sequence[Table],
    routers: Sequence[APIRouter],
    wire: Callable[[R], None],
    publishes: Mapping[str, Sequence[type[EventEnvelope]]],
    description: str = "",
) -> FastAPI:
    """The service's FastAPI app around its runtime: `wire` subscribes its handlers, `publishes` names
    the event types its outbox writes to each topic (for its AsyncAPI document); the lifespan creates the
    tables, starts the broker and the relay, then the runtime's own start-up."""
    name = runtime.settings.service_name
    settings, engine, broker, relay = runtime.settings, runtime.engine, runtime.broker, runtime.relay
    checkpointer = runtime.checkpointer
    wire(runtime)
    declare_publishers(broker, publishes)
    log = structlog.get_logger()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        create_tables(engine, [*COMMON_TABLES, *tables])
        if checkpointer is not None:
            checkpointer.start()
        await ensure_topics(runtime.kafka, replication_factor=settings.kafka_replication_factor)
        await broker.start()
        await relay.start()
        await runtime.on_startup()
        # Start-up objects (modules, models, schemas) never die: keep them out of the collector's sweeps,
        # and sweep the young generation less often, so that collections do not pause requests.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        log.info("service.started", database=engine.dialect.name, kafka=settings.kafka_bootstrap_servers)
        try:
            yield
        finally:
            await runtime.on_shutdown()
            for subscriber in broker.subscribers:
                await subscriber.stop()
            for drain in runtime.drains:
                await drain()
            await relay.stop()
            await broker.stop()
            if checkpointer is not None:
                checkpointer.stop()
            engine.dispose()
            log.info("service.stopped")

    return _web_app(name, description, lifespan, runtime, [ops_router(name, engine, broker), *routers])


def _web_app(
    name: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    runtime: Runtime[Any],
    routers: Sequence[APIRouter],
) -> FastAPI:
    """The FastAPI app: every route through the edge, every error a problem document, docs offline."""
    # No OpenTelemetry here (logs carry the correlation ids); off, FastAPI skips its per-request checks.
    app = FastAPI(
        title=f"CGT Logistics — {name}",
        version=importlib.metadata.version("cgt-logistics"),
        description=description,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = EdgeRoute
    add_offline_docs(app)
    add_asyncapi_document(app, runtime.broker)
    app.state.runtime = runtime
    app.state.principals = runtime.settings.principals()
    app.state.rate_limits = RateLimits(
        runtime.settings.rate_limit_per_minute, runtime.settings.rate_limit_failed_auth_per_minute
    )
    app.add_middleware(CorrelationMiddleware)
    install_problem_handlers(app)

    for router in routers:
        app.include_router(router)
    check_admitted(app)
    _document_problems(app)
    return app


def ops_router(name: str, engine: Engine, broker: KafkaBroker) -> APIRouter:
    """`/health` and `/ready`, for load balancers and orchestrators (no token needed)."""
    router = APIRouter(route_class=EdgeRoute)

    @router.get(
        "/health",
        tags=["ops"],
        summary="Check that the service is alive",
        responses={200: {"content": {"application/json": {"example": {"status": "ok", "service": name}}}}},
    )
    def health() -> dict[str, str]:
        """Liveness: the process answers. No token needed; for load balancers and orchestrators."""
        return {"status": "ok", "service": name}

    @router.get(
        "/ready",
        tags=["ops"],
        summary="Check that the service can take requests",
        responses={
            200: {
                "description": "Ready. An authenticated caller (any role) also gets `checks`; an anonymous "
                "one only the status",
                "content": {
                    "application/json": {
                        "example": {"status": "ready", "checks": {"database": True, "broker": True}}
                    }
                },
            },
            503: {
                "description": 'Not ready: `{"status": "not ready"}` (an authenticated caller: a '
                "problem naming the check that fails)"
            },
        },
    )
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the database answers and the broker answers. No token needed; the detail (which check
        fails) only for an authenticated caller, an anonymous one learns nothing of the internals."""
        checks = {
            "database": await asyncio.to_thread(database_reachable, engine),
            "broker": await broker.ping(timeout=2.0),
        }
        failing = [name for name, ok in checks.items() if not ok]
        # An orchestrator polls without a token: that is no failed authentication, and spends no budget.
        # A token offered is checked (and a wrong one counted, as anywhere: /ready is no way to guess).
        credentials, caller = await BEARER(request), None
        if credentials is not None:
            with suppress(HTTPException):
                caller = authenticate(request, credentials)
        if caller is None:
            return JSONResponse({"status": "not ready" if failing else "ready"}, 503 if failing else 200)
        if failing:
            problem = ProblemError(
                503, f"not ready: {', '.join(failing)} not answering", extensions={"checks": checks}
            )
            return problem_response(request, problem)
        return JSONResponse({"status": "ready", "ready": True, "checks": checks})

    @router.get(
        "/whoami",
        tags=["ops"],
        summary="Say who the bearer token is",
        response_model=Caller,
        responses={200: {"content": {"application/json": {"example": CALLER_EXAMPLE}}}},
    )
    async def whoami(caller: Annotated[Principal, Depends(require(*Role))]) -> Caller:
        """The caller the bearer token belongs to: its subject, role and display name, and the site (a
        treatment center) or courier company (a courier) it acts for. Any role; 401 without a valid token.
        The coordinator console asks it at sign-in to learn who is signing in."""
        return Caller.of(caller)

    return router


CALLER_EXAMPLE: JsonDict = {
    "subject": "tc-boston-desk",
    "role": "treatment_center",
    "display_name": "Boston QTC cell lab",
    "treatment_center_id": "TC-BOSTON",
    "courier_company": None,
}


class Caller(BaseModel):
    """Who a bearer token is (`GET /whoami`): nothing but the caller's identity and scope."""

    model_config = ConfigDict(json_schema_extra={"examples": [CALLER_EXAMPLE]})

    subject: str
    role: str = Field(description="coordinator, courier, treatment_center, qa or service")
    display_name: str
    treatment_center_id: str | None = Field(description="The one site a treatment center acts for")
    courier_company: str | None = Field(description="The one company a courier acts for")

    @classmethod
    def of(cls, principal: Principal) -> Caller:
        return cls(
            subject=principal.subject,
            role=principal.role.value,
            display_name=principal.display_name,
            treatment_center_id=principal.treatment_center_id,
            courier_company=principal.courier_company,
        )


def _document_problems(app: FastAPI) -> None:
    """Every operation's OpenAPI lists the problems the edge and the route can answer with."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS = Path(str(resources.files("fastapi_offline") / "static"))
"""Swagger UI (swagger-ui-bundle.js, swagger-ui.css), ReDoc (redoc.standalone.js) and a favicon, as the PyPI
package fastapi-offline (pinned in uv.lock) ships them: /docs and /redoc work without a network."""


def add_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc) on assets served by the service itself, never from a CDN."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    oauth2_redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


ASYNCAPI_URL = "/asyncapi.json"


def add_asyncapi_document(app: FastAPI, broker: KafkaBroker) -> None:
    """`GET /asyncapi.json`: the AsyncAPI 3.0.0 document FastStream generates for the service's broker
    (the topics it reads and writes, with the contract models as payloads). Like /openapi.json it needs
    no token: it describes the service, it holds no data. No HTML viewer: FastStream's loads from a CDN."""
    document: dict[str, Any] = {}

    @app.get(ASYNCAPI_URL, include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        if not document:
            document.update(
                service_document(broker, title=app.title, version=app.version, description=app.description)
            )
        return JSONResponse(document)


def runtime_of(request: Request) -> Runtime[Any]:
    """The app's runtime: the one place that reads `app.state` (a service's `RuntimeDep` narrows it)."""
    runtime: Runtime[Any] = request.app.state.runtime
    return runtime


def runtime_dependency(runtime_class: type[R]) -> Callable[[Request], R]:
    """A FastAPI dependency giving routes their service's typed runtime."""

    def runtime(request: Request) -> R:
        found = runtime_of(request)
        if not isinstance(found, runtime_class):
            raise TypeError(f"this app's runtime is a {type(found).__name__}, not a {runtime_class.__name__}")
        return found

    runtime.__name__ = f"{runtime_class.__name__.lower()}_dependency"
    return runtime


def db_session(request: Request) -> Iterator[Session]:
    """A request's session: rolled back unless the route commits."""
    with session_factory(runtime_of(request).engine)() as session:
        yield session
