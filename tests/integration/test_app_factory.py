"""Each service's app is built by `create_app(settings)`, nothing at import: two apps in one process are
independent. After a commit that wrote outbox rows the session factory wakes the relay by itself, for a
route and for a consumer alike; no way in calls anything by hand (SQLite and PostgreSQL, no broker)."""

from __future__ import annotations

import importlib
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.envelope import utc_now
from cgt_contracts.events import OrderCancelled, OrderCancelledData
from cryptography.fernet import Fernet, InvalidToken
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.common.consumer import BatchConsumer, _BatchSubscriber, _Work
from services.common.identifiers import coi_identifier
from services.common.outbox import OUTBOX_TABLE, enqueue
from services.common.topics import ORDERS
from services.common.unit_of_work import session_factory, unit_of_work, wake_after_commit
from services.order_intake.app import OrderIntakeSettings, create_app
from services.order_intake.runtime import OrderIntakeRuntime
from tests.support.orders import order_database, start_afresh

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, Engine]]:
    """Two order-intake databases of one kind, each with the seed registry."""
    with (
        order_database(request.param, tmp_path_factory.mktemp(f"{request.param}-a")) as first,
        order_database(request.param, tmp_path_factory.mktemp(f"{request.param}-b")) as second,
    ):
        yield first, second


def settings_for(engine: Engine) -> OrderIntakeSettings:
    return OrderIntakeSettings(
        database_url=engine.url.render_as_string(hide_password=False),
        cgt_api_tokens_file=ROOT / "deploy" / "dev-tokens.json",
        phi_encryption_key=Fernet.generate_key().decode(),
        patient_match_key=secrets.token_urlsafe(32),
        seed_registry=False,
        log_level="WARNING",
    )


def runtime_of(app: FastAPI) -> OrderIntakeRuntime:
    runtime = app.state.runtime
    assert isinstance(runtime, OrderIntakeRuntime)
    return runtime


class Wakes:
    """A waker that counts its calls, registered beside the relay's own on one engine's outbox."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self.unregister = wake_after_commit(engine, OUTBOX_TABLE, self)

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def fresh(databases: tuple[Engine, Engine]) -> tuple[Engine, Engine]:
    first, second = databases
    return start_afresh(first), start_afresh(second)


@contextmanager
def counting_wakes(engine: Engine) -> Iterator[Wakes]:
    counter = Wakes(engine)
    try:
        yield counter
    finally:
        counter.unregister()


def order_body(patient_ref: str) -> dict[str, Any]:
    return {
        "patient_ref": patient_ref,
        "patient": {"name": "Jane Doe", "date_of_birth": "2019-04-02", "medical_record_number": "MRN-1"},
        "therapy_code": "WASKYRA",
        "treatment_center_id": "TC-BOSTON",
        "prescriber_npi": "1234567893",
        "consent": {"signed_on": "2026-01-20", "form_version": "WAS-ICF-2.1"},
        "payer_authorization": {"reference": "PA-1", "expires_on": "2099-03-31"},
        "eligibility_attested": True,
    }


def test_importing_an_app_module_builds_nothing() -> None:
    for service in ("order_intake", "coi_tracking", "scheduling"):
        module = importlib.import_module(f"services.{service}.app")
        assert not hasattr(module, "app"), service
        assert callable(module.create_app)


def test_two_apps_made_in_one_process_are_independent(fresh: tuple[Engine, Engine]) -> None:
    first_db, second_db = fresh
    first, second = create_app(settings_for(first_db)), create_app(settings_for(second_db))
    one, other = runtime_of(first), runtime_of(second)
    assert one.engine.url == first_db.url and other.engine.url == second_db.url
    assert one.engine is not other.engine
    assert one.relay is not other.relay and one.broker is not other.broker
    with pytest.raises(InvalidToken):  # each PHI key ring from its own settings
        other.issuer.phi_keys.decrypt(one.issuer.phi_keys.encrypt(b"identity"))
    # The clients are used without `with`: the lifespan (which reaches for the broker) does not run.
    placed = TestClient(first).post("/orders", json=order_body("PSN-FACTORY-1"), headers=COORDINATOR)
    assert placed.status_code == 201, placed.text
    assert [o["id"] for o in TestClient(first).get("/orders", headers=COORDINATOR).json()] == [
        placed.json()["id"]
    ]
    assert TestClient(second).get("/orders", headers=COORDINATOR).json() == []


def test_a_route_that_enqueues_an_event_wakes_the_relay_by_itself(fresh: tuple[Engine, Engine]) -> None:
    app = create_app(settings_for(fresh[0]))
    client = TestClient(app)
    with counting_wakes(runtime_of(app).engine) as wakes:
        assert client.get("/orders", headers=COORDINATOR).status_code == 200
        assert wakes.count == 0  # a read writes no outbox row
        placed = client.post("/orders", json=order_body("PSN-FACTORY-2"), headers=COORDINATOR)
        assert placed.status_code == 201, placed.text
        assert wakes.count == 1  # order.accepted committed: woken once, by the session factory


def cancellation() -> OrderCancelled:
    coi = coi_identifier("W0000", 2026, 7)
    return OrderCancelled(
        source="test",
        subject=coi,
        correlationid="factory-test",
        data=OrderCancelledData(
            order_id=uuid.uuid4(), coi=coi, reason="test", cancelled_by="coord-ana", cancelled_at=utc_now()
        ),
    )


async def test_a_consumer_that_enqueues_an_event_wakes_the_relay_by_itself(
    fresh: tuple[Engine, Engine],
) -> None:
    def forward(session: Session, events: list[OrderCancelled]) -> list[str | None]:
        for event in events:
            enqueue(session, ORDERS, event)
        return [None] * len(events)

    spec: BatchConsumer[OrderCancelled] = BatchConsumer(
        group_id="factory-test", topics=(ORDERS,), event_types=(OrderCancelled,), apply=forward
    )
    runtime = runtime_of(create_app(settings_for(fresh[0])))
    consumer = _BatchSubscriber(spec, runtime.broker, session_factory(runtime.engine), max_attempts=1)
    event = cancellation()
    with counting_wakes(runtime.engine) as wakes:
        assert await consumer.apply_or_isolate([_Work(record=None, event=event)]) == []
        assert wakes.count == 1
        assert await consumer.apply_or_isolate([_Work(record=None, event=event)]) == []  # a redelivery
        assert wakes.count == 1  # the inbox dropped it: no outbox row, no wake


def test_a_rolled_back_transaction_or_another_engine_wakes_nothing(fresh: tuple[Engine, Engine]) -> None:
    with counting_wakes(fresh[0]) as wakes:
        with session_factory(fresh[0])() as session:
            enqueue(session, ORDERS, cancellation())
            unit_of_work(session).write()  # the row is in the database, in a transaction that is dropped
            session.rollback()
            session.commit()  # a commit after the rollback has nothing of the dropped transaction to report
        assert wakes.count == 0
        with session_factory(fresh[1])() as session:  # another engine's commit is not this one's
            enqueue(session, ORDERS, cancellation())
            session.commit()
        assert wakes.count == 0
        with session_factory(fresh[0])() as session:
            enqueue(session, ORDERS, cancellation())
            session.commit()
        assert wakes.count == 1
