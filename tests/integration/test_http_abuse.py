"""The API under abuse, in process: a token is checked before a body is read, and every response carries
the security headers. An app built the way `build_service` builds every service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI

from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, RequestModel, check_admitted
from services.common.headers import SecurityHeadersMiddleware
from services.common.logging import CorrelationMiddleware
from services.common.problems import install_problem_handlers

TOKEN = "right-token"
CHUNK = b" " * (1024 * 1024)


class Note(RequestModel):
    text: str


def build_app() -> FastAPI:
    router = APIRouter(route_class=EdgeRoute)

    @router.post("/notes")
    def note(body: Note, caller: Annotated[Principal, Depends(require(Role.COORDINATOR))]) -> dict[str, Any]:
        return {"text": body.text, "by": caller.subject}

    app = FastAPI()
    app.router.route_class = EdgeRoute
    app.state.principals = {TOKEN: Principal(subject="coord", role=Role.COORDINATOR)}
    app.add_middleware(CorrelationMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
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
