"""`Idempotency-Key` as the IETF header draft has it (SQLite and PostgreSQL, no broker): the same key with
another body is 422 naming the key, the same key while its first request is in flight is 409, the same
key after the answer is that answer again — on the keys themselves and through order intake's own
route, in process (the first request held inside its work by a barrier, never by sleeping)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cgt_contracts.envelope import utc_now
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select, update

from services.common import idempotency
from services.common.idempotency import CLAIM_LEASE, IdempotentResponse, KeyedRequest, keyed_request
from services.common.problems import ProblemError
from services.common.unit_of_work import session_factory
from services.order_intake import commands
from services.order_intake.models import Order
from tests.support.orders import order_database, order_intake_client, start_afresh

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}
KEY = "order-2026-11-23-0001"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with order_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        yield engine


@pytest.fixture
def engine(database: Engine) -> Engine:
    return start_afresh(database)


@pytest.fixture(scope="module")
def client(database: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Order intake's app on the test's database, never started: no broker, no relay (its wake-up is a
    no-op), the routes and the edge exactly as the service has them."""
    with order_intake_client(database, tmp_path_factory.mktemp("import")) as test_client:
        yield test_client


def keyed(body: str = "order A", caller: str = "coord-ana") -> KeyedRequest:
    request = keyed_request(caller, KEY, "POST /orders", {"body": body})
    assert request is not None
    return request


def problem_of(run: Callable[[], Any]) -> ProblemError:
    with pytest.raises(ProblemError) as raised:
        run()
    return raised.value


def names_the_key(problem: ProblemError) -> bool:
    return [(e.location, e.pointer) for e in problem.errors or []] == [("header", "/Idempotency-Key")]


# ---------------------------------------------------------------- the keys themselves


def test_a_key_answered_once_answers_the_same_again_and_refuses_another_body_with_422(
    engine: Engine,
) -> None:
    claim = idempotency.claim(engine, keyed())
    assert claim.answer is None and claim.token is not None
    with session_factory(engine)() as session:
        claim.keep(session, 201, {"id": "first"})
        session.commit()
    assert idempotency.claim(engine, keyed()).answer == idempotency.StoredAnswer(201, {"id": "first"})
    other = problem_of(lambda: idempotency.claim(engine, keyed("order B")))
    assert other.status == 422 and names_the_key(other)
    assert idempotency.claim(engine, keyed("order B", caller="coord-bo")).token is not None  # its own key


def test_a_key_in_flight_is_409_even_for_the_same_body_and_422_for_another(engine: Engine) -> None:
    first = idempotency.claim(engine, keyed())
    assert first.token is not None
    in_flight = problem_of(lambda: idempotency.claim(engine, keyed()))
    assert in_flight.status == 409 and names_the_key(in_flight)
    assert in_flight.headers["Retry-After"] == str(idempotency.RETRY_AFTER_SECONDS)
    assert problem_of(lambda: idempotency.claim(engine, keyed("order B"))).status == 422


def test_a_failed_request_gives_its_key_back(engine: Engine) -> None:
    idempotency.claim(engine, keyed()).release(engine)
    retry = idempotency.claim(engine, keyed("order B"))
    assert retry.answer is None and retry.token is not None


def test_an_abandoned_claim_is_taken_over_and_the_slow_first_request_can_no_longer_answer(
    engine: Engine,
) -> None:
    slow = idempotency.claim(engine, keyed())
    with session_factory(engine)() as session:  # its process died, or it has taken longer than the lease
        session.exec(update(IdempotentResponse).values(created_at=utc_now() - CLAIM_LEASE))
        session.commit()
    retry = idempotency.claim(engine, keyed())
    assert retry.token is not None and retry.token != slow.token
    with session_factory(engine)() as session:
        assert problem_of(lambda: slow.keep(session, 201, {"id": "slow"})).status == 409
    slow.release(engine)  # not its claim any more: nothing is released
    with session_factory(engine)() as session:
        retry.keep(session, 201, {"id": "retry"})
        session.commit()
    assert idempotency.claim(engine, keyed()).answer == idempotency.StoredAnswer(201, {"id": "retry"})


# ---------------------------------------------------------------- through POST /orders


def order_body(patient_ref: str = "PSN-IDEM-1", site: str = "TC-BOSTON") -> dict[str, Any]:
    return {
        "patient_ref": patient_ref,
        # One patient per patient_ref: one patient's second active order is refused, whatever its ref.
        "patient": {
            "name": "Jane Doe",
            "date_of_birth": "2019-04-02",
            "medical_record_number": f"MRN-{patient_ref}",
        },
        "therapy_code": "WASKYRA",
        "treatment_center_id": site,
        "prescriber_npi": "1234567893",
        "consent": {"signed_on": "2026-01-20", "form_version": "WAS-ICF-2.1"},
        "payer_authorization": {"reference": "PA-1", "expires_on": "2099-03-31"},
        "eligibility_attested": True,
    }


def orders_placed(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return session.exec(select(func.count()).select_from(Order)).one()


def key_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert [(e["location"], e["pointer"]) for e in problem["errors"]] == [("header", "/Idempotency-Key")]
    return problem


class HeldInItsWork:
    """Holds the first request that gathers an order's facts until `let_go()`: it has claimed its key
    and not answered yet. Bounded waits: a request that never arrives fails the test, not the suite."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.arrived = threading.Event()
        self._go = threading.Event()
        gather = commands._gather_facts

        def held(*args: Any, **kwargs: Any) -> Any:
            if not self.arrived.is_set():
                self.arrived.set()
                assert self._go.wait(30), "the test never let the first request go"
            return gather(*args, **kwargs)

        monkeypatch.setattr(commands, "_gather_facts", held)

    def let_go(self) -> None:
        self._go.set()


def test_the_same_key_while_the_first_order_is_in_flight_is_409_then_the_first_answer(
    engine: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {**COORDINATOR, "Idempotency-Key": KEY}
    held = HeldInItsWork(monkeypatch)
    answers: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(client.post("/orders", json=order_body(), headers=headers))
    )
    first.start()
    try:
        assert held.arrived.wait(10), "the first request never reached its work"
        in_flight = client.post("/orders", json=order_body(), headers=headers)
        assert key_problem(in_flight, 409)["status"] == 409
        assert in_flight.headers["Retry-After"] == "1"
    finally:
        held.let_go()
        first.join(30)
    assert not first.is_alive() and [a.status_code for a in answers] == [201], answers
    again = client.post("/orders", json=order_body(), headers=headers)
    assert again.status_code == 200 and again.json() == answers[0].json()
    assert orders_placed(engine) == 1


def test_the_same_key_with_another_order_is_422_naming_the_key_and_places_nothing(
    engine: Engine, client: TestClient
) -> None:
    headers = {**COORDINATOR, "Idempotency-Key": KEY}
    placed = client.post("/orders", json=order_body(), headers=headers)
    assert placed.status_code == 201, placed.text
    other = client.post("/orders", json=order_body("PSN-IDEM-2", site="TC-DENVER"), headers=headers)
    problem = key_problem(other, 422)
    assert "PSN-IDEM-2" not in other.text and "TC-DENVER" not in other.text
    assert problem["type"] == idempotency.KEY_REUSED
    assert orders_placed(engine) == 1


def test_a_refused_order_gives_its_key_back(engine: Engine, client: TestClient) -> None:
    headers = {**CENTER, "Idempotency-Key": KEY}
    elsewhere = client.post("/orders", json=order_body(site="TC-DENVER"), headers=headers)
    assert elsewhere.status_code == 403, elsewhere.text
    own = client.post("/orders", json=order_body(), headers=headers)
    assert own.status_code == 201, own.text
    with session_factory(engine)() as session:
        kept = session.exec(select(IdempotentResponse.status_code).where(col(IdempotentResponse.key) == KEY))
        assert list(kept) == [200]


def test_another_sites_order_is_the_same_404_as_a_missing_one(engine: Engine, client: TestClient) -> None:
    denver = client.post("/orders", json=order_body(site="TC-DENVER"), headers=COORDINATOR)
    assert denver.status_code == 201, denver.text
    seen = client.get(f"/orders/{denver.json()['id']}", headers=CENTER)
    missing = client.get("/orders/00000000-0000-4000-8000-000000000000", headers=CENTER)
    assert seen.status_code == missing.status_code == 404
    assert {k: v for k, v in seen.json().items() if k != "instance"} == {
        k: v for k, v in missing.json().items() if k != "instance"
    }
    for path in ("history", "collections"):
        assert client.get(f"/orders/{denver.json()['id']}/{path}", headers=CENTER).status_code == 404
    cancel = client.post(
        f"/orders/{denver.json()['id']}/cancel", json={"reason_code": "other"}, headers=CENTER
    )
    assert cancel.status_code == 404 and cancel.json()["detail"] == missing.json()["detail"]


def test_a_list_filter_is_applied_or_refused_never_ignored(engine: Engine, client: TestClient) -> None:
    placed = {}
    for patient_ref, site in (("PSN-B", "TC-BOSTON"), ("PSN-D", "TC-DENVER")):
        placed[patient_ref] = client.post("/orders", json=order_body(patient_ref, site), headers=COORDINATOR)
        assert placed[patient_ref].is_success

    def listed(headers: dict[str, str], **query: str) -> list[str]:
        response = client.get("/orders", params=query, headers=headers)
        assert response.status_code == 200, response.text
        return [o["patient_ref"] for o in response.json()]

    assert listed(COORDINATOR, treatment_center_id="TC-DENVER") == ["PSN-D"]
    assert listed(COORDINATOR, coi=placed["PSN-B"].json()["coi"]) == ["PSN-B"]
    assert listed(COORDINATOR, coi="CHW43212600000M*") == []  # a check character `*` is a COI too
    assert listed(COORDINATOR, status="accepted") == ["PSN-B"]
    assert listed(CENTER) == ["PSN-B"]
    assert listed(CENTER, treatment_center_id="TC-DENVER") == []
    unknown = client.get("/orders", params={"site": "TC-DENVER"}, headers=COORDINATOR)
    assert unknown.status_code == 422 and "TC-DENVER" not in unknown.text
    assert [(e["location"], e["pointer"]) for e in unknown.json()["errors"]] == [("query", "/site")]
    assert client.get("/orders", params={"status": "lost"}, headers=COORDINATOR).status_code == 422
