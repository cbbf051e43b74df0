"""A product released out of specification in order intake (SQLite and PostgreSQL), through its command
and its HTTP routes: the release says so with a code, the file's references are recorded (identifiers,
kept here), and the file's completion is published once, without a reference in it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cgt_contracts.events import OutOfSpecificationCode
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from services.common.unit_of_work import session_factory
from services.order_intake import commands
from services.order_intake.domain import OrderStatus
from services.order_intake.models import Order, TreatmentCenter
from services.order_intake.seed import DEMO_SITE
from tests.support.orders import (
    COORDINATOR,
    move,
    order_database,
    order_intake_client,
    outbox,
    place,
    start_afresh,
    stored,
)

HTTP_COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}
REFS = {
    "physician_request_ref": "PR-2026-0117",
    "patient_consent_ref": "ICF-OOS-2026-0117",
    "risk_assessment_ref": "AGC-RA/2611-08",
    "ind_ref": "IND-031245",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with order_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        yield engine


@pytest.fixture
def engine(database: Engine) -> Engine:
    return start_afresh(database)


@pytest.fixture(scope="module")
def client(database: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with order_intake_client(database, tmp_path_factory.mktemp("import")) as test_client:
        yield test_client


def in_manufacturing(engine: Engine) -> Order:
    order = place(engine)
    move(engine, order, OrderStatus.CELLS_COLLECTED, OrderStatus.IN_MANUFACTURING)
    return order


def release_oos(engine: Engine, order: Order) -> None:
    with session_factory(engine)() as session:
        commands.record_manufacturing_release(
            session,
            order.id,
            "LOT-OOS-1",
            datetime.now(UTC),
            COORDINATOR,
            "c",
            out_of_specification=True,
            out_of_specification_code=OutOfSpecificationCode.VIABILITY,
        )
        session.commit()


def add_to_file(engine: Engine, order: Order, **refs: str) -> commands.OosFileState:
    with session_factory(engine)(expire_on_commit=False) as session:
        state = commands.record_oos_file(session, order.id, commands.OosReferences(**refs), COORDINATOR, "c")
        session.commit()
    return state


def test_a_release_out_of_specification_publishes_v2_with_the_documents_its_file_needs(
    engine: Engine,
) -> None:
    order = in_manufacturing(engine)
    release_oos(engine, order)
    released = stored(engine, order.id)
    assert (released.status, released.product_out_of_specification, released.product_oos_code) == (
        OrderStatus.PRODUCT_RELEASED,
        True,
        "viability",
    )
    kind, data = outbox(engine, order.coi)[-1]
    assert kind == "product.released_for_shipment.v2"
    assert (data["out_of_specification"], data["out_of_specification_code"]) == (True, "viability")
    assert data["oos_documents_required"] == [
        "physician_request",
        "patient_consent",
        "risk_assessment",
        "ind",
    ]


def test_the_file_completes_once_every_reference_is_there_and_no_reference_is_published(
    engine: Engine,
) -> None:
    order = in_manufacturing(engine)
    release_oos(engine, order)
    first = add_to_file(engine, order, physician_request_ref=REFS["physician_request_ref"])
    assert [d.value for d in first.missing] == ["patient_consent", "risk_assessment", "ind"]
    second = add_to_file(
        engine,
        order,
        patient_consent_ref=REFS["patient_consent_ref"],
        risk_assessment_ref=REFS["risk_assessment_ref"],
    )
    assert [d.value for d in second.missing] == ["ind"], "a US site needs the IND as well"
    assert [k for k, _ in outbox(engine, order.coi)].count("product.oos_file_completed.v1") == 0
    done = add_to_file(engine, order, ind_ref=REFS["ind_ref"])
    assert done.missing == () and done.file.completed_at is not None
    kind, data = outbox(engine, order.coi)[-1]
    assert kind == "product.oos_file_completed.v1"
    assert data["documents"] == ["physician_request", "patient_consent", "risk_assessment", "ind"]
    assert data["completed_by"] == COORDINATOR.subject
    everything = json.dumps(outbox(engine))
    assert not [ref for ref in REFS.values() if ref in everything], "references stay in order intake"
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="already complete"):
        commands.record_oos_file(session, order.id, commands.OosReferences(ind_ref="IND-2"), COORDINATOR, "c")


def test_outside_the_us_the_file_is_complete_without_an_ind(engine: Engine) -> None:
    with session_factory(engine)() as session:
        site = session.get(TreatmentCenter, DEMO_SITE)
        assert site is not None
        site.country = "DE"
        session.add(site)
        session.commit()
    order = in_manufacturing(engine)
    release_oos(engine, order)
    assert outbox(engine, order.coi)[-1][1]["oos_documents_required"] == [
        "physician_request",
        "patient_consent",
        "risk_assessment",
    ]
    done = add_to_file(engine, order, **{k: v for k, v in REFS.items() if k != "ind_ref"})
    assert done.missing == () and done.file.completed_at is not None


def test_an_order_released_in_specification_has_no_file(engine: Engine) -> None:
    order = in_manufacturing(engine)
    with session_factory(engine)() as session:
        commands.record_manufacturing_release(session, order.id, "LOT-1", datetime.now(UTC), COORDINATOR, "c")
        session.commit()
    assert outbox(engine, order.coi)[-1][1]["out_of_specification"] is False
    with session_factory(engine)() as session, pytest.raises(commands.Refused, match="not released out of"):
        commands.record_oos_file(session, order.id, commands.OosReferences(**REFS), COORDINATOR, "c")


def test_over_http_the_release_and_the_file_are_checked_at_the_edge_and_never_echoed(
    engine: Engine, client: TestClient
) -> None:
    order = in_manufacturing(engine)
    base = f"/orders/{order.id}"
    release = {"lot_number": "LOT-OOS-2", "released_at": datetime.now(UTC).isoformat()}
    missing_code = client.post(
        f"{base}/manufacturing-release",
        json=release | {"out_of_specification": True},
        headers=HTTP_COORDINATOR,
    )
    assert missing_code.status_code == 422, missing_code.text
    assert [e["pointer"] for e in missing_code.json()["errors"]] == ["/out_of_specification_code"]
    unknown_code = client.post(
        f"{base}/manufacturing-release",
        json=release | {"out_of_specification": True, "out_of_specification_code": "SENTINEL-too-warm"},
        headers=HTTP_COORDINATOR,
    )
    assert unknown_code.status_code == 422 and "SENTINEL" not in unknown_code.text
    assert stored(engine, order.id).status is OrderStatus.IN_MANUFACTURING, "nothing half-written"

    released = client.post(
        f"{base}/manufacturing-release",
        json=release | {"out_of_specification": True, "out_of_specification_code": "purity"},
        headers=HTTP_COORDINATOR,
    )
    assert released.status_code == 200, released.text
    assert (released.json()["product_out_of_specification"], released.json()["product_oos_code"]) == (
        True,
        "purity",
    )

    free_text = client.post(
        f"{base}/out-of-specification-file",
        json={"physician_request_ref": "SENTINEL Dr Who asked for it"},
        headers=HTTP_COORDINATOR,
    )
    assert free_text.status_code == 422 and "SENTINEL" not in free_text.text
    assert [e["pointer"] for e in free_text.json()["errors"]] == ["/physician_request_ref"]
    by_site = client.post(f"{base}/out-of-specification-file", json=REFS, headers=CENTER)
    assert by_site.status_code == 403, "a coordinator records the file"

    partial = client.post(
        f"{base}/out-of-specification-file",
        json={k: REFS[k] for k in ("physician_request_ref", "risk_assessment_ref")},
        headers=HTTP_COORDINATOR,
    )
    assert partial.status_code == 200, partial.text
    assert (partial.json()["missing"], partial.json()["complete"]) == (["patient_consent", "ind"], False)
    complete = client.post(f"{base}/out-of-specification-file", json=REFS, headers=HTTP_COORDINATOR)
    assert complete.status_code == 200 and complete.json()["complete"] is True, complete.text
    read = client.get(f"{base}/out-of-specification-file", headers=CENTER)
    assert read.status_code == 200 and read.json()["ind_ref"] == REFS["ind_ref"]
    again = client.post(f"{base}/out-of-specification-file", json=REFS, headers=HTTP_COORDINATOR)
    assert again.status_code == 409
