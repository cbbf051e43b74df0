"""Order intake without the broker: a database of its own with the seed registry, orders placed and moved
through `commands` directly, and what they wrote to the outbox read back."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel, col, select

from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.order_intake import commands
from services.order_intake.domain import OrderStatus
from services.order_intake.models import TABLES, Order
from services.order_intake.seed import DEMO_PRESCRIBER_NPI, DEMO_SITE, WASKYRA, seed_registry
from tests.support.infra import database

ISSUER = commands.Issuer(
    fin="W4321",
    phi_keys=MultiFernet([Fernet(Fernet.generate_key())]),
    patient_match_key=b"test-match-key" * 3,
)
COORDINATOR = commands.Caller(subject="coord-test")
BOSTON_DESK = commands.Caller(subject="tc-boston-desk", site_scope=DEMO_SITE)
SEATTLE_DESK = commands.Caller(subject="tc-seattle-desk", site_scope="TC-SEATTLE")
BOSTON_FIN = "B4567"
"""The seeded Boston site's own facility number: its DINs start with it."""


ORDER_TABLES = [*COMMON_TABLES, *TABLES]


@contextmanager
def order_database(kind: str, directory: Path) -> Iterator[Engine]:
    """A fresh order-intake database ("sqlite" or "postgresql") holding the seed registry."""
    with database(kind, directory, ORDER_TABLES) as engine:
        seed_registry(engine)
        yield engine


def start_afresh(engine: Engine) -> Engine:
    """Empty every table and seed the registry again: a database made once serves many tests (making a
    PostgreSQL database takes seconds, emptying it milliseconds)."""
    order = [table for table in SQLModel.metadata.sorted_tables if table in ORDER_TABLES]
    with engine.begin() as connection:
        for table in reversed(order):  # rows that refer to others first
            connection.execute(table.delete())
    seed_registry(engine)
    return engine


def a_new_order(**overrides: Any) -> commands.NewOrder:
    """A complete order for the seeded certified site: accepted unless `overrides` break a check."""
    today = date.today()
    new = commands.NewOrder(
        patient_ref=f"PSN-{uuid.uuid4().hex[:8].upper()}",
        # A patient of its own: one patient's second active order is refused, whatever its patient_ref.
        patient=commands.PatientIdentity("Jane Doe", date(2019, 4, 2), f"MRN-{uuid.uuid4().hex[:8]}"),
        therapy_code=WASKYRA,
        treatment_center_id=DEMO_SITE,
        prescriber_npi=DEMO_PRESCRIBER_NPI,
        consent_signed_on=today - timedelta(days=3),
        consent_form_version="WAS-ICF-2.1",
        payer_authorization_reference="PA-1",
        payer_authorization_expires_on=today + timedelta(days=90),
        eligibility_attested=True,
    )
    return dataclasses.replace(new, **overrides)


def place(
    engine: Engine, new: commands.NewOrder | None = None, caller: commands.Caller = COORDINATOR
) -> Order:
    """Place and commit an order through the command; the stored order, detached."""
    with session_factory(engine)(expire_on_commit=False) as session:
        order = commands.place_order(session, new or a_new_order(), caller, ISSUER, "test-correlation")
        session.commit()
    return order


def release(engine: Engine, order: Order) -> None:
    """The manufacturer's release of an order in manufacturing, now."""
    with session_factory(engine)() as session:
        commands.record_manufacturing_release(
            session, order.id, "LOT-1", datetime.now(UTC), COORDINATOR, "test-correlation"
        )
        session.commit()


def move(engine: Engine, order: Order, *steps: OrderStatus) -> None:
    """Record steps a coordinator records by hand, each committed."""
    for step in steps:
        with session_factory(engine)() as session:
            commands.record_step(session, order.id, step, COORDINATOR)
            session.commit()


def stored(engine: Engine, order_id: uuid.UUID) -> Order:
    with session_factory(engine)(expire_on_commit=False) as session:
        order = session.get(Order, order_id)
        assert order is not None
        return order


def outbox(engine: Engine, subject: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) of each event written to the outbox, oldest first, for one subject or all."""
    query = select(OutboxMessage).order_by(col(OutboxMessage.id))
    if subject is not None:
        query = query.where(OutboxMessage.key == subject)
    with session_factory(engine)() as session:
        return [(row.event_type, json.loads(row.payload)["data"]) for row in session.exec(query)]


@contextmanager
def order_intake_client(database: Engine, scratch: Path) -> Iterator[Any]:
    """Order intake's app on the test's database, never started: no broker, no relay (its wake-up is a
    no-op), the routes and the edge exactly as the service has them. `scratch`: a directory for the
    database the module's import-time app would use."""
    import importlib

    import pytest
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as env:
        env.setenv(
            "CGT_API_TOKENS_FILE", str(Path(__file__).resolve().parents[2] / "deploy" / "dev-tokens.json")
        )
        env.setenv("PHI_ENCRYPTION_KEY", Fernet.generate_key().decode())
        env.setenv("PATIENT_MATCH_KEY", "test-patient-match-key-of-32-chars-or-more")
        env.setenv("DATABASE_URL", f"sqlite:///{scratch / 'unused.db'}")
        env.setenv("LOG_LEVEL", "WARNING")
        module = importlib.import_module("services.order_intake.app")
        settings = module.OrderIntakeSettings(
            database_url=database.url.render_as_string(hide_password=False), seed_registry=False
        )
        yield TestClient(module.create_app(settings), raise_server_exceptions=True)
