"""A coordinator's cancellation and a shipment event moving the same order at the same moment (SQLite and
PostgreSQL, no broker): the second change is judged on the order the first one left, never on the status
both read before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cgt_contracts.events import ShipmentDelivered, ShipmentDeliveredData
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.identifiers import coi_identifier
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.order_intake import commands, handlers
from services.order_intake.domain import OrderStatus, Way
from services.order_intake.models import TABLES, Order, OrderTransition
from tests.support.infra import database
from tests.support.races import Contender


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


def a_shipped_order(engine: Engine) -> Order:
    order = Order(
        patient_ref="ref-race",
        therapy_code="ETA-CEL",
        treatment_center_id="TC-RACE",
        prescriber_npi="1234567893",
        ordered_on=date.today(),
        created_by="coordinator-a",
        status=OrderStatus.PRODUCT_SHIPPED,
        coi=coi_identifier("W4321", 2026, uuid.uuid4().int % 36**6),
    )
    with session_factory(engine)() as session:
        session.add(order)
        session.commit()
        session.refresh(order)
    return order


def delivered(order: Order) -> ShipmentDelivered:
    assert order.coi is not None
    return ShipmentDelivered(
        source="cgt/coi-tracking",
        subject=order.coi,
        correlationid="delivery-while-cancelling",
        data=ShipmentDeliveredData(
            shipment_id=uuid.uuid4(),
            coi=order.coi,
            treatment_center_id=order.treatment_center_id,
            delivered_at=datetime.now(UTC),
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=-180.0,
        ),
    )


def test_a_delivery_arriving_while_the_order_is_cancelled_is_judged_on_the_cancelled_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = a_shipped_order(engine)

    def delivery_event() -> None:
        with session_factory(engine)() as session:
            handlers.on_shipment_delivered(session, delivered(order))
            session.commit()

    contender = Contender(monkeypatch, commands, "record_transition", delivery_event)
    with session_factory(engine)() as coordinator:
        cancelling = coordinator.get(Order, order.id)
        assert cancelling is not None
        commands.record_transition(
            coordinator, cancelling, OrderStatus.CANCELLED, Way.CANCELLATION, "coordinator-a"
        )
        contender.arrive()
        coordinator.commit()
    contender.finish()

    with session_factory(engine)() as session:
        stored = session.get(Order, order.id)
        assert stored is not None and stored.status is OrderStatus.CANCELLED
        history = session.exec(
            select(OrderTransition.from_status, OrderTransition.to_status)
            .where(col(OrderTransition.order_id) == order.id)
            .order_by(col(OrderTransition.id))
        ).all()
        assert list(history) == [(OrderStatus.PRODUCT_SHIPPED, OrderStatus.CANCELLED)], history
