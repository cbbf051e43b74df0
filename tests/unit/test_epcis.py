"""EPCIS 2.0 capture rules: the official schema with its format checker, the official GS1 examples (read at
test time from ../shared/conformance/epcis, © GS1 AISBL, from github.com/gs1/EPCIS; never copied here) and
the mapping of ObjectEvents to scans."""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.events import ScanType
from jsonschema import Draft7Validator
from referencing.exceptions import Unresolvable

from services.coi_tracking import epcis
from services.common.identifiers import COI_PATTERN, coi_identifier, has_valid_check

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "epcis"
SCHEMA_PATH = CONFORMANCE / "EPCIS-JSON-Schema.json"
EXAMPLES_DIR = CONFORMANCE / "JSON"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonld"))
NEGATIVE_EXAMPLE = CONFORMANCE / "XML" / "WithEventHashID" / "event_with_identical_hash_id_7.json"
VALIDATOR = epcis.load_validator(SCHEMA_PATH)
WITHOUT_FORMATS = Draft7Validator(VALIDATOR.schema)

COI = "CHW4321260000014"
OTHER_COI = coi_identifier("W4321", 2026, 2)
COI_EPC = f"urn:epc:id:giai:4012345.{COI}"
READ_POINT = "urn:epc:id:sgln:4012345.00005.0"

NOT_A_SCAN = "is not a shipment scan: only ObjectEvents are captured"
SHIPPING_EPCS = "(saw: urn:epc:id:sgtin:0614141.107346.2017, urn:epc:id:sgtin:0614141.107346.2018)"
# What each official example yields: a document-level error, or one reason fragment per event.
EXPECTED: dict[str, str | list[str]] = {
    **{
        f"AssociationEvent/AssociationEvent-{x}.jsonld": [f"AssociationEvent {NOT_A_SCAN}"]
        for x in "abcdefgh"
    },
    "EPCISQueryDocument.jsonld": "$.type: must be 'EPCISDocument', got 'EPCISQueryDocument'",
    "Example-TransactionEvents-2020_07_03y.jsonld": [f"TransactionEvent {NOT_A_SCAN}"] * 2,
    "Example-Type-sourceOrDestination,measurement,bizTransaction.jsonld": [f"AssociationEvent {NOT_A_SCAN}"],
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
    "Example_9.6.4-TransformationEvent.jsonld": [f"TransformationEvent {NOT_A_SCAN}"],
    "PersistentDisposition-example.jsonld": [
        "urn:epc:id:sgtin:9520001.012346.10000001003 and 7 more)",
        "bizStep 'inspecting' is not a shipment step",
    ],
    "WithDigitalLinkID/Example_9.6.2-ObjectEventWithDigitalLink.jsonld": [
        "(saw: none); quantityList is not used: a bag is identified by its EPC"
    ],
    "WithDigitalLinkID/Example_9.6.3-AggregationEventWithDigitalLink.jsonld": [
        f"AggregationEvent {NOT_A_SCAN}"
    ],
    "WithDigitalLinkID/Example_9.6.4-TransformationEventWithDigitalLink.jsonld": [
        f"TransformationEvent {NOT_A_SCAN}"
    ],
    "WithErrorDeclaration/ErrorDeclarationAndCorrectiveEvent.jsonld": [f"TransformationEvent {NOT_A_SCAN}"]
    * 2,
    "WithFullCombinationOfFields/association_event_all_possible_fields.jsonld": [
        f"AssociationEvent {NOT_A_SCAN}"
    ],
    "WithFullCombinationOfFields/transformation_event_all_possible_fields.jsonld": [
        f"TransformationEvent {NOT_A_SCAN}"
    ],
    "WithSensorData/SensorDataExample4.jsonld": ["bizStep 'inspecting' is not a shipment step"],
    "WithSensorData/SensorDataExample7.jsonld": ["bizStep 'inspecting' is not a shipment step"],
    "WithSensorData/SensorDataExample10.jsonld": ["bizStep 'sensor_reporting' is not a shipment step"],
    "WithSensorData/SensorDataExample11.jsonld": [f"TransactionEvent {NOT_A_SCAN}"],
    "WithSensorData/SensorDataExample12.jsonld": [f"TransformationEvent {NOT_A_SCAN}"],
    "WithSensorData/SensorDataExample14.jsonld": ["bizStep 'sensor_reporting' is not a shipment step"],
    "WithSensorData/SensorDataExample15.jsonld": ["bizStep 'sensor_reporting' is not a shipment step"],
    "WithSensorData/SensorDataExample16.jsonld": ["bizStep 'sensor_reporting' is not a shipment step"],
    "WithSensorData/SensorDataExample17.jsonld": ["bizStep 'sensor_reporting' is not a shipment step"],
}
ERROR_LINE = re.compile(r"^\$\S*: \S.*$")


def _relative(path: Path) -> str:
    return path.relative_to(EXAMPLES_DIR).as_posix()


def _official(relative: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES_DIR / relative).read_text(encoding="utf-8"))
    return document


# --- the official examples ---------------------------------------------------------------------------------


def test_the_conformance_material_is_where_the_default_path_points() -> None:
    assert epcis.DEFAULT_SCHEMA_PATH == SCHEMA_PATH
    assert SCHEMA_PATH.is_file() and len(EXAMPLES) >= 31


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
        assert isinstance(outcome, epcis.CapturedScan | epcis.RefusedEvent)
        if isinstance(outcome, epcis.RefusedEvent):
            assert outcome.reason.strip()
        else:
            assert outcome.cois and outcome.location and outcome.event_time.tzinfo is UTC
    if expected is not None:
        assert isinstance(expected, list) and len(expected) == len(outcomes)
        for outcome, fragment in zip(outcomes, expected, strict=True):
            assert isinstance(outcome, epcis.RefusedEvent) and fragment in outcome.reason, outcome


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
        # an interval report (min 12.4, max 13.8, mean 13.2): the maximum, at the interval's end
        ("WithSensorData/SensorDataExample12.jsonld", 0, [("2019-04-02T13:59:59.999000+00:00", 13.8)]),
        # value 26 beats maxValue 26.2; the report's own time beats the metadata's
        (
            "WithFullCombinationOfFields/transformation_event_all_possible_fields.jsonld",
            0,
            [("2019-07-19T13:00:00+00:00", 26.0)],
        ),
        # speed only: no temperature
        ("WithSensorData/SensorDataExample10.jsonld", 0, []),
    ],
)
def test_the_official_sensor_examples_temperatures_are_read(
    relative: str, index: int, expected: list[tuple[str, float]]
) -> None:
    event = _official(relative)["epcisBody"]["eventList"][index]
    samples = epcis.temperature_samples(event, datetime(2000, 1, 1, tzinfo=UTC))
    assert [(s.at.isoformat(), s.celsius) for s in samples] == expected


def test_an_official_sensor_event_relabelled_with_a_bag_becomes_a_scan_with_its_temperature() -> None:
    document = copy.deepcopy(_official("WithSensorData/SensorDataExample7.jsonld"))
    event = document["epcisBody"]["eventList"][0]
    event.update(bizStep="transporting", epcList=[*event["epcList"], COI_EPC])
    assert epcis.validate_document(document, VALIDATOR) == []
    [scan] = epcis.interpret(document)
    assert isinstance(scan, epcis.CapturedScan)
    assert scan.scan_type is ScanType.CHECKPOINT and scan.cois == (COI,)
    assert scan.event_time.isoformat() == "2019-10-07T15:00:00+00:00"
    assert [(t.at.isoformat(), t.celsius) for t in scan.temperatures] == [("2019-07-19T13:00:00+00:00", 26.0)]


# --- a hand-built document -----------------------------------------------------------------------------------


def test_the_hand_built_coi_is_a_valid_coi() -> None:
    assert COI_PATTERN.match(COI) and has_valid_check(COI) and coi_identifier("W4321", 2026, 1) == COI
    assert has_valid_check(OTHER_COI) and OTHER_COI != COI


def event(**overrides: Any) -> dict[str, Any]:
    """A schema-valid shipping ObjectEvent; an override of None removes the field."""
    built: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": "urn:uuid:6b2f0f9e-8a1f-4bb5-9a55-6c3b7e0f1a01",
        "action": "OBSERVE",
        "bizStep": "shipping",
        "disposition": "in_transit",
        "epcList": [COI_EPC, "urn:epc:id:sgtin:0614141.107346.2017"],
        "eventTime": "2026-03-02T10:15:00.000+01:00",
        "eventTimeZoneOffset": "+01:00",
        "readPoint": {"id": READ_POINT},
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
    built.update(overrides)
    return {k: v for k, v in built.items() if v is not None}


def document(*events: dict[str, Any]) -> dict[str, Any]:
    return {
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2026-03-02T10:16:00.000+01:00",
        "epcisBody": {"eventList": list(events) if events else [event()]},
    }


def only(**overrides: Any) -> epcis.Outcome:
    [outcome] = epcis.interpret(document(event(**overrides)))
    return outcome


def scan(**overrides: Any) -> epcis.CapturedScan:
    outcome = only(**overrides)
    assert isinstance(outcome, epcis.CapturedScan), outcome
    return outcome


def refusal(**overrides: Any) -> str:
    outcome = only(**overrides)
    assert isinstance(outcome, epcis.RefusedEvent), outcome
    assert outcome.event_id == event(**overrides).get("eventID")
    return outcome.reason


def sensor(*reports: dict[str, Any], **metadata: str) -> list[dict[str, Any]]:
    element: dict[str, Any] = {"sensorReport": list(reports)}
    if metadata:
        element["sensorMetadata"] = metadata
    return [element]


def test_a_shipping_object_event_becomes_a_pick_up_scan() -> None:
    valid = document()
    assert epcis.validate_document(valid, VALIDATOR) == []
    [captured] = epcis.interpret(valid)
    assert captured == epcis.CapturedScan(
        event_index=0,
        event_id="urn:uuid:6b2f0f9e-8a1f-4bb5-9a55-6c3b7e0f1a01",
        scan_type=ScanType.PICK_UP,
        cois=(COI,),
        location=READ_POINT,
        event_time=datetime(2026, 3, 2, 9, 15, tzinfo=UTC),
        temperatures=(epcis.TemperatureSample(datetime(2026, 3, 2, 9, 14, tzinfo=UTC), -182.5),),
        container_id=None,
    )
    assert captured.event_time.tzinfo is UTC and captured.worst_celsius == -182.5


def test_every_outcome_has_its_index_and_a_single_event_body_is_read() -> None:
    doc = document(event(), event(type="AggregationEvent"), event(bizStep="receiving"))
    assert [type(o).__name__ for o in epcis.interpret(doc)] == [
        "CapturedScan",
        "RefusedEvent",
        "CapturedScan",
    ]
    assert [o.event_index for o in epcis.interpret(doc)] == [0, 1, 2]
    single = document()
    single["epcisBody"] = {"event": event()}
    [captured] = epcis.interpret(single)
    assert isinstance(captured, epcis.CapturedScan) and captured.cois == (COI,)
    # the official schema itself requires eventList, so such a document does not pass validation
    assert epcis.validate_document(single, VALIDATOR) == ["$.epcisBody: 'eventList' is a required property"]
    both = document()
    both["epcisBody"]["event"] = event()
    assert epcis.validate_document(both, VALIDATOR) == [
        "$.epcisBody.event: a document carries its events in eventList, not both"
    ]
    assert len(epcis.interpret(both)) == 2


MAPPING = {
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
FORMS = ("{}", "urn:epcglobal:cbv:bizstep:{}", "https://ref.gs1.org/cbv/BizStep-{}", "cbv:BizStep-{}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("step", "expected"), MAPPING.items())
def test_biz_steps_map_to_scan_types_in_every_vocabulary_form(
    step: str, form: str, expected: ScanType
) -> None:
    assert scan(bizStep=form.format(step)).scan_type is expected


def test_the_mapping_table_is_exactly_the_documented_one() -> None:
    assert epcis.BIZ_STEPS == MAPPING
    assert all(step in (epcis.__doc__ or "") for step in MAPPING)


@pytest.mark.parametrize("form", ["{}", "https://ref.gs1.org/cbv/BizStep-{}"])
def test_the_bare_and_web_vocabulary_forms_are_schema_valid_and_the_urn_form_is_not(form: str) -> None:
    assert epcis.validate_document(document(event(bizStep=form.format("receiving"))), VALIDATOR) == []
    urn = document(event(bizStep="urn:epcglobal:cbv:bizstep:receiving"))
    assert epcis.validate_document(urn, VALIDATOR)


@pytest.mark.parametrize(
    "step",
    [
        "destroying",
        "inspecting",
        "void_shipping",
        "sensor_reporting",
        "gs1:BizStep-shipping",
        "https://example.org/teleporting",
    ],
)
def test_other_biz_steps_are_refused_naming_them(step: str) -> None:
    reason = refusal(bizStep=step)
    assert f"bizStep {step!r} is not a shipment step" in reason and "shipping" in reason


def test_a_missing_biz_step_is_refused() -> None:
    assert epcis.validate_document(document(event(bizStep=None)), VALIDATOR) == []
    assert refusal(bizStep=None).startswith("no bizStep")


@pytest.mark.parametrize(
    "kind", ["AggregationEvent", "TransactionEvent", "TransformationEvent", "AssociationEvent"]
)
def test_other_event_types_are_refused(kind: str) -> None:
    assert refusal(type=kind) == f"{kind} is not a shipment scan: only ObjectEvents are captured"


@pytest.mark.parametrize("action", ["ADD", "DELETE"])
def test_only_observe_events_are_scans(action: str) -> None:
    assert epcis.validate_document(document(event(action=action)), VALIDATOR) == []
    assert "only OBSERVE events are scans" in refusal(action=action)


def test_an_error_declaration_is_left_to_qa() -> None:
    declared = event(
        errorDeclaration={"declarationTime": "2026-03-02T11:00:00.000+01:00", "reason": "incorrect_data"}
    )
    assert epcis.validate_document(document(declared), VALIDATOR) == []
    [outcome] = epcis.interpret(document(declared))
    assert isinstance(outcome, epcis.RefusedEvent)
    assert outcome.reason == "corrections (errorDeclaration) are not applied automatically; QA reviews them"


# --- bags --------------------------------------------------------------------------------------------------------


def test_every_coi_bearing_epc_is_a_bag_even_one_of_another_shipment() -> None:
    epcs = [
        f"urn:epc:id:giai:4012345.{OTHER_COI}",
        "urn:epc:id:sgtin:0614141.107346.2017",
        COI_EPC,
        f"https://id.example.org/bags/{COI}",
    ]
    assert epcis.validate_document(document(event(epcList=epcs)), VALIDATOR) == []
    assert scan(epcList=epcs).cois == (OTHER_COI, COI, COI)


def test_a_coi_with_a_wrong_check_character_is_not_a_bag() -> None:
    wrong = COI[:-1] + ("0" if COI[-1] != "0" else "1")
    reason = refusal(epcList=[f"urn:epc:id:giai:4012345.{wrong}"])
    assert (
        reason
        == f"no EPC in epcList carries a chain-of-identity identifier (saw: urn:epc:id:giai:4012345.{wrong})"
    )


def test_an_event_without_a_coi_bearing_epc_is_refused_naming_what_it_saw() -> None:
    epcs = [f"urn:epc:id:sgtin:0614141.107346.{n}" for n in range(5)]
    assert refusal(epcList=epcs) == (
        "no EPC in epcList carries a chain-of-identity identifier (saw: urn:epc:id:sgtin:0614141.107346.0, "
        "urn:epc:id:sgtin:0614141.107346.1, urn:epc:id:sgtin:0614141.107346.2 and 2 more)"
    )


def test_quantity_list_is_not_a_bag() -> None:
    by_class = {
        "epcList": None,
        "quantityList": [{"epcClass": f"urn:epc:idpat:giai:4012345.{COI}", "quantity": 1}],
    }
    assert epcis.validate_document(document(event(**by_class)), VALIDATOR) == []
    assert "(saw: none); quantityList is not used" in refusal(**by_class)


# --- location, time, container, shipment -------------------------------------------------------------------------


def test_the_location_is_the_read_point_else_the_business_location() -> None:
    business = "urn:epc:id:sgln:4012345.00001.0"
    assert scan(bizLocation={"id": business}).location == READ_POINT
    assert scan(readPoint=None, bizLocation={"id": business}).location == business
    assert refusal(readPoint=None) == "no readPoint or bizLocation: a scan needs a location"
    assert "at most 128" in refusal(readPoint={"id": "urn:x:" + "a" * 200})


def test_the_event_time_is_converted_to_utc() -> None:
    assert scan(eventTime="2026-03-02T23:30:00-05:00").event_time == datetime(2026, 3, 3, 4, 30, tzinfo=UTC)
    assert scan(eventTime="2026-03-02t10:15:00z").event_time == datetime(2026, 3, 2, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "eventTime is missing"),
        ("yesterday", "eventTime 'yesterday' is not a date-time"),
        ("2026-03-02T10:15:00", "has no UTC offset"),
        ("0001-01-01T00:00:00+01:00", "is out of range"),
    ],
)
def test_an_unreadable_event_time_is_refused_not_raised(value: str | None, reason: str) -> None:
    assert reason in refusal(eventTime=value)


def test_the_container_is_the_parent_id_which_the_schema_does_not_allow_on_an_object_event() -> None:
    shipper = "urn:epc:id:giai:4012345.DRYSHIPPER7"
    assert scan(parentID=shipper).container_id == shipper
    assert scan().container_id is None
    [error] = epcis.validate_document(document(event(parentID=shipper)), VALIDATOR)
    assert error.startswith("$.epcisBody.eventList[0]: property 'parentID' is not allowed here")


def test_a_biz_transaction_naming_a_shipment_is_kept() -> None:
    shipment = "0d7c8f4e-2a6b-4c1d-9e3f-5a6b7c8d9e0f"
    named = scan(bizTransactionList=[{"type": "desadv", "bizTransaction": f"urn:uuid:{shipment}"}])
    assert named.shipment_ref == shipment and scan().shipment_ref is None


# --- temperatures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "celsius"),
    [
        ({"type": "Temperature", "value": -238.0, "uom": "FAH"}, -150.0),
        ({"type": "Temperature", "value": 123.15, "uom": "KEL"}, -150.0),
        ({"type": "gs1:Temperature", "value": -190.0, "uom": "CEL"}, -190.0),
        ({"type": "https://gs1.org/voc/Temperature", "value": -190.0, "uom": "CEL"}, -190.0),
        # the warmest reading of an interval, not its mean or minimum
        (
            {"type": "Temperature", "minValue": -196, "maxValue": -150.5, "meanValue": -190, "uom": "CEL"},
            -150.5,
        ),
        ({"type": "Temperature", "minValue": -196, "meanValue": -190, "uom": "CEL"}, -190.0),
        ({"type": "Temperature", "value": -180, "maxValue": -150, "uom": "CEL"}, -180.0),
    ],
)
def test_temperatures_are_read_in_celsius(report: dict[str, Any], celsius: float) -> None:
    assert [t.celsius for t in scan(sensorElementList=sensor(report)).temperatures] == [celsius]


def test_a_temperature_report_without_a_usable_value_and_other_measurements_are_ignored() -> None:
    reports = sensor(
        {"type": "Temperature", "minValue": -196, "uom": "CEL"},
        {"type": "AbsoluteHumidity", "value": 12.1, "uom": "A93"},
        {"type": "example:Temperature", "value": 40, "uom": "CEL"},
    )
    assert epcis.validate_document(document(event(sensorElementList=reports)), VALIDATOR) == []
    assert scan(sensorElementList=reports).temperatures == ()


def test_the_sample_time_is_the_report_time_else_the_metadata_time_else_the_event_time() -> None:
    report = {"type": "Temperature", "value": -180, "uom": "CEL"}
    timed = {**report, "time": "2026-03-02T10:10:00+01:00"}
    times = [
        t.at.isoformat()
        for t in scan(
            sensorElementList=[
                *sensor(timed, time="2026-03-02T10:12:00+01:00"),
                *sensor(report, time="2026-03-02T10:12:00+01:00"),
                *sensor(report, startTime="2026-03-02T09:00:00Z", endTime="2026-03-02T09:13:00Z"),
                *sensor(report),
            ]
        ).temperatures
    ]
    assert times == [
        "2026-03-02T09:10:00+00:00",
        "2026-03-02T09:12:00+00:00",
        "2026-03-02T09:13:00+00:00",
        "2026-03-02T09:15:00+00:00",
    ]


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        ({"type": "Temperature", "value": -180, "uom": "celsius"}, "unit 'celsius': only CEL, FAH and KEL"),
        ({"type": "Temperature", "value": -180}, "temperature reported in no unit"),
        ({"type": "Temperature", "value": float("nan"), "uom": "CEL"}, "value nan is not a finite number"),
        ({"type": "Temperature", "value": -300, "uom": "CEL"}, "below absolute zero"),
        (
            {"type": "Temperature", "exception": "ALARM_CONDITION", "uom": "CEL"},
            "reports 'ALARM_CONDITION': sensor alarms are not captured automatically; QA reviews them",
        ),
    ],
)
def test_an_untrustworthy_temperature_refuses_the_event(report: dict[str, Any], reason: str) -> None:
    assert reason in refusal(sensorElementList=sensor(report))


def test_the_schema_lets_any_unit_string_through_so_the_unit_check_is_ours() -> None:
    odd = document(event(sensorElementList=sensor({"type": "Temperature", "value": -180, "uom": "celsius"})))
    assert epcis.validate_document(odd, VALIDATOR) == []


# --- document-level validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([document()], "$: an EPCIS document is a JSON object, not an array"),
        ("EPCISDocument", "$: an EPCIS document is a JSON object, not a string"),
        ({"schemaVersion": "2.0"}, '$.type: missing: an EPCIS capture document has "type": "EPCISDocument"'),
        ({**document(), "type": "ObjectEvent"}, "$.type: must be 'EPCISDocument', got 'ObjectEvent'"),
    ],
)
def test_what_is_not_an_epcis_document_is_refused_clearly(value: object, error: str) -> None:
    assert epcis.validate_document(value, VALIDATOR) == [error]


def test_an_event_without_a_type_gets_one_error_not_one_per_event_type() -> None:
    errors = epcis.validate_document(document(event(type=None), 5), VALIDATOR)  # type: ignore[arg-type]
    assert errors == [
        "$.epcisBody.eventList[0].type: missing: an event names its type (ObjectEvent, AggregationEvent, "
        "TransactionEvent, TransformationEvent, AssociationEvent)",
        "$.epcisBody.eventList[1]: an event is a JSON object, not a number",
    ]


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        (
            {"eventTime": "2026-13-45T99:00:00+01:00"},
            "$.epcisBody.eventList[0].eventTime",
            "is not a 'date-time'",
        ),
        ({"bizStep": "not-a-step"}, "$.epcisBody.eventList[0].bizStep", "is not a 'uri'"),
        ({"disposition": "not a disposition"}, "$.epcisBody.eventList[0].disposition", "is not a 'uri'"),
        ({"readPoint": {"id": "dock 4"}}, "$.epcisBody.eventList[0].readPoint.id", "'dock 4' is not a 'uri'"),
    ],
)
def test_bad_values_are_refused_only_because_of_the_format_checker(
    overrides: dict[str, Any], path: str, fragment: str
) -> None:
    bad = document(event(**overrides))
    assert list(WITHOUT_FORMATS.iter_errors(bad)) == [], "without a format checker the bad value passes"
    [error] = epcis.validate_document(bad, VALIDATOR)
    assert error.startswith(f"{path}: ") and fragment in error


def test_other_schema_errors_are_precise() -> None:
    errors = epcis.validate_document(document(event(action="MOVE", eventTimeZoneOffset=None)), VALIDATOR)
    assert (
        "$.epcisBody.eventList[0].action: 'MOVE' is not one of the 3 allowed values ('OBSERVE', 'ADD', 'DELETE')"
        in errors
    )
    assert "$.epcisBody.eventList[0]: 'eventTimeZoneOffset' is a required property" in errors
    assert all(ERROR_LINE.match(e) for e in errors)
    assert epcis.validate_document(document(event(action="MOVE")), VALIDATOR, limit=1)[1:] == [
        "$: … and 1 more errors"
    ]


# --- the schema ------------------------------------------------------------------------------------------------------


def test_the_validator_is_draft_7_with_a_format_checker() -> None:
    assert epcis.load_schema(SCHEMA_PATH)["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert isinstance(VALIDATOR, Draft7Validator) and VALIDATOR.format_checker is not None
    assert epcis.default_validator() is epcis.default_validator()


def test_references_resolve_only_to_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[object] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: fetched.append(args))
    (tmp_path / "part.json").write_text(json.dumps({"type": "integer"}))
    draft = "http://json-schema.org/draft-07/schema#"
    local = {
        "$schema": draft,
        "$id": "https://example.org/s/main.json",
        "$ref": "https://example.org/s/part.json",
    }
    (tmp_path / "main.json").write_text(json.dumps(local))
    validator = epcis.load_validator(tmp_path / "main.json")
    assert validator.is_valid(3) and not validator.is_valid("three")
    remote = {"$schema": draft, "$ref": "https://example.org/elsewhere/missing.json"}
    (tmp_path / "remote.json").write_text(json.dumps(remote))
    with pytest.raises(Unresolvable):
        epcis.load_validator(tmp_path / "remote.json").is_valid(3)
    assert fetched == [], "a $ref is never fetched from the network"


def test_a_schema_must_declare_its_draft(tmp_path: Path) -> None:
    (tmp_path / "undeclared.json").write_text(json.dumps({"type": "object"}))
    with pytest.raises(ValueError, match=r"does not declare its draft"):
        epcis.load_schema(tmp_path / "undeclared.json")
