"""EPCIS 2.0 capture as GS1's REST binding has it, on the real broker and database: the capture job's shape,
the GS1 version headers, OPTIONS discovery, the capture limits, the binding's exception types, and the JSON-LD
forms the standard's simplified context allows."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog
from tests.e2e.conftest import COURIER, OTHER_COURIER, RunningStack
from tests.e2e.journey import place_released_order, shipment_for
from tests.e2e.test_epcis_capture import epcis_document, object_event

pytestmark = pytest.mark.e2e
STANDARD_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
VERSIONS = {"gs1-epcis-version": "2.0.0", "gs1-cbv-version": "2.0.0"}
MAX_BYTES, MAX_EVENTS = 2_000_000, 10_000
LIMITS = {"gs1-epcis-capture-limit": "10000", "gs1-epcis-capture-file-size-limit": "2000000"}


async def post(
    http: httpx.AsyncClient, stack: RunningStack, body: bytes | dict[str, Any], **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(
        f"{stack.tracking}/capture",
        content=content,
        headers={**COURIER, "Content-Type": "application/ld+json", **headers},
    )


def headers_of(response: httpx.Response, names: dict[str, str]) -> dict[str, str | None]:
    return {name: response.headers.get(name) for name in names}


async def test_the_capture_job_answers_in_the_bindings_shape_with_the_version_headers(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    await shipment_for(http, stack, events, order["coi"])
    accepted = await post(http, stack, epcis_document(object_event("shipping", [order["coi"]])))
    assert accepted.status_code == 202, accepted.text
    assert headers_of(accepted, VERSIONS) == VERSIONS
    job = accepted.json()
    assert accepted.headers["Location"] == f"/capture/{job['captureID']}"
    assert {k: job[k] for k in ("running", "success", "captureErrorBehaviour", "errors")} == {
        "running": False,
        "success": True,
        "captureErrorBehaviour": "rollback",
        "errors": [],
    }
    created, finished = datetime.fromisoformat(job["createdAt"]), datetime.fromisoformat(job["finishedAt"])
    assert created.utcoffset() is not None and created <= finished
    assert [e["outcome"] for e in job["events"]] == ["applied"]
    polled = await http.get(f"{stack.tracking}{accepted.headers['Location']}", headers=COURIER)
    assert polled.status_code == 200 and polled.json() == job
    assert headers_of(polled, VERSIONS) == VERSIONS

    good = object_event("departing", [order["coi"]])
    bad = object_event("destroying", [order["coi"]])
    refused = (await post(http, stack, epcis_document(good, bad))).json()
    reason = refused["events"][1]["reason"]
    assert refused["success"] is False and reason
    assert refused["errors"] == [
        {
            "type": "urn:cgt:problem:epcis-event-refused",
            "title": "An EPCIS event was refused",
            "status": 422,
            "detail": reason,
            "eventIndex": 1,
            "eventID": bad["eventID"],
        }
    ]
    empty = (await post(http, stack, epcis_document(), **{"GS1-Capture-Error-Behaviour": "proceed"})).json()
    assert (empty["success"], empty["captureErrorBehaviour"]) == (False, "proceed")
    assert [(e["type"], e["detail"]) for e in empty["errors"]] == [
        ("urn:cgt:problem:epcis-no-events", "the document has no events")
    ]


async def test_a_request_naming_another_epcis_or_cbv_version_is_refused(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    document = epcis_document()
    spelt = await post(http, stack, document, **{"GS1-EPCIS-Version": "2.0", "GS1-CBV-Version": "2.0.0"})
    assert spelt.status_code == 202, spelt.text
    cases = [
        ("GS1-EPCIS-Version", "1.2.0", 406, "epcisException:NotAcceptableException"),
        ("GS1-CBV-Version", "3.0.0", 406, "epcisException:NotAcceptableException"),
        ("GS1-EPCIS-Version", "two", 400, "epcisException:ValidationException"),
    ]
    for header, value, status, kind in cases:
        refused = await post(http, stack, document, **{header: value})
        assert refused.status_code == status, (header, value, refused.text)
        problem = refused.json()
        assert refused.headers["content-type"] == "application/problem+json"
        assert (problem["type"], problem["status"]) == (kind, status)
        assert [(e["location"], e["pointer"]) for e in problem["errors"]] == [("header", f"/{header}")]
        assert value not in refused.text
        assert headers_of(refused, VERSIONS) == VERSIONS


async def test_options_answers_what_capture_supports_and_its_limits(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    discovery = await http.options(f"{stack.tracking}/capture", headers=COURIER)
    assert discovery.status_code == 204, discovery.text
    assert discovery.headers["Allow"] == "OPTIONS, POST"
    assert headers_of(discovery, VERSIONS | LIMITS) == VERSIONS | LIMITS
    assert discovery.headers["GS1-Capture-Error-Behaviour"] == "all"
    assert discovery.content == b""

    job = (await post(http, stack, epcis_document())).json()
    about = await http.options(f"{stack.tracking}/capture/{job['captureID']}", headers=COURIER)
    assert about.status_code == 204 and about.headers["Allow"] == "OPTIONS, GET"
    assert headers_of(about, VERSIONS) == VERSIONS
    other = await http.options(f"{stack.tracking}/capture/{job['captureID']}", headers=OTHER_COURIER)
    missing = await http.options(f"{stack.tracking}/capture/{uuid.uuid4()}", headers=COURIER)
    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json()["detail"] == missing.json()["detail"]


async def test_the_capture_limits_are_enforced_with_the_bindings_exceptions(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    too_big = await post(http, stack, b" " * (MAX_BYTES + 1))
    assert too_big.status_code == 413
    assert too_big.json()["type"] == "epcisException:CaptureLimitExceededException"
    assert headers_of(too_big, LIMITS) == LIMITS

    many = epcis_document(*[{} for _ in range(MAX_EVENTS + 1)])
    too_many = await post(http, stack, many)
    assert too_many.status_code == 413, too_many.text
    problem = too_many.json()
    assert problem["type"] == "epcisException:CaptureLimitExceededException"
    assert [e["pointer"] for e in problem["errors"]] == ["/epcisBody/eventList"]
    assert headers_of(too_many, LIMITS) == LIMITS

    invalid = epcis_document(object_event("shipping", ["CHW4321260000014"]) | {"eventTime": "yesterday"})
    schema = await post(http, stack, invalid)
    assert (schema.status_code, schema.json()["type"]) == (400, "epcisException:ValidationException")
    media = await post(http, stack, epcis_document(), **{"Content-Type": "text/plain"})
    assert (media.status_code, media.json()["type"]) == (415, "epcisException:UnsupportedMediaTypeException")


async def test_the_simplified_context_forms_the_standard_allows_are_captured(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    pick_up = object_event("shipping", [order["coi"]])
    pick_up["@type"] = pick_up.pop("type")
    pick_up["example:courierNote"] = "packed at dock 4"
    document = epcis_document(pick_up)
    document["@context"] = [STANDARD_CONTEXT, {"example": "http://ns.example.com/epcis/"}]
    document["id"] = "_:document1"
    document["@type"] = document.pop("type")
    captured = await post(http, stack, document)
    assert captured.status_code == 202, captured.text
    [result] = captured.json()["events"]
    assert (result["outcome"], result["shipment_id"]) == ("applied", shipment["id"])
    assert result["scan"]["shipment_status"] == "dispatched"

    delivery = epcis_document(object_event("receiving", [order["coi"]]))
    delivery["@context"] = STANDARD_CONTEXT
    plain = await post(http, stack, delivery, **{"Content-Type": "application/json"})
    assert plain.status_code == 202, plain.text
    assert plain.json()["events"][0]["scan"]["shipment_status"] == "delivered"


async def test_forms_outside_the_standard_stay_refused_naming_the_field(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    both = object_event("shipping", ["CHW4321260000014"]) | {"@type": "ObjectEvent"}
    blank_event = object_event("shipping", ["CHW4321260000014"]) | {"eventID": "_:event1"}
    not_a_blank_node = epcis_document() | {"id": "_: document 1"}
    cases = [
        (epcis_document(both), "/epcisBody/eventList/0/@type"),
        (epcis_document(blank_event), "/epcisBody/eventList/0/eventID"),
        (not_a_blank_node, "/id"),
    ]
    for document, pointer in cases:
        refused = await post(http, stack, document)
        assert refused.status_code == 400, (pointer, refused.text)
        assert [e["pointer"] for e in refused.json()["errors"]] == [pointer]
