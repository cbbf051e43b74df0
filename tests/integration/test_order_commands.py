"""Order intake's commands and subscribers called directly, without the broker or HTTP (SQLite and
PostgreSQL): each use case's effects read back from the database and the outbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from cgt_contracts.events import (
    AnyEvent,
    CancellationReasonCode,
    InfusionRecorded,
    InfusionRecordedData,
    ManufacturingDelayCode,
    ManufacturingFailureCode,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentLeg,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.unit_of_work import session_factory
from services.order_intake import commands, domain, handlers
from services.order_intake.domain import OrderStatus
from services.order_intake.models import Order, OrderTransition, PatientRecord
from services.order_intake.seed import DEMO_SITE, UNCERTIFIED_SITE
from tests.support.orders import (
    BOSTON_DESK,
    COORDINATOR,
    ISSUER,
    SEATTLE_DESK,
    a_new_order,
    move,
    order_database,
    outbox,
    place,
    release,
    start_afresh,
    stored,
)
from tests.support.races import Contender

NOW = datetime.now(UTC)
OTHER = CancellationReasonCode.OTHER
WITHDREW = CancellationReasonCode.PATIENT_WITHDREW
DUPLICATE = CancellationReasonCode.DUPLICATE_ORDER


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with order_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        yield engine


@pytest.fixture
def engine(database: Engine) -> Engine:
    return start_afresh(database)


def history(engine: Engine, order: Order) -> list[tuple[OrderStatus | None, OrderStatus, str | None]]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(OrderTransition.from_status, OrderTransition.to_status, OrderTransition.cause_event_id)
            .where(col(OrderTransition.order_id) == order.id)
            .order_by(col(OrderTransition.id))
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_an_order_that_passes_every_check_is_accepted_with_its_coi_and_published(engine: Engine) -> None:
    new = a_new_order()
    order = place(engine, new)
    assert order.status is OrderStatus.ACCEPTED and order.coi is not None
    assert [(f, t) for f, t, _ in history(engine, order)] == [
        (None, OrderStatus.SUBMITTED),
        (OrderStatus.SUBMITTED, OrderStatus.ACCEPTED),
    ]
    [(kind, data)] = outbox(engine, order.coi)
    assert kind == "order.accepted.v2"
    assert (data["coi"], data["patient_ref"], data["treatment_center_id"]) == (
        order.coi,
        new.patient_ref,
        DEMO_SITE,
    )
    with session_factory(engine)() as session:
        record = session.get(PatientRecord, order.id)
    assert record is not None and new.patient.name not in record.encrypted_identity
    assert new.patient.name not in str(outbox(engine))


def test_an_order_failing_checks_is_rejected_with_every_reason_keyed_by_its_id(engine: Engine) -> None:
    order = place(engine, a_new_order(treatment_center_id=UNCERTIFIED_SITE, eligibility_attested=False))
    assert order.status is OrderStatus.REJECTED and order.coi is None
    [(kind, data)] = outbox(engine, commands.order_subject(order.id))
    assert kind == "order.rejected.v2"
    assert set(data["reason_codes"]) == {
        "site_not_certified",
        "prescriber_not_at_site",
        "eligibility_not_attested",
    }
    assert "message" not in json.dumps(data), "the messages stay with the order"
    assert {r["code"] for r in json.loads(stored(engine, order.id).rejection_reasons or "[]")} == set(
        data["reason_codes"]
    )


def test_a_treatment_center_orders_only_for_its_own_site_and_nothing_is_written(engine: Engine) -> None:
    with session_factory(engine)() as session, pytest.raises(commands.NotPermitted):
        commands.place_order(session, a_new_order(), SEATTLE_DESK, ISSUER, "c")
    assert place(engine, caller=BOSTON_DESK).status is OrderStatus.ACCEPTED
    assert [kind for kind, _ in outbox(engine)] == ["order.accepted.v2"]


def test_another_sites_order_is_not_found_exactly_like_a_missing_one(engine: Engine) -> None:
    order = place(engine)
    with session_factory(engine)() as session:
        with pytest.raises(commands.OrderNotFound) as elsewhere:
            commands.visible_order(session, order.id, SEATTLE_DESK.site_scope)
        with pytest.raises(commands.OrderNotFound) as missing:
            commands.visible_order(session, uuid.uuid4(), SEATTLE_DESK.site_scope)
        with pytest.raises(commands.OrderNotFound):
            commands.cancel_order(session, order.id, OTHER, "not yours", SEATTLE_DESK, "c")
        assert commands.visible_order(session, order.id, BOSTON_DESK.site_scope).id == order.id
    assert str(elsewhere.value) == str(missing.value) == "no such order"
    assert stored(engine, order.id).status is OrderStatus.ACCEPTED


def test_every_list_filter_given_is_applied_within_the_callers_scope(engine: Engine) -> None:
    boston = place(engine)
    denver = place(engine, a_new_order(treatment_center_id=UNCERTIFIED_SITE))

    def ids(scope: str | None, **wanted: object) -> set[uuid.UUID]:
        with session_factory(engine)() as session:
            found, _ = commands.find_orders(session, scope, commands.OrderFilter(**wanted))  # type: ignore[arg-type]
        return {order.id for order in found}

    assert ids(None) == {boston.id, denver.id}
    assert ids(None, treatment_center_id=UNCERTIFIED_SITE) == {denver.id}
    assert ids(None, status=OrderStatus.ACCEPTED) == {boston.id}
    assert ids(None, patient_ref=denver.patient_ref) == {denver.id}
    assert ids(None, coi=boston.coi) == {boston.id}
    assert ids(DEMO_SITE) == {boston.id}
    assert ids(DEMO_SITE, treatment_center_id=UNCERTIFIED_SITE) == set()


def test_a_cancellation_records_why_who_and_when_once(engine: Engine) -> None:
    order = place(engine)
    with session_factory(engine)() as session:
        commands.cancel_order(session, order.id, WITHDREW, "moved abroad", BOSTON_DESK, "c")
        session.commit()
    cancelled = stored(engine, order.id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert (cancelled.cancelled_reason_code, cancelled.cancelled_reason, cancelled.cancelled_by) == (
        "patient_withdrew",
        "moved abroad",
        BOSTON_DESK.subject,
    )
    published = outbox(engine, order.coi)
    assert [kind for kind, _ in published] == ["order.accepted.v2", "order.cancelled.v2"]
    assert published[1][1]["reason_code"] == "patient_withdrew"
    assert "moved abroad" not in json.dumps(published), "the note stays with the order (I6)"
    with (
        session_factory(engine)() as session,
        pytest.raises(commands.Refused, match="cannot become cancelled"),
    ):
        commands.cancel_order(session, order.id, OTHER, None, COORDINATOR, "c")


@pytest.mark.parametrize(
    ("step", "why"),
    [
        (OrderStatus.IN_MANUFACTURING, "cannot become in_manufacturing"),
        (OrderStatus.PRODUCT_RELEASED, "recorded with its lot"),
        (OrderStatus.PRODUCT_SHIPPED, "set by the shipment's events"),
        (OrderStatus.CANCELLED, "recorded with its reason"),
        (OrderStatus.ACCEPTED, "decided by the checks"),
    ],
)
def test_a_step_by_hand_is_refused_out_of_order_or_when_it_has_a_way_of_its_own(
    engine: Engine, step: OrderStatus, why: str
) -> None:
    order = place(engine)
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match=why):
        commands.record_step(session, order.id, step, COORDINATOR)
    assert stored(engine, order.id).status is OrderStatus.ACCEPTED


def test_collections_each_get_a_din_and_only_the_first_moves_the_order(engine: Engine) -> None:
    order = place(engine)
    recorded = []
    for hours in (0, 26):
        with session_factory(engine)(expire_on_commit=False) as session:
            recorded.append(
                commands.record_collection(
                    session, order.id, NOW - timedelta(hours=30 - hours), COORDINATOR, ISSUER, "c"
                )
            )
            session.commit()
    assert [r.collection.number for r in recorded] == [1, 2] and {r.coi for r in recorded} == {order.coi}
    assert len({r.collection.din for r in recorded}) == 2
    assert [(f, t) for f, t, _ in history(engine, order)][-1] == (
        OrderStatus.ACCEPTED,
        OrderStatus.CELLS_COLLECTED,
    )
    published = [data["din"] for kind, data in outbox(engine, order.coi) if kind == "collection.recorded.v1"]
    assert published == [r.collection.din for r in recorded]
    move(engine, order, OrderStatus.IN_MANUFACTURING)
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="in_manufacturing"):
        commands.record_collection(session, order.id, NOW, COORDINATOR, ISSUER, "c")


def test_the_product_is_released_with_its_lot_only_while_in_manufacturing(engine: Engine) -> None:
    order = place(engine)
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="only while its order"):
        commands.record_manufacturing_release(session, order.id, "LOT-1", NOW, COORDINATOR, "c")
    move(engine, order, OrderStatus.CELLS_COLLECTED, OrderStatus.IN_MANUFACTURING)
    release(engine, order)
    released = stored(engine, order.id)
    assert (released.status, released.product_lot_number) == (OrderStatus.PRODUCT_RELEASED, "LOT-1")
    kind, data = outbox(engine, order.coi)[-1]
    assert (kind, data["lot_number"], data["released_by"]) == (
        "product.released_for_shipment.v2",
        "LOT-1",
        COORDINATOR.subject,
    )


def collect(engine: Engine, order: Order) -> str:
    with session_factory(engine)(expire_on_commit=False) as session:
        recorded = commands.record_collection(session, order.id, NOW, COORDINATOR, ISSUER, "c")
        session.commit()
    return recorded.collection.din


def fail_lot(engine: Engine, order: Order, note: str | None = None) -> None:
    with session_factory(engine)() as session:
        commands.record_manufacturing_failure(
            session, order.id, ManufacturingFailureCode.STERILITY_FAILURE, note, COORDINATOR, "c"
        )
        session.commit()


def test_a_failed_lot_is_recorded_once_and_the_next_attempt_gets_a_new_din_under_the_same_coi(
    engine: Engine,
) -> None:
    order = place(engine)
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="only while its order"):
        commands.record_manufacturing_failure(
            session, order.id, ManufacturingFailureCode.OTHER, None, COORDINATOR, "c"
        )
    first_din = collect(engine, order)
    move(engine, order, OrderStatus.IN_MANUFACTURING)
    fail_lot(engine, order, note="mycoplasma on day 12")
    assert stored(engine, order.id).status is OrderStatus.MANUFACTURING_FAILED
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="only while its order"):
        commands.record_manufacturing_failure(
            session, order.id, ManufacturingFailureCode.OTHER, None, COORDINATOR, "c"
        )
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="new collection"):
        commands.record_step(session, order.id, OrderStatus.CELLS_COLLECTED, COORDINATOR)

    kind, data = outbox(engine, order.coi)[-1]
    assert (kind, data["collection_number"], data["reason_code"], data["recorded_by"]) == (
        "manufacturing.failed.v1",
        1,
        "sterility_failure",
        COORDINATOR.subject,
    )
    assert "mycoplasma" not in json.dumps(outbox(engine)), "the note stays with the order (I6)"
    with session_factory(engine)() as session:
        [failure] = commands.manufacturing_failures_of(session, stored(engine, order.id))
        assert (failure.collection_number, failure.note) == (1, "mycoplasma on day 12")

    second_din = collect(engine, order)
    assert second_din != first_din
    assert stored(engine, order.id).status is OrderStatus.CELLS_COLLECTED
    move(engine, order, OrderStatus.IN_MANUFACTURING)
    release(engine, order)
    assert [t for _, t, _ in history(engine, order)][2:] == [
        OrderStatus.CELLS_COLLECTED,
        OrderStatus.IN_MANUFACTURING,
        OrderStatus.MANUFACTURING_FAILED,
        OrderStatus.CELLS_COLLECTED,
        OrderStatus.IN_MANUFACTURING,
        OrderStatus.PRODUCT_RELEASED,
    ]


def test_manufacturing_started_is_published_with_the_collection_it_is_made_from(engine: Engine) -> None:
    order = place(engine)
    collect(engine, order)
    move(engine, order, OrderStatus.IN_MANUFACTURING)
    kind, data = outbox(engine, order.coi)[-1]
    assert (kind, data["order_id"], data["collection_number"]) == (
        "manufacturing.started.v1",
        str(order.id),
        1,
    )
    assert datetime.fromisoformat(data["started_at"]) >= NOW
    by_hand = place(engine)
    move(engine, by_hand, OrderStatus.CELLS_COLLECTED, OrderStatus.IN_MANUFACTURING)
    kind, data = outbox(engine, by_hand.coi)[-1]
    assert (kind, data["collection_number"]) == ("manufacturing.started.v1", None), "no DIN, no number"
    assert [k for k, _ in outbox(engine, by_hand.coi)].count("manufacturing.started.v1") == 1


def delay_lot(engine: Engine, order: Order, day: date, note: str | None = None) -> None:
    with session_factory(engine)() as session:
        commands.record_manufacturing_delay(
            session, order.id, day, ManufacturingDelayCode.RELEASE_TESTING, note, COORDINATOR, "c"
        )
        session.commit()


def test_a_delayed_lot_is_recorded_only_in_manufacturing_ahead_and_its_note_kept(engine: Engine) -> None:
    order = place(engine)
    later = NOW.date() + timedelta(days=50)
    with pytest.raises(commands.Refused, match="only while its order is in_manufacturing"):
        delay_lot(engine, order, later)
    collect(engine, order)
    move(engine, order, OrderStatus.IN_MANUFACTURING)
    with pytest.raises(commands.InvalidField, match="in the past") as refused:
        delay_lot(engine, order, NOW.date() - timedelta(days=1))
    assert refused.value.field == "expected_release_on"
    delay_lot(engine, order, later, note="NOTE-DELAY: sterility test repeated")
    kind, data = outbox(engine, order.coi)[-1]
    assert (kind, data["expected_release_on"], data["reason_code"], data["collection_number"]) == (
        "manufacturing.delayed.v1",
        later.isoformat(),
        "release_testing",
        1,
    )
    assert "NOTE-DELAY" not in json.dumps(outbox(engine)), "the note stays with the order (I6)"
    with session_factory(engine)() as session:
        [delay] = commands.manufacturing_delays_of(session, stored(engine, order.id))
        assert (delay.expected_release_on, delay.note) == (later, "NOTE-DELAY: sterility test repeated")
    release(engine, order)
    with pytest.raises(commands.Refused, match="this order is product_released"):
        delay_lot(engine, order, later)


def test_a_lot_of_an_order_with_no_collection_cannot_be_recorded_failed(engine: Engine) -> None:
    order = place(engine)
    move(engine, order, OrderStatus.CELLS_COLLECTED, OrderStatus.IN_MANUFACTURING)
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="no collection"):
        commands.record_manufacturing_failure(
            session, order.id, ManufacturingFailureCode.OTHER, None, COORDINATOR, "c"
        )


def dispatched(order: Order, leg: ShipmentLeg = ShipmentLeg.RETURN) -> ShipmentDispatched:
    assert order.coi is not None
    return ShipmentDispatched(
        source="cgt/coi-tracking",
        subject=order.coi,
        correlationid="c",
        data=ShipmentDispatchedData(
            shipment_id=uuid.uuid4(),
            coi=order.coi,
            leg=leg,
            treatment_center_id=order.treatment_center_id,
            dispatched_at=NOW,
            eta_at=NOW + timedelta(days=2),
        ),
    )


def delivered(order: Order) -> ShipmentDelivered:
    assert order.coi is not None
    return ShipmentDelivered(
        source="cgt/coi-tracking",
        subject=order.coi,
        correlationid="c",
        data=ShipmentDeliveredData(
            shipment_id=uuid.uuid4(),
            coi=order.coi,
            treatment_center_id=order.treatment_center_id,
            delivered_at=NOW,
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=-180.0,
        ),
    )


def infused(order: Order, follow_up_visits: int) -> InfusionRecorded:
    assert order.coi is not None
    return InfusionRecorded(
        source="cgt/scheduling",
        subject=order.coi,
        correlationid="c",
        data=InfusionRecordedData(
            appointment_id=uuid.uuid4(),
            coi=order.coi,
            treatment_center_id=order.treatment_center_id,
            infused_on=date.today(),
            follow_up_visits=follow_up_visits,
        ),
    )


def handle(engine: Engine, handler: Callable[[Session, AnyEvent], None], event: AnyEvent) -> None:
    with session_factory(engine)() as session:
        handler(session, event)
        session.commit()


def test_shipment_and_infusion_events_move_the_order_and_name_themselves_as_its_cause(
    engine: Engine,
) -> None:
    order = place(engine)
    move(engine, order, OrderStatus.CELLS_COLLECTED, OrderStatus.IN_MANUFACTURING)
    release(engine, order)
    outbound = dispatched(order, ShipmentLeg.OUTBOUND)
    events: list[AnyEvent] = [dispatched(order), delivered(order), infused(order, follow_up_visits=3)]
    handle(engine, handlers.on_shipment_dispatched, outbound)  # the cells' leg: not the order's step
    for event, handler in zip(
        events,
        [handlers.on_shipment_dispatched, handlers.on_shipment_delivered, handlers.on_infusion_recorded],
        strict=True,
    ):
        handle(engine, handler, event)
        handle(engine, handler, event)  # redelivered: applied once
    by_event = [(t, cause) for _, t, cause in history(engine, order) if cause is not None]
    assert by_event == [
        (OrderStatus.PRODUCT_SHIPPED, str(events[0].id)),
        (OrderStatus.PRODUCT_DELIVERED, str(events[1].id)),
        (OrderStatus.INFUSED, str(events[2].id)),
        (OrderStatus.IN_FOLLOW_UP, str(events[2].id)),
    ]


def test_an_event_the_state_machine_refuses_is_left_unapplied_and_still_handled(engine: Engine) -> None:
    order = place(engine)
    handle(engine, handlers.on_shipment_delivered, delivered(order))
    assert stored(engine, order.id).status is OrderStatus.ACCEPTED
    assert len(history(engine, order)) == 2


# ---------------------------------------------------------------- rules the caller cannot bend


def orders_of_patient(engine: Engine, match: str) -> list[tuple[OrderStatus, str]]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(Order.status, Order.patient_ref).where(col(Order.patient_match) == match)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def match_of(new: commands.NewOrder) -> str:
    patient = new.patient
    return domain.patient_match(
        ISSUER.patient_match_key, patient.name, patient.date_of_birth, patient.medical_record_number
    )


def test_a_stated_order_date_in_the_past_never_passes_an_authorization_expired_today(engine: Engine) -> None:
    today = date.today()
    order = place(
        engine,
        a_new_order(
            stated_ordered_on=today - timedelta(days=30),
            payer_authorization_expires_on=today - timedelta(days=1),
        ),
    )
    assert order.status is OrderStatus.REJECTED
    assert json.loads(order.rejection_reasons or "[]")[0]["code"] == "payer_authorization_expired"
    assert (order.ordered_on, order.stated_ordered_on) == (today, today - timedelta(days=30))


def test_a_second_active_order_for_the_same_patient_under_another_ref_is_refused(engine: Engine) -> None:
    first = a_new_order()
    placed = place(engine, first)
    respelled = commands.PatientIdentity(
        f"  {first.patient.name.upper()}  ",
        first.patient.date_of_birth,
        first.patient.medical_record_number.lower(),
    )
    again = a_new_order(patient=respelled)  # another patient_ref, the same patient
    with session_factory(engine)() as session, pytest.raises(commands.Refused) as refused:
        commands.place_order(session, again, COORDINATOR, ISSUER, "c")
    message = str(refused.value).lower()
    assert "the patient already has an active order" in message
    assert (
        first.patient.name.lower() not in message
        and first.patient.medical_record_number.lower() not in message
    )
    assert orders_of_patient(engine, match_of(first)) == [(OrderStatus.ACCEPTED, first.patient_ref)]
    with session_factory(engine)() as session:
        commands.cancel_order(session, placed.id, DUPLICATE, None, COORDINATOR, "c")
        session.commit()
    assert place(engine, again).status is OrderStatus.ACCEPTED  # a cancelled order does not block


def test_a_rejected_order_does_not_block_the_patients_next_one(engine: Engine) -> None:
    first = a_new_order(treatment_center_id=UNCERTIFIED_SITE)
    assert place(engine, first).status is OrderStatus.REJECTED
    assert place(engine, a_new_order(patient=first.patient)).status is OrderStatus.ACCEPTED


def test_the_patient_match_is_never_published(engine: Engine) -> None:
    new = a_new_order()
    place(engine, new)
    assert match_of(new) not in str(outbox(engine))


@pytest.mark.parametrize("born", [date.today() + timedelta(days=1), date(1899, 12, 31)])
def test_an_impossible_date_of_birth_is_refused_naming_the_field_and_nothing_is_written(
    engine: Engine, born: date
) -> None:
    new = a_new_order()
    impossible = a_new_order(
        patient=commands.PatientIdentity(new.patient.name, born, new.patient.medical_record_number)
    )
    with session_factory(engine)() as session, pytest.raises(commands.InvalidField) as refused:
        commands.place_order(session, impossible, COORDINATOR, ISSUER, "c")
    assert refused.value.field == "patient/date_of_birth" and born.isoformat() not in str(refused.value)
    assert outbox(engine) == [] and orders_of_patient(engine, match_of(impossible)) == []


def test_two_orders_for_one_patient_at_the_same_moment_leave_at_most_one_active(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = a_new_order()
    second = a_new_order(patient=first.patient)  # another patient_ref

    def second_placement() -> None:
        with session_factory(engine)() as session:
            commands.place_order(session, second, COORDINATOR, ISSUER, "second")
            session.commit()

    postgres = engine.dialect.name == "postgresql"
    # PostgreSQL: the second is caught after its look-up found no active order (the first is not
    # committed), so only the unique index can refuse it. SQLite: caught before it takes the write lock.
    hook = "_gather_facts" if postgres else "_refuse_a_second_active_order"
    contender = Contender(monkeypatch, commands, hook, second_placement)
    with session_factory(engine)() as session:
        commands.place_order(session, first, COORDINATOR, ISSUER, "first")
        contender.arrive()
        session.commit()
    with pytest.raises(commands.Refused, match="already has an active order"):
        contender.finish()
    assert orders_of_patient(engine, match_of(first)) == [(OrderStatus.ACCEPTED, first.patient_ref)]
