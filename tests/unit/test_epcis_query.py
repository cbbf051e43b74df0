"""The EPCIS query's mapping of records to events (read back by capture's own interpretation) and its
parameters: pure, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cgt_contracts.events import ScanType

from services.coi_tracking import epcis, epcis_query
from services.coi_tracking.epcis_hash import STANDARD_CONTEXT, event_hash
from services.coi_tracking.epcis_query import (
    CustodyFacts,
    EventQuery,
    PageToken,
    QueryParameterError,
    ReadingFacts,
    ScanFacts,
    parse_query,
)

COI, OTHER_COI = "CHW4321260000014", "CHW4321260000022"
SHIPMENT = uuid.UUID("6a1f0c2e-8b3d-4f5a-9c7e-2d4b6f8a0c1e")
SCAN_ID = uuid.UUID("0b7e4c2a-1d3f-4a5b-8c6d-9e0f1a2b3c4d")
AT = datetime(2026, 12, 1, 9, 0, 0, 250000, tzinfo=UTC)
DOCK = "urn:epc:id:sgln:4012345.00005.0"
EPC = f"urn:epc:id:giai:4012345.{COI}"
TRANSACTION = [{"type": "desadv", "bizTransaction": f"urn:uuid:{SHIPMENT}"}]


def scan(scan_type: ScanType = ScanType.PICK_UP, **changes: Any) -> ScanFacts:
    fields: dict[str, Any] = {
        "id": SCAN_ID,
        "shipment_id": SHIPMENT,
        "scan_type": scan_type,
        "bag_cois": (COI,),
        "location": DOCK,
        "device_time": AT,
        "temperature_celsius": None,
        "epcis_event_id": None,
        "epcis_event_hash": None,
        "retracted_at": None,
    }
    return ScanFacts(**(fields | changes))


def reading(celsius: float = -181.5) -> ReadingFacts:
    return ReadingFacts(12, SHIPMENT, AT, celsius, (COI,))


def custody(
    meaning: str = "pick_up: custody handed over", location: str = "AGC Biologics, Milan"
) -> CustodyFacts:
    return CustodyFacts(
        40, SHIPMENT, 1, "manufacturer:AGC-MILAN", "courier-ben", location, AT, meaning, (COI,)
    )


def read_back(*events: dict[str, Any]) -> list[epcis.Outcome]:
    document = {
        "@context": [STANDARD_CONTEXT],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2026-12-01T10:00:00Z",
        "epcisBody": {"eventList": list(events)},
    }
    assert epcis.validate_document(document, epcis.default_validator()) == []
    return epcis.interpret(document)


# --- the mapping -----------------------------------------------------------------------------------------


def test_a_scan_is_an_object_event_with_its_bags_place_time_and_shipment() -> None:
    assert epcis_query.render(scan(temperature_celsius=-182.5)) == {
        "type": "ObjectEvent",
        "eventID": f"urn:uuid:{SCAN_ID}",
        "eventTime": "2026-12-01T09:00:00.250000Z",
        "eventTimeZoneOffset": "+00:00",
        "epcList": [EPC],
        "action": "OBSERVE",
        "bizStep": "shipping",
        "readPoint": {"id": DOCK},
        "bizTransactionList": TRANSACTION,
        "sensorElementList": [{"sensorReport": [{"type": "Temperature", "value": -182.5, "uom": "CEL"}]}],
    }


@pytest.mark.parametrize(
    ("scan_type", "step"),
    [
        (ScanType.PICK_UP, "shipping"),
        (ScanType.CHECKPOINT, "arriving"),
        (ScanType.DELIVERY, "receiving"),
        (ScanType.RECEIPT, "accepting"),
    ],
)
def test_capture_reads_a_rendered_scan_back_as_the_same_scan(scan_type: ScanType, step: str) -> None:
    event = epcis_query.render(scan(scan_type, temperature_celsius=-180.0))
    assert event["bizStep"] == step
    [read] = read_back(event)
    assert isinstance(read, epcis.CapturedEvent)
    assert (read.kind, read.scan_type, read.cois, read.location, read.shipment_ref, read.event_time) == (
        epcis.EventKind.SCAN,
        scan_type,
        (COI,),
        DOCK,
        str(SHIPMENT),
        AT,
    )
    assert [t.value for t in read.temperatures] == [-180.0]


@pytest.mark.parametrize("scan_type", [ScanType.HAND_OFF, ScanType.DELAY])
def test_a_hand_off_or_delay_has_a_custom_step_capture_does_not_take_as_a_scan(scan_type: ScanType) -> None:
    event = epcis_query.render(scan(scan_type))
    assert event["bizStep"] == f"urn:cgt:bizstep:{scan_type.value}"
    [read] = read_back(event)
    assert isinstance(read, epcis.CapturedEvent) and read.kind is epcis.EventKind.READINGS
    assert read.refusal is not None and "is not a shipment step" in read.refusal


def test_a_free_text_place_is_never_published() -> None:
    for place in ("AGC Biologics, Milan", "JFK cargo", "urn:example:dock 4", "https://maps.example/?q=home"):
        assert "readPoint" not in epcis_query.render(scan(location=place))
        assert "bizLocation" not in epcis_query.render(custody(location=place))
    digital_link = "https://id.gs1.org/414/4012345000054"
    assert epcis_query.render(scan(location=digital_link))["readPoint"] == {"id": digital_link}
    assert epcis_query.render(custody(location=DOCK))["bizLocation"] == {"id": DOCK}


def test_only_well_formed_cois_become_epcs() -> None:
    labels = (COI, "CHW4321260000015", "smudged label", OTHER_COI, COI)
    assert epcis_query.render(scan(bag_cois=labels))["epcList"] == [
        EPC,
        f"urn:epc:id:giai:4012345.{OTHER_COI}",
    ]


def test_a_reading_is_a_sensor_reporting_object_event_of_the_shipments_bags() -> None:
    event = epcis_query.render(reading())
    assert event == {
        "type": "ObjectEvent",
        "eventID": epcis_query.derived_id("reading", 12),
        "eventTime": "2026-12-01T09:00:00.250000Z",
        "eventTimeZoneOffset": "+00:00",
        "epcList": [EPC],
        "action": "OBSERVE",
        "bizStep": "sensor_reporting",
        "bizTransactionList": TRANSACTION,
        "sensorElementList": [{"sensorReport": [{"type": "Temperature", "value": -181.5, "uom": "CEL"}]}],
    }
    [read] = read_back(event)
    assert isinstance(read, epcis.CapturedEvent) and read.kind is epcis.EventKind.READINGS
    assert [(t.at, t.value) for t in read.temperatures] == [(AT, -181.5)] and read.refusal is None


def test_a_custody_change_is_a_transaction_event_from_one_owning_party_to_another() -> None:
    event = epcis_query.render(custody())
    assert event == {
        "type": "TransactionEvent",
        "eventID": epcis_query.derived_id("custody", SHIPMENT, 1),
        "eventTime": "2026-12-01T09:00:00.250000Z",
        "eventTimeZoneOffset": "+00:00",
        "bizTransactionList": TRANSACTION,
        "epcList": [EPC],
        "action": "OBSERVE",
        "bizStep": "shipping",
        "sourceList": [{"type": "owning_party", "source": "urn:cgt:party:manufacturer:AGC-MILAN"}],
        "destinationList": [{"type": "owning_party", "destination": "urn:cgt:party:courier-ben"}],
    }
    [read] = read_back(event)
    assert isinstance(read, epcis.CapturedEvent)
    assert (read.kind, read.temperatures, read.refusal) == (epcis.EventKind.READINGS, (), None)
    assert "bizStep" not in epcis_query.render(custody(meaning="custody corrected"))
    assert epcis_query.party("site one/2") == "urn:cgt:party:site%20one%2F2"


def test_every_event_id_is_stable_and_a_captured_one_is_kept_only_with_its_hash() -> None:
    assert epcis_query.render(reading())["eventID"] == epcis_query.render(reading(-100.0))["eventID"]
    assert epcis_query.derived_id("reading", 12) != epcis_query.derived_id("reading", 13)
    assert epcis_query.derived_id("custody", SHIPMENT, 1) == "urn:uuid:" + str(
        uuid.uuid5(epcis_query.ID_NAMESPACE, f"custody:{SHIPMENT}:1")
    )
    rendered = epcis_query.render(scan())
    captured = {k: v for k, v in rendered.items() if k != "eventID"} | {
        "eventTime": "2026-12-01T10:00:00.25+01:00"
    }
    faithful = scan(epcis_event_id="urn:uuid:courier-event-1", epcis_event_hash=event_hash(captured))
    assert epcis_query.render(faithful)["eventID"] == "urn:uuid:courier-event-1"
    # the courier sent more than is kept (its sensor report): the captured id, with another hash, would be
    # a conflict if captured again, so the scan's own id is used
    other = scan(
        epcis_event_id="urn:uuid:courier-event-1", epcis_event_hash=event_hash(captured | {"bizStep": "x"})
    )
    assert epcis_query.render(other)["eventID"] == f"urn:uuid:{SCAN_ID}"


def test_a_retracted_scan_carries_an_error_declaration_and_keeps_its_id() -> None:
    retracted = epcis_query.render(scan(retracted_at=AT + timedelta(hours=1)))
    assert retracted["errorDeclaration"] == {"declarationTime": "2026-12-01T10:00:00.250000Z"}
    assert retracted["eventID"] == f"urn:uuid:{SCAN_ID}"


def test_a_page_of_every_kind_is_a_valid_query_document() -> None:
    events = [epcis_query.render(r) for r in (scan(), reading(), custody(), scan(ScanType.HAND_OFF))]
    document = epcis_query.query_document(events, AT)
    assert [e.message for e in epcis.default_validator().iter_errors(document)] == []
    assert document["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == events
    bad = document | {"type": "EPCISDocument"}
    assert list(epcis.default_validator().iter_errors(bad))  # the schema tells the two document types apart


def test_events_are_ordered_by_time_then_source_then_record() -> None:
    later = scan(device_time=AT + timedelta(seconds=1))
    records: list[epcis_query.Record] = [later, custody(), reading(), scan()]
    assert sorted(records, key=epcis_query.sort_key) == [scan(), reading(), custody(), later]
    assert epcis_query.sort_key(ReadingFacts(9, SHIPMENT, AT, 0.0, ())) < epcis_query.sort_key(reading())


# --- the parameters --------------------------------------------------------------------------------------


def test_no_parameter_is_every_event_30_at_a_time() -> None:
    assert parse_query([]) == EventQuery()
    assert EventQuery().per_page == 30


def test_parameters_parse_into_the_query() -> None:
    other = uuid.uuid4()
    query = parse_query(
        [
            ("eventType", "ObjectEvent|TransactionEvent"),
            ("GE_eventTime", "2026-12-01T10:00:00+01:00"),
            ("LT_eventTime", "2026-12-02T00:00:00Z"),
            ("EQ_bizStep", "shipping|urn:epcglobal:cbv:bizstep:receiving"),
            ("EQ_bizStep", "https://ref.gs1.org/cbv/BizStep-accepting"),
            (
                "MATCH_epc",
                f"{EPC}|https://id.gs1.org/8004/4012345{OTHER_COI}|urn:epc:id:sgtin:0614141.107346.2017",
            ),
            ("EQ_bizTransaction", f"urn:uuid:{SHIPMENT}|urn:uuid:{other}|http://po.example/1"),
            ("perPage", "100"),
        ]
    )
    assert query == EventQuery(
        event_types=frozenset({"ObjectEvent", "TransactionEvent"}),
        ge_event_time=datetime(2026, 12, 1, 9, tzinfo=UTC),
        lt_event_time=datetime(2026, 12, 2, tzinfo=UTC),
        biz_steps=frozenset({"shipping", "receiving", "accepting"}),
        cois=frozenset({COI, OTHER_COI}),
        shipment_ids=frozenset({SHIPMENT, other}),
        per_page=100,
    )
    assert query.scan_types() == [ScanType.PICK_UP, ScanType.DELIVERY, ScanType.RECEIPT]
    assert not query.wants_readings()


def test_both_forms_of_a_filter_narrow_together() -> None:
    both = parse_query([("MATCH_epc", EPC), ("MATCH_anyEPC", f"urn:epc:id:giai:4012345.{OTHER_COI}")])
    assert both.cois == frozenset()
    typed = parse_query(
        [("EQ_bizTransaction_desadv", f"urn:uuid:{SHIPMENT}"), ("EQ_bizTransaction", f"urn:uuid:{SHIPMENT}")]
    )
    assert typed.shipment_ids == frozenset({SHIPMENT})


def test_the_event_type_path_narrows_the_event_type_parameter() -> None:
    assert parse_query([], "TransactionEvent").event_types == frozenset({"TransactionEvent"})
    with pytest.raises(QueryParameterError) as raised:
        parse_query([("eventType", "TransactionEvent")], "TransactionEvent")
    assert raised.value.name == "eventType"
    assert parse_query([], "TransactionEvent").scan_types() == []
    assert parse_query([], "TransactionEvent").custody_scan_types() == list(epcis_query.SCAN_STEPS)


@pytest.mark.parametrize(
    ("items", "name"),
    [
        ([("EQ_disposition", "in_transit")], "EQ_disposition"),
        ([("limit", "5")], "limit"),
        ([("perPage", "0")], "perPage"),
        ([("perPage", "101")], "perPage"),
        ([("perPage", "ten")], "perPage"),
        ([("perPage", "5"), ("perPage", "6")], "perPage"),
        ([("GE_eventTime", "2026-12-01")], "GE_eventTime"),
        ([("LT_eventTime", "2026-12-01T09:00:00")], "LT_eventTime"),
        ([("eventType", "ObjectEvent|")], "eventType"),
        ([("eventType", "ShipmentEvent")], "eventType"),
        ([("EQ_bizStep", "|".join(["shipping"] * 51))], "EQ_bizStep"),
        ([("nextPageToken", "bm90LWEtdG9rZW4")], "nextPageToken"),
    ],
)
def test_a_bad_parameter_is_a_query_parameter_error_naming_it(
    items: list[tuple[str, str]], name: str
) -> None:
    with pytest.raises(QueryParameterError) as raised:
        parse_query(items)
    assert raised.value.name == name
    assert all(value not in raised.value.detail for _, value in items if len(value) > 3)


def test_the_page_token_round_trips_and_refuses_what_it_did_not_give() -> None:
    for token in (PageToken(AT, epcis_query.SCAN, str(SCAN_ID)), PageToken(AT, epcis_query.CUSTODY, "40")):
        assert epcis_query.decode_token(epcis_query.encode_token(token)) == token
        assert parse_query([("nextPageToken", epcis_query.encode_token(token))]).after == token
    assert epcis_query.token_after(reading()) == PageToken(AT, epcis_query.READING, "12")
    for forged in (
        epcis_query.encode_token(PageToken(AT, 7, "1")),
        epcis_query.encode_token(PageToken(AT, epcis_query.SCAN, "40")),
        epcis_query.encode_token(PageToken(AT, epcis_query.READING, str(SCAN_ID))),
        "W10",  # []
        "x" * 301,
    ):
        with pytest.raises(QueryParameterError):
            epcis_query.decode_token(forged)


def test_the_documented_example_is_a_valid_query_document() -> None:
    from services.coi_tracking.epcis_query_api import QUERY_EXAMPLE

    assert [e.message for e in epcis.default_validator().iter_errors(QUERY_EXAMPLE)] == []
    [event] = QUERY_EXAMPLE["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    [read] = read_back(event)
    assert isinstance(read, epcis.CapturedEvent) and read.scan_type is ScanType.RECEIPT


def test_both_forms_of_an_epc_filter_intersect_on_the_bags_they_name() -> None:
    both = parse_query(
        [("MATCH_epc", EPC), ("MATCH_anyEPC", f"https://id.gs1.org/8004/4012345{COI}|{OTHER_COI}")]
    )
    assert both.cois == frozenset({COI})
