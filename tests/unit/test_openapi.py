"""Each service's OpenAPI is one a client can be generated from and a caller can read: every operation has
a summary and a description in the caller's words, examples of its request and answers (valid against the
models the service itself validates with), every error as an RFC 9457 problem, and no internal notes.

The apps are built in-process and never started: no broker, no server, a throwaway SQLite file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, get_args, get_origin

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter

from services.coi_tracking import epcis
from services.common.edge import api_routes
from tests.support.apps import SERVICES, every_app

BODY_METHODS = ("post", "put", "patch")
INTERNAL = re.compile(
    r"scan_writer|\bcommands?\.|\bhandlers\.|\bdomain\.|\bmodels\.|\bservices\.|\.py\b|SQLite|PostgreSQL"
    r"|\block(s|ed|ing)?\b|mutex|thread|µs|\bbatching\b|\bbatched\b|committed together|flush|outbox"
    r"|\bsession\b|\brow\b|perf(ormance)?\b",
    re.IGNORECASE,
)
"""What a caller has no use for: module and function names, storage, concurrency, performance."""


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FastAPI]]:
    """Each service's app as its module builds it, from an environment of the test's own."""
    with every_app(tmp_path_factory.mktemp("openapi")) as built:
        yield built


def operations(app: FastAPI) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = openapi["components"]["schemas"][name]
    return schema


def has_example(openapi: dict[str, Any], media: dict[str, Any]) -> bool:
    """On the media type, on its schema (through $ref), or on the items of an array schema."""
    if "example" in media or "examples" in media:
        return True
    schema = resolve(openapi, media.get("schema", {}))
    if schema.get("examples"):
        return True
    return schema.get("type") == "array" and bool(resolve(openapi, schema.get("items", {})).get("examples"))


def descriptions(document: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("summary", "description") and isinstance(value, str):
                yield f"{where}/{key}", value
            else:
                yield from descriptions(value, f"{where}/{key}")
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from descriptions(value, f"{where}/{index}")


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_has_a_summary_and_a_description_of_its_own(
    apps: dict[str, FastAPI], service: str
) -> None:
    app = apps[service]
    missing = [
        f"{sorted(route.methods or ())} {route.path}: {'summary' if not route.summary else 'description'}"
        for route in api_routes(app.routes)
        if route.include_in_schema and not (route.summary and route.description.strip())
    ]
    # FastAPI would make up a summary from the function's name: not one a caller reads.
    assert not missing, f"{len(missing)} without a summary or a description: {missing}"
    for name, operation in operations(app):
        assert operation.get("summary") and operation.get("description"), name


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_is_a_problem_document(apps: dict[str, FastAPI], service: str) -> None:
    """A problem document, or under a FHIR base the same problem as an OperationOutcome."""

    def media(name: str) -> list[str]:
        path = name.split(maxsplit=1)[1]
        fhir = path == "/fhir" or path.startswith("/fhir/")
        return ["application/fhir+json"] if fhir else ["application/problem+json"]

    wrong = [
        f"{name} {code}"
        for name, operation in operations(apps[service])
        for code, response in operation["responses"].items()
        if code[0] in "45" and list(response.get("content", {})) != media(name)
    ]
    assert not wrong


@pytest.mark.parametrize("service", SERVICES)
def test_every_authenticated_operation_documents_its_rate_limit(
    apps: dict[str, FastAPI], service: str
) -> None:
    authenticated = [(name, op) for name, op in operations(apps[service]) if op.get("security")]
    assert authenticated
    missing = [
        name
        for name, operation in authenticated
        if "Retry-After" not in operation["responses"].get("429", {}).get("headers", {})
    ]
    assert not missing


@pytest.mark.parametrize("service", SERVICES)
def test_every_body_and_every_success_has_an_example(apps: dict[str, FastAPI], service: str) -> None:
    openapi = apps[service].openapi()
    missing = []
    for name, operation in operations(apps[service]):
        if name.split()[0].lower() in BODY_METHODS:
            content = operation.get("requestBody", {}).get("content", {})
            if not content or not all(has_example(openapi, media) for media in content.values()):
                missing.append(f"{name} request")
        for code, response in operation["responses"].items():
            if code == "204":  # no content: what it answers is in its headers, each documented
                if response.get("content") or not response.get("headers"):
                    missing.append(f"{name} {code} headers")
            elif code.startswith("2"):
                content = response.get("content", {})
                if not content or not all(has_example(openapi, media) for media in content.values()):
                    missing.append(f"{name} {code}")
    assert not missing, f"{len(missing)} without an example: {missing}"


@pytest.mark.parametrize("service", SERVICES)
def test_no_internal_notes_in_the_documentation(apps: dict[str, FastAPI], service: str) -> None:
    leaks = [
        f"{where}: {INTERNAL.search(text).group(0)!r} in {text[:80]!r}"  # type: ignore[union-attr]
        for where, text in descriptions(apps[service].openapi())
        if INTERNAL.search(text)
    ]
    assert not leaks


def models_of(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation names (through list[...], X | None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    elif get_origin(annotation) is not None:
        for argument in get_args(annotation):
            yield from models_of(argument)


def nested_models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        for inner in models_of(field.annotation):
            if inner is not model:
                yield from nested_models(inner)


def examples_of(model: type[BaseModel]) -> list[Any]:
    return list(model.model_json_schema().get("examples", []))


@pytest.mark.parametrize("service", SERVICES)
def test_every_request_example_is_admitted_by_the_edge(apps: dict[str, FastAPI], service: str) -> None:
    """Validated as the edge does: pydantic's strict JSON mode, so an example is a body the service takes."""
    checked = 0
    for route in api_routes(apps[service].routes):
        if route.body_field is not None:
            model = route.body_field.field_info.annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            assert examples_of(model), f"{route.path}: {model.__name__} has no example"
            for example in examples_of(model):
                TypeAdapter(model).validate_json(json.dumps(example), strict=True)
                checked += 1
    assert checked


@pytest.mark.parametrize("service", SERVICES)
def test_every_response_example_is_a_valid_answer(apps: dict[str, FastAPI], service: str) -> None:
    checked = 0
    for route in api_routes(apps[service].routes):
        answered = [route.response_model] + [r.get("model") for r in route.responses.values()]
        for model in {m for answer in answered for top in models_of(answer) for m in nested_models(top)}:
            if model.__module__.startswith("services.common.problems"):
                continue
            for example in examples_of(model):
                model.model_validate_json(json.dumps(example))
                checked += 1
    assert checked


def test_the_capture_example_is_a_valid_epcis_document(apps: dict[str, FastAPI]) -> None:
    capture = apps["coi_tracking"].openapi()["paths"]["/capture"]["post"]["requestBody"]["content"]
    validator = epcis.load_validator()
    for media in capture.values():
        for example in media["schema"]["examples"]:
            assert epcis.validate_document(example, validator, limit=5) == []
            assert all(
                isinstance(o, epcis.CapturedEvent) and o.kind is epcis.EventKind.SCAN
                for o in epcis.interpret(example)
            )


def test_the_fhir_examples_are_valid_r4_resources() -> None:
    from fhir.resources.R4B import get_fhir_model_class

    from services.common import fhir
    from services.order_intake import fhir as order_views
    from services.scheduling import fhir as scheduling_views

    examples = [
        fhir.CAPABILITY_EXAMPLE,
        order_views.SERVICE_REQUEST_EXAMPLE,
        order_views.CREATED_EXAMPLE,
        order_views.PATIENT_EXAMPLE,
        order_views.TRANSACTION_EXAMPLE,
        order_views.TRANSACTION_RESPONSE_EXAMPLE,
        scheduling_views.APPOINTMENT_EXAMPLE,
        scheduling_views.SLOT_EXAMPLE,
        scheduling_views.SCHEDULE_EXAMPLE,
        scheduling_views.LOCATION_EXAMPLE,
        scheduling_views.PATIENT_EXAMPLE,
        fhir.searchset_example(scheduling_views.SLOT_EXAMPLE),
    ]
    for example in examples:
        get_fhir_model_class(example["resourceType"]).model_validate(example)
