"""The EPCIS 2.0 REST binding's capture rules (`services/coi_tracking/epcis_binding.py`): versions, limits,
the JSON-LD forms of the simplified context, and the capture job's errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.coi_tracking import epcis, epcis_binding
from services.coi_tracking.epcis_binding import Refusal
from tests.e2e.test_epcis_capture import epcis_document, object_event
from tests.unit.test_epcis import COI

VALIDATOR = epcis.default_validator()


@pytest.mark.parametrize("value", [None, "2", "2.0", "2.0.0", "2.0.0.0"])
def test_any_spelling_of_2_0_0_is_spoken(value: str | None) -> None:
    assert epcis_binding.version_refusal("GS1-EPCIS-Version", value, "2.0.0") is None


def test_another_version_is_not_acceptable_and_a_non_version_is_invalid() -> None:
    assert epcis_binding.version_refusal("GS1-CBV-Version", "1.2.0", "2.0.0") == Refusal(
        406,
        "epcisException:NotAcceptableException",
        "GS1-CBV-Version",
        "only GS1-CBV-Version 2.0.0 is supported",
    )
    assert epcis_binding.version_refusal("GS1-CBV-Version", "2.0.1", "2.0.0") is not None
    for value in ("two", "2.0.", "v2", "2" * 40):
        refusal = epcis_binding.version_refusal("GS1-EPCIS-Version", value, "2.0.0")
        assert refusal is not None and (refusal.status, refusal.type) == (
            400,
            "epcisException:ValidationException",
        )


def test_the_event_limit_counts_the_event_list_and_a_single_event() -> None:
    limit = epcis_binding.MAX_CAPTURE_EVENTS
    assert limit == 10_000
    at_limit = epcis_document(*[{}] * limit)
    assert epcis_binding.capture_limit_refusal(at_limit) is None
    over = copy.deepcopy(at_limit)
    over["epcisBody"]["event"] = {}
    refusal = epcis_binding.capture_limit_refusal(over)
    assert refusal == Refusal(
        413,
        "epcisException:CaptureLimitExceededException",
        "epcisBody/eventList",
        "at most 10000 events per capture (10001 sent): split the document",
    )
    assert epcis_binding.capture_limit_refusal([]) is None


def test_type_may_be_spelt_at_type_on_the_document_and_its_events_and_the_input_is_kept() -> None:
    event = object_event("shipping", [COI])
    event["@type"] = event.pop("type")
    document: dict[str, Any] = epcis_document(event)
    document["@type"] = document.pop("type")
    document["id"] = "_:document1"
    before = copy.deepcopy(document)
    read, problems = epcis_binding.jsonld_forms(document)
    assert document == before and problems == []
    assert isinstance(read, dict)
    assert read["type"] == "EPCISDocument" and "@type" not in read and "id" not in read
    assert read["epcisBody"]["eventList"][0]["type"] == "ObjectEvent"
    assert epcis.validate_document(read, VALIDATOR) == []
    assert epcis.validate_document(document, VALIDATOR) != []  # the schema alone refuses both forms


def test_both_type_and_at_type_collide_and_are_reported_once() -> None:
    event = object_event("shipping", [COI]) | {"@type": "ObjectEvent"}
    read, problems = epcis_binding.jsonld_forms(epcis_document(event))
    assert problems == [
        "$.epcisBody.eventList[0].@type: both type and @type: the EPCIS context makes type an alias of @type"
    ]
    assert epcis.validate_document(read, VALIDATOR) == []


@pytest.mark.parametrize("doc_id", ["_: document1", "_:", "document 1", "_:" + "a" * 300])
def test_a_document_id_that_is_neither_a_blank_node_nor_a_uri_stays_refused(doc_id: str) -> None:
    read, _ = epcis_binding.jsonld_forms(epcis_document() | {"id": doc_id})
    assert [line.split(":")[0] for line in epcis.validate_document(read, VALIDATOR)] == ["$.id"]


def test_an_event_id_that_is_a_blank_node_stays_refused() -> None:
    event = object_event("shipping", [COI]) | {"eventID": "_:event1"}
    read, _ = epcis_binding.jsonld_forms(epcis_document(event))
    assert [line.split(": ")[0] for line in epcis.validate_document(read, VALIDATOR)] == [
        "$.epcisBody.eventList[0].eventID"
    ]


def test_the_job_errors_are_one_problem_per_refused_event() -> None:
    events: list[dict[str, Any]] = [
        {"event_index": 0, "event_id": "urn:uuid:a", "outcome": "not_applied", "reason": "rollback"},
        {"event_index": 1, "event_id": None, "outcome": "refused", "reason": "names nothing of ours"},
        {"event_index": 2, "event_id": "urn:uuid:c", "outcome": "duplicate", "reason": None},
    ]
    assert epcis_binding.job_errors(events) == [
        {
            "type": "urn:cgt:problem:epcis-event-refused",
            "title": "An EPCIS event was refused",
            "status": 422,
            "detail": "names nothing of ours",
            "eventIndex": 1,
            "eventID": None,
        }
    ]
    assert [e["type"] for e in epcis_binding.job_errors([])] == ["urn:cgt:problem:epcis-no-events"]


def test_the_headers_name_the_versions_and_the_limits() -> None:
    assert epcis_binding.response_headers() == {"GS1-EPCIS-Version": "2.0.0", "GS1-CBV-Version": "2.0.0"}
    assert epcis_binding.limit_headers() == {
        "GS1-EPCIS-Capture-Limit": "10000",
        "GS1-EPCIS-Capture-File-Size-Limit": "2000000",
    }
