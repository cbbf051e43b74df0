"""The HTTP edge, in process: every refusal of a bad body is an RFC 9457 problem, strict, and echoes nothing.

A small app built the way `build_service` builds every service (EdgeRoute routers, the problem handlers,
CorrelationMiddleware), so these checks hold for every route of every service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from services.common import problems
from services.common.edge import (
    DEFAULT_BODY_LIMIT,
    MAX_JSON_DEPTH,
    EdgeRoute,
    RequestModel,
    check_admitted,
    json_body,
)
from services.common.logging import CorrelationMiddleware
from services.common.problems import ProblemError, document_problems, install_problem_handlers

PATIENT_NAME = "Jane Q. Doe"
DOCUMENT_LIMIT = 16 * 1024


class Identity(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    date_of_birth: date


class Order(RequestModel):
    patient: Identity
    attested: bool = False
    ordered_on: date | None = None
    bags: int = 1
    celsius: float | None = None


class Loose(BaseModel):
    """A body model outside RequestModel: it would take NaN and unknown fields."""

    anything: float


def build_app() -> FastAPI:
    router = APIRouter(route_class=EdgeRoute)

    @router.post("/orders")
    def place(body: Order) -> dict[str, Any]:
        return body.model_dump(mode="json")

    @router.post(
        "/documents", openapi_extra=json_body(limit=DOCUMENT_LIMIT, media_types=("application/ld+json",))
    )
    async def capture(request: Request) -> dict[str, Any]:
        document = await request.json()
        return {"keys": sorted(document)}

    @router.post("/conflict")
    def conflict() -> None:
        raise problems.conflict("the order was cancelled", ["cancelled on 2026-11-30"])

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    app = FastAPI()
    app.router.route_class = EdgeRoute
    app.add_middleware(CorrelationMiddleware)
    install_problem_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    yield TestClient(build_app(), raise_server_exceptions=False)


def post(client: TestClient, path: str, body: bytes, content_type: str | None = "application/json") -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(path, content=body, headers=headers)


def a_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert body["instance"] == response.headers["X-Correlation-ID"]
    assert PATIENT_NAME not in response.text
    return body


def order(**changes: Any) -> bytes:
    body: dict[str, Any] = {"patient": {"name": PATIENT_NAME, "date_of_birth": "2019-04-02"}, **changes}
    return json.dumps(body).encode()


def pointers(body: dict[str, Any]) -> list[str]:
    return [error["pointer"] for error in body["errors"]]


def test_a_valid_body_passes_the_edge_once_parsed(client: TestClient) -> None:
    response = post(client, "/orders", order(attested=True, ordered_on="2026-11-20", celsius=-180))
    assert response.status_code == 200
    assert response.json()["attested"] is True and response.json()["celsius"] == -180.0


def test_a_validation_problem_names_every_field_and_echoes_no_value(client: TestClient) -> None:
    body = a_problem(
        post(client, "/orders", order(patient={"name": PATIENT_NAME, "date_of_birth": "x"}, x=1)), 422
    )
    assert body["type"] == problems.VALIDATION
    assert sorted(pointers(body)) == ["/patient/date_of_birth", "/x"]
    assert all(error["location"] == "body" and error["detail"] for error in body["errors"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attested", "yes"),
        ("attested", 1),
        ("ordered_on", 0),
        ("bags", "2"),
        ("bags", 2.0),
        ("celsius", "-180"),
    ],
)
def test_nothing_is_coerced(client: TestClient, field: str, value: Any) -> None:
    body = a_problem(post(client, "/orders", order(**{field: value})), 422)
    assert pointers(body) == [f"/{field}"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_number_must_be_finite_in_a_model_and_in_a_document(client: TestClient, literal: bytes) -> None:
    in_model = order().replace(b'"patient"', b'"celsius": ' + literal + b', "patient"')
    assert pointers(a_problem(post(client, "/orders", in_model), 422)) == ["/celsius"]
    document = b'{"readings": [{"v": -180}, {"v": ' + literal + b"}]}"
    body = a_problem(post(client, "/documents", document, "application/ld+json"), 422)
    assert pointers(body) == ["/readings/1/v"]


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(client: TestClient) -> None:
    huge = order(patient={"name": "x" * (DEFAULT_BODY_LIMIT + 1), "date_of_birth": "2019-04-02"})
    body = a_problem(post(client, "/orders", huge), 413)
    assert body["type"] == problems.TOO_LARGE and str(DEFAULT_BODY_LIMIT) in body["detail"]
    # Without a Content-Length (chunked), the limit holds while reading.
    chunks = iter([b'{"patient": {"name": "', b"x" * DEFAULT_BODY_LIMIT, b'"}}'])
    streamed = client.post("/orders", content=chunks, headers={"Content-Type": "application/json"})
    a_problem(streamed, 413)
    assert a_problem(post(client, "/documents", b"{}" + b" " * DOCUMENT_LIMIT, "application/ld+json"), 413)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/xml", "application/json; charset=latin-1"]
)
def test_a_body_of_another_media_type_is_refused(client: TestClient, content_type: str | None) -> None:
    body = a_problem(post(client, "/orders", order(), content_type), 415)
    assert body["type"] == problems.UNSUPPORTED_MEDIA and "application/json" in body["detail"]


def test_each_route_admits_the_media_types_it_documents(client: TestClient) -> None:
    assert post(client, "/documents", b'{"a": 1}', "application/ld+json").status_code == 200
    assert (
        "application/ld+json"
        in a_problem(post(client, "/documents", b"{}", "application/json"), 415)["detail"]
    )


@pytest.mark.parametrize("path", ["/orders", "/documents"])
def test_bytes_that_are_not_utf8_json_are_a_400(client: TestClient, path: str) -> None:
    media = "application/json" if path == "/orders" else "application/ld+json"
    latin1 = '{"patient": {"name": "Zo\u00eb", "date_of_birth": "2019-04-02"}}'.encode("latin-1")
    for bad in (latin1, b"{not json", b'{"a": 1,}'):
        body = a_problem(post(client, path, bad, media), 400)
        assert body["type"] == problems.MALFORMED


@pytest.mark.parametrize("path", ["/orders", "/documents"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 2, 950, 5000])
def test_json_nested_past_the_limit_is_a_400_naming_the_limit(
    client: TestClient, path: str, depth: int
) -> None:
    media = "application/json" if path == "/orders" else "application/ld+json"
    nested = b'{"patient": ' + b"[" * depth + b"]" * depth + b"}"
    body = a_problem(post(client, path, nested, media), 400)
    assert str(MAX_JSON_DEPTH) in body["detail"]


def test_a_document_within_the_depth_limit_is_admitted(client: TestClient) -> None:
    nested = b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert post(client, "/documents", nested, "application/ld+json").status_code == 200


def test_text_with_a_control_character_is_refused_in_a_body_a_path_or_a_query(client: TestClient) -> None:
    named = order(patient={"name": "Jane\u0000Doe", "date_of_birth": "2019-04-02"})
    assert pointers(a_problem(post(client, "/orders", named), 422)) == ["/patient/name"]
    assert (
        post(
            client, "/orders", order(patient={"name": "Jane\tDoe\n", "date_of_birth": "2019-04-02"})
        ).status_code
        == 200
    )
    document = b'{"where": ["hub", "Milan\\u0000"], "ok": "tab\\there"}'
    assert pointers(a_problem(post(client, "/documents", document, "application/ld+json"), 422)) == [
        "/where/1"
    ]
    in_query = a_problem(client.post("/conflict?note=a%00b"), 422)
    assert [(e["location"], e["pointer"]) for e in in_query["errors"]] == [("query", "/note")]


def test_conflicts_routing_errors_and_bugs_are_problems_too(client: TestClient) -> None:
    conflict = a_problem(client.post("/conflict"), 409)
    assert conflict["type"] == problems.CONFLICT and conflict["reasons"] == ["cancelled on 2026-11-30"]
    a_problem(client.get("/nowhere"), 404)
    a_problem(client.delete("/orders"), 405)
    bug = a_problem(client.get("/boom"), 500)
    assert bug["type"] == problems.INTERNAL and "a bug" not in json.dumps(bug)


def test_a_callers_correlation_id_is_the_instance_only_if_it_is_an_identifier(client: TestClient) -> None:
    mine = client.get("/nowhere", headers={"X-Correlation-ID": "tc-boston:req-42"})
    assert mine.json()["instance"] == "tc-boston:req-42"
    forged = client.get("/nowhere", headers={"X-Correlation-ID": "Jane Doe <script>"})
    assert forged.json()["instance"] != "Jane Doe <script>" and len(forged.json()["instance"]) == 36


def test_a_route_outside_the_edge_rules_cannot_be_built() -> None:
    def loose(body: Loose) -> None: ...

    with pytest.raises(TypeError, match="RequestModel"):
        APIRouter(route_class=EdgeRoute).post("/loose")(loose)
    plain_app = FastAPI()
    plain_app.post("/plain")(lambda: None)
    with pytest.raises(TypeError, match="not an EdgeRoute"):
        check_admitted(plain_app)
    plain_router = APIRouter()
    plain_router.post("/plain")(lambda: None)
    including_app = FastAPI()
    including_app.include_router(plain_router)
    with pytest.raises(TypeError, match="/plain is not an EdgeRoute"):
        check_admitted(including_app)
    check_admitted(build_app())


def test_the_openapi_documents_every_problem_as_problem_json() -> None:
    app = build_app()
    schema = document_problems(app.openapi())
    place = schema["paths"]["/orders"]["post"]["responses"]
    assert {"400", "413", "415", "422"} <= set(place)
    for code in ("400", "413", "415", "422"):
        assert set(place[code]["content"]) == {"application/problem+json"}
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_a_problem_error_keeps_its_own_status_and_members() -> None:
    error = ProblemError(503, "not ready: broker not answering", extensions={"checks": {"broker": False}})
    assert error.title == "Service Unavailable" and error.extensions == {"checks": {"broker": False}}
