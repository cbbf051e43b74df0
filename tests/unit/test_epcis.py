"""EPCIS 2.0 capture rules: the official schema with its format checker, the official GS1 examples (read
from ../shared/conformance, never copied), and the mapping of ObjectEvents to scans."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.events import ScanType
from jsonschema import Draft7Validator

from services.coi_tracking import epcis
from services.common.identifiers import coi_identifier

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "epcis"
EXAMPLES = sorted(p for p in (CONFORMANCE / "JSON").rglob("*") if p.suffix in (".json", ".jsonld"))
VALIDATOR = epcis.load_validator(CONFORMANCE / "EPCIS-JSON-Schema.json")
COI = coi_identifier("W4321", 2026, 1)


def test_the_conformance_examples_are_there() -> None:
    assert len(EXAMPLES) >= 30


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(CONFORMANCE / "JSON")))
def test_every_official_example_is_accepted_or_refused_with_a_precise_reason(path: Path) -> None:
    document = json.loads(path.read_text())
    errors = epcis.validate_document(document, VALIDATOR)
    if errors:
        assert all(": " in e and e.startswith("$") for e in errors)
        return
    outcomes = epcis.interpret(document)
    assert len(outcomes) == len(epcis.events_of(document)) >= 1
    for outcome in outcomes:
        if isinstance(outcome, epcis.RefusedEvent):
            assert len(outcome.reason) > 20
        else:
            assert outcome.cois and outcome.location


def _outcomes(relative: str) -> list[epcis.Outcome]:
    document = json.loads((CONFORMANCE / "JSON" / relative).read_text())
    assert epcis.validate_document(document, VALIDATOR) == []
    return epcis.interpret(document)


def test_specific_official_examples() -> None:
    aggregation = _outcomes("WithDigitalLinkID/Example_9.6.3-AggregationEventWithDigitalLink.jsonld")
    assert (
        isinstance(aggregation[0], epcis.RefusedEvent)
        and "AggregationEvent is not a shipment scan" in aggregation[0].reason
    )
    shipping = _outcomes("Example_9.6.1-ObjectEvent.jsonld")
    assert all(
        isinstance(o, epcis.RefusedEvent) and "no EPC in epcList carries" in o.reason for o in shipping
    )
    assert "urn:epc:id:sgtin:0614141.107346.2017" in shipping[0].reason  # type: ignore[union-attr]
    sensor = _outcomes("WithSensorData/SensorDataExample10.jsonld")
    assert "sensor_reporting" in sensor[0].reason  # type: ignore[union-attr]
    query = json.loads((CONFORMANCE / "JSON" / "EPCISQueryDocument.jsonld").read_text())
    assert epcis.validate_document(query, VALIDATOR) == [
        "$.type: must be 'EPCISDocument', got 'EPCISQueryDocument'"
    ]


def document(**event_overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": "urn:uuid:6b2f0f9e-8a1f-4bb5-9a55-6c3b7e0f1a01",
        "action": "OBSERVE",
        "bizStep": "shipping",
        "disposition": "in_transit",
        "epcList": [f"urn:epc:id:giai:4012345.{COI}", "urn:epc:id:sgtin:0614141.107346.2017"],
        "eventTime": "2026-03-02T10:15:00.000+01:00",
        "eventTimeZoneOffset": "+01:00",
        "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
        "sensorElementList": [
            {
                "sensorMetadata": {"time": "2026-03-02T10:14:00.000+01:00"},
                "sensorReport": [
                    {"type": "Temperature", "value": -182.5, "uom": "CEL"},
                    {"type": "AbsoluteHumidity", "value": 12.1, "uom": "A93"},
                ],
            }
        ],
    }
    event.update(event_overrides)
    return {
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2026-03-02T10:16:00.000+01:00",
        "epcisBody": {"eventList": [event]},
    }


def test_a_shipping_object_event_becomes_a_pick_up_scan() -> None:
    valid = document()
    assert epcis.validate_document(valid, VALIDATOR) == []
    [scan] = epcis.interpret(valid)
    assert isinstance(scan, epcis.CapturedScan)
    assert scan.scan_type is ScanType.PICK_UP and scan.cois == (COI,)
    assert scan.location == "urn:epc:id:sgln:4012345.00005.0"
    assert scan.event_time.isoformat() == "2026-03-02T09:15:00+00:00"
    assert [(t.at.isoformat(), t.celsius) for t in scan.temperatures] == [
        ("2026-03-02T09:14:00+00:00", -182.5)
    ]


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("receiving", ScanType.DELIVERY),
        ("urn:epcglobal:cbv:bizstep:arriving", ScanType.CHECKPOINT),
        ("accepting", ScanType.RECEIPT),
    ],
)
def test_biz_steps_map_to_scan_types(step: str, expected: ScanType) -> None:
    [scan] = epcis.interpret(document(bizStep=step))
    assert isinstance(scan, epcis.CapturedScan) and scan.scan_type is expected


def test_fahrenheit_and_kelvin_are_converted_and_max_value_is_the_worst_case() -> None:
    fahrenheit = document(
        sensorElementList=[{"sensorReport": [{"type": "Temperature", "value": -238.0, "uom": "FAH"}]}]
    )
    [scan] = epcis.interpret(fahrenheit)
    assert isinstance(scan, epcis.CapturedScan) and scan.temperatures[0].celsius == -150.0
    ranged = document(
        sensorElementList=[
            {"sensorReport": [{"type": "Temperature", "minValue": 90.0, "maxValue": 125.0, "uom": "KEL"}]}
        ]
    )
    [scan] = epcis.interpret(ranged)
    assert isinstance(scan, epcis.CapturedScan) and scan.worst_celsius == -148.15


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"bizStep": "destroying"}, "not a shipment step"),
        ({"epcList": ["urn:epc:id:sgtin:0614141.107346.2017"]}, "no EPC in epcList carries"),
        ({"action": "ADD"}, "only OBSERVE events are scans"),
        ({"readPoint": None}, "needs a location"),
    ],
)
def test_events_that_are_not_scans_are_refused_with_the_reason(
    overrides: dict[str, Any], reason: str
) -> None:
    event = {k: v for k, v in overrides.items() if v is not None}
    doc = document(**event)
    if overrides.get("readPoint", "") is None:
        del doc["epcisBody"]["eventList"][0]["readPoint"]
    [outcome] = epcis.interpret(doc)
    assert isinstance(outcome, epcis.RefusedEvent) and reason in outcome.reason


def test_the_format_checker_is_what_refuses_a_malformed_time() -> None:
    bad = document(eventTime="2026-13-45T99:00:00+01:00")
    without_formats = Draft7Validator(VALIDATOR.schema)
    assert list(without_formats.iter_errors(bad)) == [], "without a format checker the bad time passes"
    errors = epcis.validate_document(bad, VALIDATOR)
    assert errors and any("eventTime" in e and "date-time" in e for e in errors)


def test_bad_cbv_values_are_refused_by_the_schema() -> None:
    errors = epcis.validate_document(document(disposition="not a disposition"), VALIDATOR)
    assert errors and any("disposition" in e for e in errors)
    assert epcis.validate_document(copy.deepcopy(document(action="MOVE")), VALIDATOR)
