"""An EHR orders in FHIR R4 (issue 19), on SQLite and PostgreSQL over HTTP without the broker: a
`ServiceRequest` alone or in a transaction `Bundle` becomes the order `POST /orders` would place — the
same checks, the same events — answered with the ServiceRequest and its COI identifier, or an
`OperationOutcome` listing every failed check; the order's status reads as the ServiceRequest's, and its
Patient resolves without a byte of the patient's identity."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.events import CancellationReasonCode
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from sqlalchemy.engine import Engine

from services.common import fhir
from services.common.edge import api_routes
from services.common.unit_of_work import session_factory
from services.order_intake import commands, fhir_api
from tests.support.fhir_orders import a_service_request, a_transaction
from tests.support.orders import COORDINATOR, order_database, order_intake_client, outbox, start_afresh

COORD = {"Authorization": "Bearer dev-coordinator-token", "Content-Type": fhir.FHIR_JSON}
CENTER = {"Authorization": "Bearer dev-center-token", "Content-Type": fhir.FHIR_JSON}
"""The development treatment-center token is TC-BOSTON's desk."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with order_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        yield engine


@pytest.fixture
def engine(database: Engine) -> Engine:
    return start_afresh(database)


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[Any]:
    with order_intake_client(engine, tmp_path) as client:
        yield client


def issues(answer: Any) -> list[tuple[str, list[str] | None]]:
    """(code, expression) of each issue of the answer, an OperationOutcome."""
    OperationOutcome.model_validate(answer.json())
    return [(issue["code"], issue.get("expression")) for issue in answer.json()["issue"]]


def test_a_service_request_is_placed_as_the_order_and_answered_with_its_coi(
    engine: Engine, client: Any
) -> None:
    answer = client.post("/fhir/ServiceRequest", json=a_service_request(), headers=CENTER)

    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"] == fhir.FHIR_JSON
    created = ServiceRequest.model_validate(answer.json())
    assert created.status == "active"
    [coi] = [i.value for i in created.identifier or [] if i.system == fhir.COI_SYSTEM]
    assert answer.headers["location"].endswith(f"/fhir/ServiceRequest/{created.id}/_history/2")
    assert [kind for kind, _ in outbox(engine, coi)] == ["order.accepted.v2"]
    read = client.get(f"/fhir/ServiceRequest/{created.id}", headers=CENTER)
    assert read.json() == answer.json()
    assert read.headers["etag"] == 'W/"2"'
    assert (
        client.get(
            f"/fhir/ServiceRequest/{created.id}", headers={**CENTER, "If-None-Match": 'W/"2"'}
        ).status_code
        == 304
    )


def test_a_transaction_bundle_orders_the_case_with_its_patient_as_an_entry(
    engine: Engine, client: Any
) -> None:
    answer = client.post("/fhir", json=a_transaction(a_service_request()), headers=COORD)

    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction-response"
    [ordered, patient] = bundle["entry"]
    assert ordered["response"]["status"] == "201 Created"
    assert ordered["resource"]["status"] == "active"
    [coi] = [i["value"] for i in ordered["resource"]["identifier"] if i["system"] == fhir.COI_SYSTEM]
    assert [kind for kind, _ in outbox(engine, coi)] == ["order.accepted.v2"]
    assert patient["response"]["location"] == ordered["resource"]["subject"]["reference"]


def test_the_patient_resolves_to_the_pseudonymous_reference_alone(client: Any) -> None:
    posted = a_service_request()
    created = client.post("/fhir/ServiceRequest", json=posted, headers=CENTER).json()

    answer = client.get(f"/fhir/{created['subject']['reference']}", headers=CENTER)

    assert answer.status_code == 200
    patient = answer.json()
    assert set(patient) == {"resourceType", "id", "meta", "identifier"}
    assert "Doe" not in answer.text and "2019-04-02" not in answer.text and "MRN-" not in answer.text
    missing = client.get("/fhir/Patient/PSN-NOBODY", headers=CENTER)
    assert missing.status_code == 404 and issues(missing) == [("not-found", None)]


def test_every_missing_element_is_one_issue_naming_where_it_belongs(engine: Engine, client: Any) -> None:
    posted = a_service_request()
    patient = posted["contained"][0]
    del patient["birthDate"], patient["name"]
    del posted["code"], posted["performer"], posted["requester"]

    answer = client.post("/fhir/ServiceRequest", json=posted, headers=COORD)

    assert answer.status_code == 422
    assert issues(answer) == [
        ("invalid", ["contained[0].name"]),
        ("invalid", ["contained[0].birthDate"]),
        ("invalid", ["code"]),
        ("invalid", ["performer"]),
        ("invalid", ["requester"]),
    ]
    assert "MRN-" not in answer.text and outbox(engine) == []


def test_a_resource_that_is_not_valid_fhir_is_refused_naming_the_element(engine: Engine, client: Any) -> None:
    posted = a_service_request()
    posted["contained"][0]["birthDate"] = "the second of April"
    posted["status"] = 7

    answer = client.post("/fhir/ServiceRequest", json=posted, headers=COORD)

    assert answer.status_code == 422
    expressions = sorted(e for _, where in issues(answer) for e in where or [])
    assert expressions == ["contained[0].birthDate", "status"]
    assert "second of April" not in answer.text and outbox(engine) == []


def test_an_order_failing_its_checks_is_recorded_rejected_and_every_check_listed(
    engine: Engine, client: Any
) -> None:
    answer = client.post(
        "/fhir/ServiceRequest", json=a_service_request(consent=False, eligible=False), headers=COORD
    )

    assert answer.status_code == 422
    rules = sorted(
        i["diagnostics"].split(":")[0] for i in answer.json()["issue"] if i["code"] == "business-rule"
    )
    assert rules == ["consent_missing", "eligibility_not_attested"]
    [(kind, data)] = outbox(engine)
    assert kind == "order.rejected.v2"
    rejected = client.get(f"/fhir/ServiceRequest/{data['order_id']}", headers=COORD).json()
    assert rejected["status"] == "revoked" and "identifier" not in rejected


def test_a_second_active_order_for_the_patient_is_a_conflict(client: Any) -> None:
    posted = a_service_request()
    assert client.post("/fhir/ServiceRequest", json=posted, headers=COORD).status_code == 201
    again = copy.deepcopy(posted)
    again["contained"][0]["identifier"][0]["value"] = "PSN-SPELT-OTHERWISE"

    answer = client.post("/fhir/ServiceRequest", json=again, headers=COORD)

    assert answer.status_code == 409
    assert [code for code, _ in issues(answer)] == ["conflict"]


def test_a_treatment_center_orders_only_for_its_own_site(engine: Engine, client: Any) -> None:
    answer = client.post("/fhir/ServiceRequest", json=a_service_request(site="TC-SEATTLE"), headers=CENTER)

    assert answer.status_code == 403
    assert issues(answer) == [("forbidden", None)]
    assert outbox(engine) == []


def test_the_service_requests_status_follows_the_order(engine: Engine, client: Any) -> None:
    created = client.post("/fhir/ServiceRequest", json=a_service_request(), headers=COORD).json()
    with session_factory(engine)() as session:
        commands.cancel_order(
            session,
            uuid.UUID(created["id"]),
            CancellationReasonCode.PATIENT_WITHDREW,
            None,
            COORDINATOR,
            "test",
        )
        session.commit()

    read = client.get(f"/fhir/ServiceRequest/{created['id']}", headers=COORD)

    assert read.json()["status"] == "revoked"
    assert read.headers["etag"] == 'W/"3"'
    coi = created["identifier"][0]["value"]
    found = client.get(
        "/fhir/ServiceRequest", params={"identifier": f"{fhir.COI_SYSTEM}|{coi}"}, headers=COORD
    )
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [created["id"]]


def test_the_capability_statement_lists_exactly_what_is_served(client: Any) -> None:
    statement = client.get("/fhir/metadata").json()

    assert statement["resourceType"] == "CapabilityStatement"
    assert [r["type"] for r in statement["rest"][0]["resource"]] == ["ServiceRequest", "Patient"]
    assert fhir.undeclared_routes(
        api_routes(client.app.routes), fhir_api.RESOURCES, fhir_api.SYSTEM_INTERACTIONS
    ) == (
        set(),
        set(),
    )
