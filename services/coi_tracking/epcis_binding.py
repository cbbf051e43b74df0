"""The EPCIS 2.0 REST binding's rules for capture (GS1's openapi.json, `/capture` and `/capture/{captureID}`):
the versions spoken, the capture limits, the exception types, the JSON-LD forms a document may take, and
what a capture job reports. Pure: the routes in api.py parse, call these and render.

- versions: `GS1-EPCIS-Version` and `GS1-CBV-Version` are answered as `2.0.0`; a request may name either,
  as any spelling of 2.0.0 (`2`, `2.0`, `2.0.0`); another version is 406 `epcisException:NotAcceptableException`,
  a value that is not a version (`^\\d+(\\.\\d+)*$`) 400 `epcisException:ValidationException`.
- limits: at most `MAX_CAPTURE_BYTES` bytes (the edge refuses more before reading it) and `MAX_CAPTURE_EVENTS`
  events per capture, both refused with 413 `epcisException:CaptureLimitExceededException` and announced in
  `GS1-EPCIS-Capture-File-Size-Limit` / `GS1-EPCIS-Capture-Limit` (on OPTIONS and on the 413).
- JSON-LD (`jsonld_forms`): the standard's simplified context makes `type` an alias of `@type` (and `id` of
  `@id`); a document or an event may spell it `@type` (both at once collide: refused), and a document's `id`
  may be a blank node identifier (`_:document1`): it names the document only inside itself, so it is not
  checked as a URI. An `eventID` stays a URI: a blank node is not the globally unique id duplicate
  detection keys on, so the schema refuses it.
- the capture job: `errors` holds one RFC 7807 problem per refused event (its index, eventID and reason,
  nothing of its content), or one for a document without events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EPCIS_VERSION = "2.0.0"
CBV_VERSION = "2.0.0"
EPCIS_VERSION_HEADER = "GS1-EPCIS-Version"
CBV_VERSION_HEADER = "GS1-CBV-Version"
CAPTURE_LIMIT_HEADER = "GS1-EPCIS-Capture-Limit"
FILE_SIZE_LIMIT_HEADER = "GS1-EPCIS-Capture-File-Size-Limit"
ERROR_BEHAVIOUR_HEADER = "GS1-Capture-Error-Behaviour"
ERROR_BEHAVIOURS = ("rollback", "proceed")
ALL_BEHAVIOURS = "all"
"""What the server announces on OPTIONS: it does both (the binding keeps `all` for servers)."""

MAX_CAPTURE_BYTES = 2_000_000
MAX_CAPTURE_EVENTS = 10_000
"""Events per capture: a courier's day of scans fits many times over; more is split by the sender."""

VALIDATION = "epcisException:ValidationException"
CAPTURE_LIMIT_EXCEEDED = "epcisException:CaptureLimitExceededException"
NOT_ACCEPTABLE = "epcisException:NotAcceptableException"
UNSUPPORTED_MEDIA_TYPE = "epcisException:UnsupportedMediaTypeException"
QUERY_PARAMETER = "epcisException:QueryParameterException"
"""The query's (`GET /events`, epcis_query_api.py): a parameter it does not take, or a bad value."""
EVENT_REFUSED = "urn:cgt:problem:epcis-event-refused"
"""The binding names no type for one refused event of an accepted capture: ours."""
NO_EVENTS = "urn:cgt:problem:epcis-no-events"

_VERSION = re.compile(r"\d+(\.\d+)*")
_BLANK_NODE = re.compile(r"_:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")


@dataclass(frozen=True)
class Refusal:
    """A request the binding refuses: the status, the exception type, the field and why."""

    status: int
    type: str
    field: str
    detail: str


def response_headers() -> dict[str, str]:
    return {EPCIS_VERSION_HEADER: EPCIS_VERSION, CBV_VERSION_HEADER: CBV_VERSION}


def limit_headers() -> dict[str, str]:
    return {CAPTURE_LIMIT_HEADER: str(MAX_CAPTURE_EVENTS), FILE_SIZE_LIMIT_HEADER: str(MAX_CAPTURE_BYTES)}


def _same_version(value: str, supported: str) -> bool:
    wanted = [int(part) for part in supported.split(".")]
    given = [int(part) for part in value.split(".")]
    width = max(len(wanted), len(given))
    return given + [0] * (width - len(given)) == wanted + [0] * (width - len(wanted))


def version_refusal(header: str, value: str | None, supported: str) -> Refusal | None:
    """None when the request names no version or the one supported."""
    if value is None:
        return None
    if not _VERSION.fullmatch(value) or len(value) > 32:
        return Refusal(400, VALIDATION, header, f"{header} is a version like {supported}")
    if not _same_version(value, supported):
        return Refusal(406, NOT_ACCEPTABLE, header, f"only {header} {supported} is supported")
    return None


def event_count(document: object) -> int:
    """How many events the document carries (eventList and a single `event`), whatever their shape."""
    body = document.get("epcisBody") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        return 0
    listed = body.get("eventList")
    return (len(listed) if isinstance(listed, list) else 0) + (1 if "event" in body else 0)


def capture_limit_refusal(document: object) -> Refusal | None:
    count = event_count(document)
    if count <= MAX_CAPTURE_EVENTS:
        return None
    return Refusal(
        413,
        CAPTURE_LIMIT_EXCEEDED,
        "epcisBody/eventList",
        f"at most {MAX_CAPTURE_EVENTS} events per capture ({count} sent): split the document",
    )


def jsonld_forms(document: object) -> tuple[object, list[str]]:
    """The document as the JSON Schema expects it, from the forms the simplified context allows: `@type`
    as `type` on the document and each event, a blank-node document `id` set aside. The problems are
    `<json path>: message` lines (as `epcis.validate_document`'s). The input is not changed."""
    if not isinstance(document, dict):
        return document, []
    problems: list[str] = []
    result = _typed(document, "$", problems)
    doc_id = result.get("id")
    if isinstance(doc_id, str) and _BLANK_NODE.fullmatch(doc_id):
        result = {k: v for k, v in result.items() if k != "id"}
    body = result.get("epcisBody")
    if isinstance(body, dict):
        body = dict(body)
        listed = body.get("eventList")
        if isinstance(listed, list):
            body["eventList"] = [
                _typed(event, f"$.epcisBody.eventList[{i}]", problems) if isinstance(event, dict) else event
                for i, event in enumerate(listed)
            ]
        if isinstance(body.get("event"), dict):
            body["event"] = _typed(body["event"], "$.epcisBody.event", problems)
        result["epcisBody"] = body
    return result, problems


def _typed(node: Mapping[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    if "@type" not in node:
        return dict(node)
    if "type" in node:
        problems.append(f"{path}.@type: both type and @type: the EPCIS context makes type an alias of @type")
        return {key: value for key, value in node.items() if key != "@type"}  # reported once, here
    return {("type" if key == "@type" else key): value for key, value in node.items()}


def job_errors(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The capture job's `errors`: one problem per refused event (the stored per-event outcomes)."""
    if not events:
        return [
            {
                "type": NO_EVENTS,
                "title": "The document has no events",
                "status": 400,
                "detail": "the document has no events",
            }
        ]
    return [
        {
            "type": EVENT_REFUSED,
            "title": "An EPCIS event was refused",
            "status": 422,
            "detail": event.get("reason") or "refused",
            "eventIndex": event["event_index"],
            "eventID": event.get("event_id"),
        }
        for event in events
        if event.get("outcome") == "refused"
    ]
