"""The API under abuse, in process: a token is checked before a body is read, and every response carries
the security headers. An app built the way `build_service` builds every service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI

from services.common.auth import Principal, Role, require
from services.common.db import make_engine
from services.common.edge import EdgeRoute, RequestModel, check_admitted
from services.common.logging import CorrelationMiddleware
from services.common.problems import install_problem_handlers
from services.common.ratelimit import RateLimiter, RateLimits
from services.common.service import ops_router

TOKEN = "right-token"
CHUNK = b" " * (1024 * 1024)
JSON = {"Content-Type": "application/json"}


class Note(RequestModel):
    text: str


def build_app(limits: RateLimits | None = None) -> FastAPI:
    router = APIRouter(route_class=EdgeRoute)

    @router.get("/notes")
    def notes(caller: Annotated[Principal, Depends(require(Role.COORDINATOR))]) -> dict[str, Any]:
        return {"by": caller.subject}

    @router.post("/notes")
    def note(body: Note, caller: Annotated[Principal, Depends(require(Role.COORDINATOR))]) -> dict[str, Any]:
        return {"text": body.text, "by": caller.subject}

    app = FastAPI()
    app.router.route_class = EdgeRoute
    app.state.principals = {TOKEN: Principal(subject="coord", role=Role.COORDINATOR)}
    if limits is not None:
        app.state.rate_limits = limits
    app.add_middleware(CorrelationMiddleware)
    install_problem_handlers(app)
    app.include_router(router)
    check_admitted(app)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


class CountedBody:
    """A 20 MB body sent in chunks, counting how many the server pulled."""

    def __init__(self, chunks: int = 20) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield CHUNK


async def test_a_wrong_or_missing_token_on_a_20_mb_post_is_401_without_the_body_being_read() -> None:
    async with client(build_app()) as http:
        for headers in ({"Authorization": "Bearer wrong"}, {}):
            body = CountedBody()
            response = await http.post(
                "/notes", content=body, headers={**headers, "Content-Type": "application/json"}
            )
            assert response.status_code == 401, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert body.pulled <= 1  # at most the first chunk, handed over with the request: never read on


async def test_a_right_token_still_gets_its_body_read() -> None:
    async with client(build_app()) as http:
        response = await http.post(
            "/notes", json={"text": "hi"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200 and response.json() == {"text": "hi", "by": "coord"}


async def test_data_and_error_responses_carry_nosniff_and_no_store() -> None:
    async with client(build_app()) as http:
        data = await http.post("/notes", json={"text": "hi"}, headers={"Authorization": f"Bearer {TOKEN}"})
        error = await http.post("/notes", json={"text": "hi"})
        missing = await http.get("/no-such-route")
    for response in (data, error, missing):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


RIGHT = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer wrong"}


async def test_a_caller_past_its_budget_gets_429_with_retry_after() -> None:
    async with client(build_app(RateLimits(per_minute=5, failed_auth_per_minute=2))) as http:
        answers = [(await http.get("/notes", headers=RIGHT)).status_code for _ in range(5)]
        assert answers == [200] * 5
        refused = await http.get("/notes", headers=RIGHT)
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) >= 1
        # A body route is limited the same, once per request (edge and role check share one count).
        assert (await http.post("/notes", json={"text": "x"}, headers=RIGHT)).status_code == 429


async def test_failed_authentications_are_limited_more_strictly_per_address() -> None:
    async with client(build_app(RateLimits(per_minute=100, failed_auth_per_minute=3))) as http:
        answers = [(await http.get("/notes", headers=WRONG)).status_code for _ in range(5)]
        assert answers == [401, 401, 401, 429, 429]
        refused = await http.post("/notes", content=CountedBody(), headers={**WRONG, **JSON})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        # The right token is not held back by a guesser's budget.
        assert (await http.get("/notes", headers=RIGHT)).status_code == 200


def test_the_bucket_refills_with_time() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, clock=lambda: now[0])
    assert all(limiter.take("k") is None for _ in range(60))
    wait = limiter.take("k")
    assert wait is not None and 0.9 < wait <= 1.0
    now[0] += 1.0
    assert limiter.take("k") is None and limiter.take("other") is None


class AnsweringBroker:
    """Only what /ready asks of the broker: whether it answers (the database check is real)."""

    async def ping(self, timeout: float) -> bool:
        return True


async def test_anonymous_readiness_polls_spend_no_failed_authentication_budget(tmp_path: Path) -> None:
    """An orchestrator polls /ready without a token, as often as it likes: it learns ready or not, nothing
    of the internals, and a guesser's budget on the same address is untouched by it."""
    app = build_app(RateLimits(per_minute=100, failed_auth_per_minute=2))
    engine = make_engine(f"sqlite:///{tmp_path / 'ready.db'}")
    app.include_router(ops_router("test", engine, AnsweringBroker()))  # type: ignore[arg-type]
    async with client(app) as http:
        polls = [await http.get("/ready") for _ in range(5)]
        assert [(p.status_code, p.json()) for p in polls] == [(200, {"status": "ready"})] * 5
        assert (await http.get("/ready", headers=RIGHT)).json()["checks"] == {
            "database": True,
            "broker": True,
        }
        assert [(await http.get("/notes", headers=WRONG)).status_code for _ in range(3)] == [401, 401, 429]
    engine.dispose()
