"""A product released out of specification in scheduling, without the broker (SQLite and PostgreSQL):
every way a case is booked (HTTP booking, a plan, a confirmation on delivery) waits for its file; a
tentative appointment booked before the release is held and resumed when the file completes; the
appointment's view, webhooks and FHIR form carry the flag."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.envelope import EventEnvelope
from cgt_contracts.events import (
    OosDocument,
    OosFileCompleted,
    OosFileCompletedData,
    OrderAccepted,
    OrderAcceptedData,
    OutOfSpecificationCode,
    ProductReleasedForShipment,
    ProductReleasedForShipmentData,
    ProductReleasedForShipmentDataV2,
    ProductReleasedForShipmentV2,
    QaDispositionDataV2,
    QaReasonCode,
    QuarantineReasonCode,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentLeg,
    ShipmentQuarantinedDataV2,
    ShipmentQuarantinedV2,
    ShipmentReleasedV2,
)
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.identifiers import SEQUENCE_CAPACITY, coi_identifier
from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import fhir, handlers
from services.scheduling.domain import AppointmentState
from services.scheduling.models import TABLES, Appointment, WebhookDelivery, WebhookEndpoint
from services.scheduling.runtime import seed
from tests.support.apps import scheduling_client
from tests.support.infra import database

SITE = "TC-BOSTON"
TOKENS = {"tokens": {"coordinator": {"subject": "coord-ana", "role": "coordinator"}}}
COORDINATOR = {"Authorization": "Bearer coordinator"}
CONFIG = handlers.Config(receipt_buffer_hours=24)
REQUIRED = [
    OosDocument.PHYSICIAN_REQUEST,
    OosDocument.PATIENT_CONSENT,
    OosDocument.RISK_ASSESSMENT,
    OosDocument.IND,
]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        seed(engine)  # TC-BOSTON, its own collection center; WASKYRA made at MFG-AGC-MILAN
        with session_factory(engine)() as session:
            session.add(
                WebhookEndpoint(treatment_center_id=SITE, url="http://127.0.0.1:9/site", secret="s" * 32)
            )
            session.commit()
        yield engine


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with scheduling_client(engine, tmp_path, TOKENS) as client:  # never started: no broker
        yield client


class Patient:
    """One case's events, as order intake and COI tracking publish them."""

    def __init__(self) -> None:
        self.coi = coi_identifier("W4321", 2026, uuid.uuid4().int % SEQUENCE_CAPACITY)
        self.order_id = uuid.uuid4()
        self.shipment_id = uuid.uuid4()

    def _head(self) -> dict[str, Any]:
        return {"source": "cgt/test", "subject": self.coi, "correlationid": f"test-{self.coi}"}

    def _about(self) -> dict[str, Any]:
        return {"shipment_id": self.shipment_id, "coi": self.coi, "treatment_center_id": SITE}

    def accepted(self) -> OrderAccepted:
        data = OrderAcceptedData(
            order_id=self.order_id,
            coi=self.coi,
            patient_ref="PSN-OOS",
            therapy_code="WASKYRA",
            treatment_center_id=SITE,
            storage_limit_celsius=-150.0,
            conditioning_days=4,
            accepted_at=datetime.now(UTC),
        )
        return OrderAccepted(**self._head(), data=data)

    def _release(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "coi": self.coi,
            "lot_number": "LOT-OOS-1",
            "released_at": datetime.now(UTC),
            "released_by": "coord-ana",
        }

    def released_oos(self) -> ProductReleasedForShipmentV2:
        data = ProductReleasedForShipmentDataV2(
            **self._release(),
            out_of_specification=True,
            out_of_specification_code=OutOfSpecificationCode.CELL_DOSE,
            oos_documents_required=REQUIRED,
        )
        return ProductReleasedForShipmentV2(**self._head(), data=data)

    def released_v1(self) -> ProductReleasedForShipment:
        return ProductReleasedForShipment(
            **self._head(), data=ProductReleasedForShipmentData(**self._release())
        )

    def file_completed(self) -> OosFileCompleted:
        data = OosFileCompletedData(
            order_id=self.order_id,
            coi=self.coi,
            lot_number="LOT-OOS-1",
            documents=REQUIRED,
            completed_at=datetime.now(UTC),
            completed_by="coord-ana",
        )
        return OosFileCompleted(**self._head(), data=data)

    def dispatched(self) -> ShipmentDispatched:
        eta = datetime.now(UTC) + timedelta(days=2)
        data = ShipmentDispatchedData(**self._about(), dispatched_at=datetime.now(UTC), eta_at=eta)
        return ShipmentDispatched(**self._head(), data=data)

    def delivered(self) -> ShipmentDelivered:
        data = ShipmentDeliveredData(
            **self._about(),
            delivered_at=datetime.now(UTC),
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=-180.0,
        )
        return ShipmentDelivered(**self._head(), data=data)

    def quarantined(self) -> ShipmentQuarantinedV2:
        data = ShipmentQuarantinedDataV2(
            **self._about(),
            leg=ShipmentLeg.RETURN,
            reason_codes=[QuarantineReasonCode.TEMPERATURE_EXCURSION],
            quarantined_at=datetime.now(UTC),
        )
        return ShipmentQuarantinedV2(**self._head(), data=data)

    def qa_released(self) -> ShipmentReleasedV2:
        data = QaDispositionDataV2(
            **self._about(),
            leg=ShipmentLeg.RETURN,
            disposition_id=uuid.uuid4(),
            signer_id="qa-jr",
            signer_printed_name="J. Rivera (QA)",
            signed_at=datetime.now(UTC),
            meaning="approval",
            reason_code=QaReasonCode.PRODUCT_WITHIN_LIMITS,
            ledger_sequence=3,
        )
        return ShipmentReleasedV2(**self._head(), data=data)


def apply(engine: Engine, *events: EventEnvelope) -> None:
    """Each event in a transaction of its own, as the consumer applies it."""
    for event in events:
        with session_factory(engine)() as session:
            handlers.handle(session, event, CONFIG)  # type: ignore[arg-type]
            session.commit()


def published(engine: Engine, coi: str, event_type: str) -> list[dict[str, Any]]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(OutboxMessage)
            .where(OutboxMessage.key == coi)
            .where(OutboxMessage.event_type == event_type)
            .order_by(col(OutboxMessage.id))
        ).all()
        return [json.loads(row.payload)["data"] for row in rows]


def webhooks(engine: Engine, coi: str) -> list[dict[str, Any]]:
    with session_factory(engine)() as session:
        rows = session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.coi == coi)
            .order_by(col(WebhookDelivery.created_at))
        ).all()
        return [json.loads(row.payload) for row in rows]


def the_appointment(engine: Engine, coi: str) -> Appointment:
    with session_factory(engine)() as session:
        return session.exec(select(Appointment).where(Appointment.coi == coi)).one()


def book_first_option(client: TestClient, coi: str) -> Any:
    option = client.get(f"/cases/{coi}", headers=COORDINATOR).json()["options"][0]["option_id"]
    return client.post(f"/cases/{coi}/bookings", json={"option_id": option}, headers=COORDINATOR)


def test_a_product_out_of_specification_is_booked_only_once_its_file_is_complete(
    engine: Engine, client: TestClient
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.released_oos(), patient.dispatched())
    case = client.get(f"/cases/{patient.coi}", headers=COORDINATOR).json()
    assert case["out_of_specification"] is True and case["oos_file_complete"] is False

    refused = book_first_option(client, patient.coi)
    assert refused.status_code == 409, refused.text
    [reason] = refused.json()["reasons"]
    assert "cell_dose" in reason and "physician_request, patient_consent, risk_assessment, ind" in reason
    with session_factory(engine)() as session:
        assert session.exec(select(Appointment).where(Appointment.coi == patient.coi)).first() is None

    apply(engine, patient.file_completed())
    booked = book_first_option(client, patient.coi)
    assert booked.status_code == 201, booked.text
    assert booked.json()["state"] == "tentative" and booked.json()["out_of_specification"] is True
    apply(engine, patient.delivered())
    appointment = the_appointment(engine, patient.coi)
    assert appointment.state is AppointmentState.CONFIRMED
    read = client.get(f"/appointments/{appointment.id}", headers=COORDINATOR).json()
    assert read["out_of_specification"] is True
    hooks = webhooks(engine, patient.coi)
    assert [h["kind"] for h in hooks] == ["slot.proposed", "slot.confirmed"]
    assert all(h["out_of_specification"] is True for h in hooks)
    resource = client.get(f"/fhir/Appointment/{appointment.id}", headers=COORDINATOR).json()
    assert resource["status"] == "booked"
    assert fhir.OUT_OF_SPECIFICATION_TAG in resource["meta"]["tag"]


def test_a_plan_made_after_the_release_is_not_booked_until_the_file_is_complete(
    engine: Engine, client: TestClient
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.released_oos())
    [plan] = client.post(f"/cases/{patient.coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    refused = client.post(f"/cases/{patient.coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)
    assert refused.status_code == 409, refused.text
    [reason] = refused.json()["reasons"]
    assert "out of specification (cell_dose)" in reason, reason
    apply(engine, patient.file_completed())
    booked = client.post(f"/cases/{patient.coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text
    assert the_appointment(engine, patient.coi).out_of_specification is True


def test_an_appointment_booked_before_the_release_is_held_through_delivery_and_resumed_by_the_file(
    engine: Engine, client: TestClient
) -> None:
    patient = Patient()
    apply(engine, patient.accepted())
    [plan] = client.post(f"/cases/{patient.coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    booked = client.post(f"/cases/{patient.coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text

    apply(engine, patient.released_oos())
    held = the_appointment(engine, patient.coi)
    assert (held.state, held.hold_cause, held.out_of_specification) == (
        AppointmentState.ON_HOLD,
        "out_of_specification",
        True,
    )
    assert [e["reason_code"] for e in published(engine, patient.coi, "slot.held.v2")] == [
        "out_of_specification"
    ]
    fhir_held = client.get(f"/fhir/Appointment/{held.id}", headers=COORDINATOR).json()
    assert fhir_held["status"] == "pending" and fhir.OUT_OF_SPECIFICATION_TAG in fhir_held["meta"]["tag"]
    hold = {e["url"]: e["valueCodeableConcept"] for e in fhir_held["extension"]}[fhir.HOLD_EXTENSION]
    assert hold["coding"][0]["code"] == "out_of_specification"

    # A quarantine and its QA release, a clean delivery: none lifts the hold while the file is pending.
    apply(engine, patient.dispatched(), patient.quarantined(), patient.qa_released(), patient.delivered())
    assert the_appointment(engine, patient.coi).state is AppointmentState.ON_HOLD
    assert published(engine, patient.coi, "slot.resumed.v2") == []
    assert published(engine, patient.coi, "slot.confirmed.v1") == []

    apply(engine, patient.file_completed())
    assert the_appointment(engine, patient.coi).state is AppointmentState.CONFIRMED
    assert [e["reason_code"] for e in published(engine, patient.coi, "slot.resumed.v2")] == [
        "oos_file_complete"
    ]
    kinds = [(h["kind"], h["reason_code"], h["out_of_specification"]) for h in webhooks(engine, patient.coi)]
    assert kinds[0] == ("slot.proposed", None, False), "booked before the release: not flagged yet"
    assert kinds[1:] == [
        ("slot.held", "out_of_specification", True),
        ("slot.resumed", "oos_file_complete", True),
        ("slot.confirmed", None, True),
    ]
    apply(engine, patient.file_completed())  # redelivered in effect: nothing more
    assert len(published(engine, patient.coi, "slot.confirmed.v1")) == 1


def test_a_release_in_specification_or_a_v1_holds_nothing_and_flags_nothing(
    engine: Engine, client: TestClient
) -> None:
    patient = Patient()
    apply(engine, patient.accepted(), patient.released_v1(), patient.dispatched())
    booked = book_first_option(client, patient.coi)
    assert booked.status_code == 201, booked.text
    apply(engine, patient.delivered())
    appointment = the_appointment(engine, patient.coi)
    assert appointment.state is AppointmentState.CONFIRMED and not appointment.out_of_specification
    resource = client.get(f"/fhir/Appointment/{appointment.id}", headers=COORDINATOR).json()
    assert "tag" not in resource["meta"]
    assert [(h["kind"], h["out_of_specification"]) for h in webhooks(engine, patient.coi)] == [
        ("slot.proposed", False),
        ("slot.confirmed", False),
    ]
