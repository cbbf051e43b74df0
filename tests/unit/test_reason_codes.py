"""Reasons on the HTTP requests are codes from closed lists (I6): an unknown code, or a missing one, is a 422
problem naming `reason_code`; the note beside it is bounded, and a refused note is never echoed back.

The apps are built in-process and never started: no broker, no server, a throwaway SQLite file (the body
is refused before anything is read or written)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.edge import NOTE_MAX_LENGTH
from tests.support.apps import every_app

SENTINEL = "SENTINEL-typed-by-a-person"


def token(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer dev-{role}-token"}


# service, path, caller, a valid body (the reason's code included)
ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("order_intake", "/orders/{id}/cancel", "coordinator", {"reason_code": "patient_withdrew"}),
    (
        "order_intake",
        "/orders/{id}/manufacturing-failure",
        "coordinator",
        {"reason_code": "sterility_failure"},
    ),
    (
        "order_intake",
        "/orders/{id}/manufacturing-delay",
        "coordinator",
        {"expected_release_on": "2030-01-07", "reason_code": "release_testing"},
    ),
    (
        "coi_tracking",
        "/shipments/{id}/dispositions",
        "qa",
        {"decision": "release", "reason_code": "logger_fault", "meaning": "approval", "signing_pin": "2468"},
    ),
    ("scheduling", "/appointments/{id}/cancel", "coordinator", {"reason_code": "patient_condition"}),
    (
        "scheduling",
        "/appointments/{id}/reschedule",
        "coordinator",
        {"option_id": str(uuid.uuid4()), "reason_code": "site_request"},
    ),
]
SCHEDULING = [route for route in ROUTES if route[0] == "scheduling"]


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    with every_app(tmp_path_factory.mktemp("reason-codes")) as built:
        yield {service: TestClient(app) for service, app in built.items()}


def post(
    clients: dict[str, TestClient], route: tuple[str, str, str, dict[str, Any]], body: dict[str, Any]
) -> Any:
    service, path, caller, _ = route
    return clients[service].post(path.format(id=uuid.uuid4()), json=body, headers=token(caller))


def pointers(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [error["pointer"] for error in response.json()["errors"]]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r[1])
def test_an_unknown_reason_code_is_a_422_naming_the_field_and_not_echoed(
    clients: dict[str, TestClient], route: tuple[str, str, str, dict[str, Any]]
) -> None:
    response = post(clients, route, {**route[3], "reason_code": SENTINEL})
    assert pointers(response) == ["/reason_code"]
    assert SENTINEL not in response.text
    assert "other" in response.json()["errors"][0]["detail"], "the closed list is named"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r[1])
def test_a_missing_reason_code_is_a_422_naming_the_field(
    clients: dict[str, TestClient], route: tuple[str, str, str, dict[str, Any]]
) -> None:
    body = {key: value for key, value in route[3].items() if key != "reason_code"}
    assert pointers(post(clients, route, body)) == ["/reason_code"]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r[1])
def test_free_text_where_the_reason_was_is_refused(
    clients: dict[str, TestClient], route: tuple[str, str, str, dict[str, Any]]
) -> None:
    """The old field: a client that still sends its text as `reason` is told, and the text not echoed."""
    response = post(clients, route, {**route[3], "reason": SENTINEL})
    assert pointers(response) == ["/reason"]
    assert SENTINEL not in response.text


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r[1])
def test_a_note_longer_than_its_bound_is_a_422_naming_it_and_not_echoed(
    clients: dict[str, TestClient], route: tuple[str, str, str, dict[str, Any]]
) -> None:
    long_note = SENTINEL + "x" * NOTE_MAX_LENGTH
    response = post(clients, route, {**route[3], "note": long_note})
    assert pointers(response) == ["/note"]
    assert SENTINEL not in response.text
    assert pointers(post(clients, route, {**route[3], "note": ""})) == ["/note"]


@pytest.mark.parametrize("route", SCHEDULING, ids=lambda r: r[1])
@pytest.mark.parametrize("code", ["quarantine", "qa_release", "order_cancelled"])
def test_a_coordinator_cannot_give_a_reason_only_the_system_sets(
    clients: dict[str, TestClient], route: tuple[str, str, str, dict[str, Any]], code: str
) -> None:
    response = post(clients, route, {**route[3], "reason_code": code})
    assert pointers(response) == ["/reason_code"]
    assert "set by the system" in response.json()["errors"][0]["detail"]
