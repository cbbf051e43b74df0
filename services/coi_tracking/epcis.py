"""GS1 EPCIS 2.0 capture: validate a document against the official JSON Schema (with a format checker,
without which bad CBV values and dates pass) and turn each event into a scan or a precise refusal.

Pure functions; the caller finds the shipment and applies the scan through the same rules as a REST scan.

| EPCIS ObjectEvent (action OBSERVE)  | scan       |
|-------------------------------------|------------|
| bizStep shipping                    | pick_up    |
| departing, arriving, transporting, holding, storing, inspecting | checkpoint |
| receiving                           | delivery   |
| accepting                           | receipt    |

- bag COIs: each EPC in `epcList` whose last segment (after `:`, `.` or `/`) is a COI identifier with a
  valid MOD 37-2 check character; other EPCs are ignored, an event with none is refused;
- location: `readPoint.id`, else `bizLocation.id`; time: `eventTime` (with its offset) in UTC;
- temperature: `sensorElementList[].sensorReport[]` of type Temperature in CEL, FAH or KEL (converted to
  °C); `value`, else `maxValue` (the worst case for a cryogenic shipment), else `meanValue`;
- the shipment: a `bizTransactionList` entry whose value ends with its id (`urn:uuid:<shipment id>`),
  else the one open shipment carrying those COIs;
- refused: other event types, ADD/DELETE actions, unknown bizSteps, events without a COI-bearing EPC or a
  location, events with an errorDeclaration (corrections are reviewed by QA, never applied automatically).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cgt_contracts.events import ScanType
from jsonschema import Draft7Validator

from services.common.identifiers import COI_PATTERN, has_valid_check

DEFAULT_SCHEMA_PATH = (
    Path(__file__).resolve().parents[3] / "shared" / "conformance" / "epcis" / "EPCIS-JSON-Schema.json"
)
BIZ_STEPS: dict[str, ScanType] = {
    "shipping": ScanType.PICK_UP,
    "departing": ScanType.CHECKPOINT,
    "arriving": ScanType.CHECKPOINT,
    "transporting": ScanType.CHECKPOINT,
    "holding": ScanType.CHECKPOINT,
    "storing": ScanType.CHECKPOINT,
    "inspecting": ScanType.CHECKPOINT,
    "receiving": ScanType.DELIVERY,
    "accepting": ScanType.RECEIPT,
}
TEMPERATURE_TYPES = {"Temperature", "gs1:Temperature", "https://gs1.org/voc/Temperature"}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def load_validator(path: Path = DEFAULT_SCHEMA_PATH) -> Draft7Validator:
    """The official schema is draft-07 and self-contained; the format checker makes formats count."""
    schema = json.loads(path.read_text())
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def validate_document(document: object, validator: Draft7Validator) -> list[str]:
    """Every schema error as `<json path>: <message>` (empty when valid)."""
    if not isinstance(document, dict):
        return ["$: an EPCIS document is a JSON object"]
    if document.get("type") != "EPCISDocument":
        return [f"$.type: must be 'EPCISDocument', got {document.get('type')!r}"]
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{error.json_path}: {_short(error.message)}" for error in errors[:50]]


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


@dataclass(frozen=True)
class TemperatureSample:
    at: datetime
    celsius: float


@dataclass(frozen=True)
class CapturedScan:
    event_index: int
    event_id: str | None
    scan_type: ScanType
    cois: tuple[str, ...]
    location: str
    event_time: datetime
    temperatures: tuple[TemperatureSample, ...]
    shipment_ref: str | None
    """A shipment id named in bizTransactionList, if any."""

    @property
    def worst_celsius(self) -> float | None:
        return max((t.celsius for t in self.temperatures), default=None)


@dataclass(frozen=True)
class RefusedEvent:
    event_index: int
    event_id: str | None
    reason: str


Outcome = CapturedScan | RefusedEvent


def events_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    body = document.get("epcisBody", {})
    if "eventList" in body:
        return list(body["eventList"])
    return [body["event"]] if "event" in body else []


def interpret(document: dict[str, Any]) -> list[Outcome]:
    """One outcome per event of a schema-valid document."""
    return [_interpret(index, event) for index, event in enumerate(events_of(document))]


def _vocabulary_word(value: str) -> str:
    for prefix in (
        "urn:epcglobal:cbv:bizstep:",
        "https://ref.gs1.org/cbv/BizStep-",
        "cbv:BizStep-",
        "gs1:BizStep-",
    ):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def _coi_of(epc: str) -> str | None:
    last = re.split(r"[:./]", epc)[-1]
    return last if COI_PATTERN.match(last) and has_valid_check(last) else None


def _interpret(index: int, event: dict[str, Any]) -> Outcome:
    event_id = event.get("eventID")

    def refuse(reason: str) -> RefusedEvent:
        return RefusedEvent(index, event_id, reason)

    kind = event.get("type")
    if kind != "ObjectEvent":
        return refuse(f"{kind} is not a shipment scan: only ObjectEvents are captured")
    if "errorDeclaration" in event:
        return refuse("corrections (errorDeclaration) are not applied automatically; QA reviews them")
    if event.get("action") != "OBSERVE":
        return refuse(f"action {event.get('action')} is not a scan: only OBSERVE events are scans")
    step = _vocabulary_word(str(event.get("bizStep", "")))
    if step not in BIZ_STEPS:
        return refuse(
            f"bizStep {event.get('bizStep')!r} is not a shipment step (expected one of {', '.join(BIZ_STEPS)})"
        )
    epcs = [str(epc) for epc in event.get("epcList", [])]
    cois = tuple(coi for coi in (_coi_of(epc) for epc in epcs) if coi is not None)
    if not cois:
        seen = (
            ", ".join(epcs[:3]) + (f" and {len(epcs) - 3} more" if len(epcs) > 3 else "") if epcs else "none"
        )
        return refuse(f"no EPC in epcList carries a chain-of-identity identifier (saw: {seen})")
    location = (event.get("readPoint") or {}).get("id") or (event.get("bizLocation") or {}).get("id")
    if not location:
        return refuse("no readPoint or bizLocation: a scan needs a location")
    event_time = datetime.fromisoformat(str(event["eventTime"]).replace("Z", "+00:00")).astimezone(UTC)
    samples: list[TemperatureSample] = []
    for element in event.get("sensorElementList", []):
        metadata = element.get("sensorMetadata", {})
        for report in element.get("sensorReport", []):
            if report.get("type") not in TEMPERATURE_TYPES:
                continue
            sample = _temperature(report, metadata, event_time)
            if isinstance(sample, str):
                return refuse(sample)
            if sample is not None:
                samples.append(sample)
    shipment_ref = next(
        (
            match.group(0)
            for transaction in event.get("bizTransactionList", [])
            if (match := _UUID.search(str(transaction.get("bizTransaction", ""))))
        ),
        None,
    )
    return CapturedScan(
        index, event_id, BIZ_STEPS[step], cois, str(location)[:128], event_time, tuple(samples), shipment_ref
    )


def _temperature(
    report: dict[str, Any], metadata: dict[str, Any], event_time: datetime
) -> TemperatureSample | str | None:
    value = next(
        (report[k] for k in ("value", "maxValue", "meanValue") if isinstance(report.get(k), int | float)),
        None,
    )
    if value is None:
        return None
    unit = report.get("uom", "CEL")
    if unit == "CEL":
        celsius = float(value)
    elif unit == "FAH":
        celsius = (float(value) - 32.0) * 5.0 / 9.0
    elif unit == "KEL":
        celsius = float(value) - 273.15
    else:
        return f"temperature unit {unit!r} is not CEL, FAH or KEL"
    stamp = report.get("time") or metadata.get("time") or metadata.get("endTime")
    at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).astimezone(UTC) if stamp else event_time
    return TemperatureSample(at, round(celsius, 3))
