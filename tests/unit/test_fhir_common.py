"""What every FHIR interface shares (`services/common/fhir.py`), on a small app: errors under `/fhir` as
`OperationOutcome` (elsewhere still problem documents), reads with `ETag`/`Last-Modified` and 304s,
the search rules for unknown parameters and `_count`, searchset Bundles with absolute URLs and paging
links, and the CapabilityStatement checked against the routes both ways."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from services.common import fhir, problems
from services.common.edge import api_routes
from services.common.problems import FieldError, ProblemError

PATIENT = {
    "resourceType": "Patient",
    "id": "PSN-1",
    "meta": {"versionId": "3", "lastUpdated": "2026-03-04T09:00:00+00:00"},
}
RESOURCES = (
    fhir.ResourceCapability(
        type="Patient",
        interactions=("read", "search-type"),
        documentation="pseudonymous patients",
        search_parameters=(fhir.SearchParameter("identifier", "token", "the reference"),),
    ),
)


def _app() -> FastAPI:
    app = FastAPI()
    problems.install_problem_handlers(app)

    @app.get("/fhir/metadata")
    def metadata(request: Request) -> Response:
        statement = fhir.capability_statement(request, service="test", resources=RESOURCES)
        return fhir.FhirJSONResponse(statement)

    @app.get("/fhir/Patient/{patient_id}")
    def read(patient_id: str, request: Request) -> Response:
        if patient_id != "PSN-1":
            raise ProblemError(404, "no such patient")
        return fhir.read_response(request, dict(PATIENT))

    @app.get("/fhir/Patient")
    def search(request: Request) -> Response:
        query = fhir.search_request(request, {"identifier"})
        bundle = fhir.searchset(request, "Patient", [PATIENT], query, total=1, next_cursor="abc")
        return fhir.FhirJSONResponse(bundle)

    @app.post("/orders")
    def refuse() -> None:
        raise ProblemError(
            422,
            "1 field failed validation",
            errors=[FieldError(pointer="/contained/0/birthDate", detail="a date")],
        )

    @app.post("/fhir/Patient")
    def refuse_fhir() -> None:
        raise ProblemError(
            422,
            "2 problems",
            errors=[
                FieldError(pointer="/contained/0/birthDate", detail="a date"),
                FieldError(location="query", pointer="/_count", detail="a number"),
            ],
            reasons=["the patient already has an active order"],
        )

    return app


APP = _app()
CLIENT = TestClient(APP, base_url="http://127.0.0.1:8001")


def test_an_error_under_the_fhir_base_is_an_operation_outcome_with_one_issue_per_check() -> None:
    answer = CLIENT.post("/fhir/Patient")
    assert answer.status_code == 422
    assert answer.headers["content-type"] == fhir.FHIR_JSON
    outcome = OperationOutcome.model_validate(answer.json())
    issues = [(i.code, i.expression, i.diagnostics) for i in outcome.issue]
    assert issues == [
        ("invalid", ["contained[0].birthDate"], "a date"),
        ("invalid", ["_count"], "a number"),
        ("business-rule", None, "the patient already has an active order"),
    ]


def test_an_error_elsewhere_is_still_a_problem_document() -> None:
    answer = CLIENT.post("/orders")
    assert answer.headers["content-type"] == problems.PROBLEM_MEDIA_TYPE
    assert answer.json()["errors"] == [
        {"location": "body", "pointer": "/contained/0/birthDate", "detail": "a date"}
    ]


def test_an_unknown_route_under_the_fhir_base_is_a_not_found_outcome() -> None:
    answer = CLIENT.get("/fhir/Patient/PSN-2")
    assert answer.status_code == 404
    assert [i["code"] for i in answer.json()["issue"]] == ["not-found"]


def test_a_read_carries_its_version_and_answers_304_when_the_caller_has_it() -> None:
    answer = CLIENT.get("/fhir/Patient/PSN-1")
    assert answer.status_code == 200
    assert answer.headers["etag"] == 'W/"3"'
    assert answer.headers["last-modified"] == "Wed, 04 Mar 2026 09:00:00 GMT"
    assert CLIENT.get("/fhir/Patient/PSN-1", headers={"If-None-Match": 'W/"3"'}).status_code == 304
    assert CLIENT.get("/fhir/Patient/PSN-1", headers={"If-None-Match": 'W/"2"'}).status_code == 200
    since = {"If-Modified-Since": "Wed, 04 Mar 2026 09:00:00 GMT"}
    assert CLIENT.get("/fhir/Patient/PSN-1", headers=since).status_code == 304
    earlier = {"If-Modified-Since": "Wed, 04 Mar 2026 08:59:59 GMT"}
    assert CLIENT.get("/fhir/Patient/PSN-1", headers=earlier).status_code == 200


def test_a_searchset_has_absolute_urls_paging_links_and_reports_what_it_ignored() -> None:
    answer = CLIENT.get("/fhir/Patient", params={"identifier": "x", "colour": "red", "_count": "500"})
    bundle = answer.json()
    Bundle.model_validate(bundle)
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links == {
        "self": "http://127.0.0.1:8001/fhir/Patient?identifier=x&_count=100",
        "next": "http://127.0.0.1:8001/fhir/Patient?identifier=x&_count=100&_cursor=abc",
    }
    entries = [(e.get("fullUrl"), e["search"]["mode"]) for e in bundle["entry"]]
    assert entries == [("http://127.0.0.1:8001/fhir/Patient/PSN-1", "match"), (None, "outcome")]
    assert bundle["entry"][1]["resource"]["issue"][0]["diagnostics"] == "parameters ignored: colour"


def test_an_unknown_parameter_is_refused_when_the_caller_asks_for_strict_handling() -> None:
    answer = CLIENT.get("/fhir/Patient", params={"colour": "red"}, headers={"Prefer": "handling=strict"})
    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert CLIENT.get("/fhir/Patient", params={"_count": "many"}).status_code == 422


def test_the_capability_statement_is_valid_and_lists_exactly_the_served_routes() -> None:
    statement: dict[str, Any] = CLIENT.get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    resource = statement["rest"][0]["resource"][0]
    assert [i["code"] for i in resource["interaction"]] == ["read", "search-type"]
    # the test app serves POST /fhir/Patient, which the statement does not promise
    assert fhir.undeclared_routes(api_routes(APP.routes), RESOURCES) == (
        {("POST", "/fhir/Patient")},
        set(),
    )


def test_an_element_named_by_an_empty_key_is_an_issue_without_an_expression() -> None:
    """A body key "" has no FHIRPath; an empty expression is not valid FHIR (it was a 500)."""
    problem = problems.Problem(
        title="invalid",
        status=422,
        detail="1 field failed validation",
        instance="c-1",
        errors=[FieldError(pointer="/", detail="a key must not be empty")],
    )
    outcome = fhir.operation_outcome(problem)
    assert outcome["issue"] == [
        {
            "severity": "error",
            "code": "invalid",
            "diagnostics": "a key must not be empty (correlation id c-1)",
        }
    ]
