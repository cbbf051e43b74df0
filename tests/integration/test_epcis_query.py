"""GS1 EPCIS 2.0 query (`GET /events`) in process, on SQLite and PostgreSQL (no broker): a shipment that
went through pick-up, checkpoint, readings, delivery and receipt is returned as its whole chain of
custody in an EPCISQueryDocument the official schema accepts; every filter narrows, paging returns every
event once, the caller's scope hides other parties' shipments, and the scans captured again are
duplicates."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cgt_contracts.events import ShipmentLeg
from fastapi.testclient import TestClient
from jsonschema.protocols import Validator

from services.coi_tracking import epcis
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import TABLES as TRACKING_TABLES
from services.coi_tracking.models import Bag, Courier, Shipment
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from tests.integration.test_scoping import service_module
from tests.support.infra import database

TOKENS = {
    "tokens": {
        "coordinator": {"subject": "coord", "role": "coordinator"},
        "qa": {"subject": "qa-rita", "role": "qa"},
        "boston": {"subject": "boston-desk", "role": "treatment_center", "treatment_center_id": "TC-BOSTON"},
        "denver": {"subject": "denver-desk", "role": "treatment_center", "treatment_center_id": "TC-DENVER"},
        "cryo": {"subject": "courier-ben", "role": "courier", "courier_company": "CRYO-EXPRESS"},
        "other": {"subject": "courier-dee", "role": "courier", "courier_company": "OTHER-LOGISTICS"},
    }
}
COORDINATOR, QA = {"Authorization": "Bearer coordinator"}, {"Authorization": "Bearer qa"}
BOSTON, DENVER = {"Authorization": "Bearer boston"}, {"Authorization": "Bearer denver"}
CRYO, OTHER = {"Authorization": "Bearer cryo"}, {"Authorization": "Bearer other"}
BOSTON_COI, DENVER_COI, OTHER_COI = "CHW4321260000014", "CHW43212600000M*", "CHW4321260000022"
DOCK, HUB, WARD = (
    "urn:epc:id:sgln:4012345.00001.0",
    "urn:epc:id:sgln:4012345.00002.0",
    "urn:epc:id:sgln:4012345.00003.0",
)
STANDARD_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"


@dataclass
class Chain:
    client: TestClient
    ids: dict[str, str]
    start: datetime
    captured: dict[str, str]
    """The eventIDs of the scans captured, by bizStep."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Three released return shipments — Boston's and Denver's carried by CRYO-EXPRESS, another of
    Boston's by OTHER-LOGISTICS — Boston's taken through its whole journey over POST /capture and
    /readings, the two others picked up."""
    kind = str(request.param)
    module = service_module("coi_tracking", tmp_path_factory)
    ids: dict[str, str] = {}
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    with database(kind, tmp_path_factory.mktemp(kind), [*COMMON_TABLES, *TRACKING_TABLES]) as engine:
        with session_factory(engine)() as session:
            for name, coi, site, company in (
                ("boston", BOSTON_COI, "TC-BOSTON", "CRYO-EXPRESS"),
                ("denver", DENVER_COI, "TC-DENVER", "CRYO-EXPRESS"),
                ("other", OTHER_COI, "TC-BOSTON", "OTHER-LOGISTICS"),
            ):
                shipment = Shipment(
                    order_id=uuid.uuid4(),
                    coi=coi,
                    leg=ShipmentLeg.RETURN,
                    treatment_center_id=site,
                    courier_company=company,
                    storage_limit_celsius=-150.0,
                    destination=site,
                    custodian="manufacturer:AGC-MILAN",
                    status=ShipmentStatus.PLANNED,
                    physical_status=ShipmentStatus.PLANNED,
                    product_released_at=start - timedelta(hours=1),
                    created_at=start - timedelta(hours=2),
                )
                session.add(shipment)
                session.flush()
                ids[name] = str(shipment.id)
                session.add(Bag(shipment_id=shipment.id, coi=coi, number=1, of=1))
            session.add(Courier(id="courier-ben", company="CRYO-EXPRESS"))
            session.add(Courier(id="courier-dee", company="OTHER-LOGISTICS"))
            session.commit()
        settings = module.TrackingSettings(
            database_url=engine.url.render_as_string(hide_password=False),
            cgt_api_tokens=json.dumps(TOKENS),
            log_level="WARNING",
        )
        client = TestClient(module.create_app(settings))  # used without `with`: its lifespan never runs
        captured: dict[str, str] = {}
        boston = ids["boston"]
        steps = (
            ("shipping", 0, DOCK),
            ("arriving", 30, HUB),
            ("receiving", 90, WARD),
            ("accepting", 100, WARD),
        )
        for step, minutes, where in steps:
            event = scan_event(step, BOSTON_COI, boston, start + timedelta(minutes=minutes), where)
            captured[step] = event["eventID"]
            assert_applied(capture(client, CRYO, event))
            if step == "arriving":  # the shipper's sensor on the way, then the logger's record
                report = sensor_event(BOSTON_COI, boston, start + timedelta(minutes=45), -181.5)
                assert_applied(capture(client, CRYO, report))
                logged = {
                    "logger_id": "LOG-7",
                    "readings": [
                        {"at": (start + timedelta(minutes=m)).isoformat(), "celsius": c}
                        for m, c in ((50, -182.0), (60, -181.0))
                    ],
                }
                answer = client.post(f"/shipments/{boston}/readings", json=logged, headers=CRYO)
                assert answer.status_code == 201 and answer.json()["quarantined"] is False, answer.text
        assert_applied(capture(client, CRYO, scan_event("shipping", DENVER_COI, ids["denver"], start, DOCK)))
        assert_applied(capture(client, OTHER, scan_event("shipping", OTHER_COI, ids["other"], start, DOCK)))
        yield Chain(client, ids, start, captured)
        client.close()


def scan_event(step: str, coi: str, shipment: str, at: datetime, where: str) -> dict[str, Any]:
    """A courier system's scan in the form the query renders (no sensor report: that is its own event)."""
    return {
        "type": "ObjectEvent",
        "eventID": f"urn:uuid:{uuid.uuid4()}",
        "eventTime": at.isoformat(),
        "eventTimeZoneOffset": "+00:00",
        "epcList": [f"urn:epc:id:giai:4012345.{coi}"],
        "action": "OBSERVE",
        "bizStep": step,
        "readPoint": {"id": where},
        "bizTransactionList": [{"type": "desadv", "bizTransaction": f"urn:uuid:{shipment}"}],
    }


def sensor_event(coi: str, shipment: str, at: datetime, celsius: float) -> dict[str, Any]:
    return scan_event("sensor_reporting", coi, shipment, at, HUB) | {
        "sensorElementList": [{"sensorReport": [{"type": "Temperature", "value": celsius, "uom": "CEL"}]}]
    }


def capture(client: TestClient, caller: dict[str, str], *events: dict[str, Any]) -> httpx.Response:
    document = {
        "@context": [STANDARD_CONTEXT],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": datetime.now(UTC).isoformat(),
        "epcisBody": {"eventList": list(events)},
    }
    answer: httpx.Response = client.post(
        "/capture",
        content=json.dumps(document),
        headers={**caller, "Content-Type": "application/ld+json", "GS1-Capture-Error-Behaviour": "proceed"},
    )
    return answer


def assert_applied(answer: httpx.Response) -> None:
    assert answer.status_code == 202, answer.text
    assert [e["outcome"] for e in answer.json()["events"]] == ["applied"], answer.text
    scan = answer.json()["events"][0]["scan"]
    assert scan is None or scan["accepted"] is True, answer.text


@pytest.fixture(scope="module")
def validator() -> Validator:
    return epcis.default_validator()


def query(client: TestClient, caller: dict[str, str], path: str = "/events", **params: str) -> httpx.Response:
    answer: httpx.Response = client.get(path, params=params, headers=caller)
    return answer


def events_of(answer: httpx.Response, validator: Validator) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["GS1-EPCIS-Version"] == "2.0.0" and answer.headers["GS1-CBV-Version"] == "2.0.0"
    document = answer.json()
    assert [e.message for e in validator.iter_errors(document)] == []
    assert document["type"] == "EPCISQueryDocument"
    return list(document["epcisBody"]["queryResults"]["resultsBody"]["eventList"])


def shape(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    return [(e["type"], e.get("bizStep"), e["eventTime"]) for e in events]


def at(chain: Chain, minutes: int) -> str:
    return (chain.start + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def whole_chain(chain: Chain) -> list[tuple[str, str | None, str]]:
    """Boston's chain of custody, in event order (scans before custody entries at the same instant)."""
    return [
        ("ObjectEvent", "shipping", at(chain, 0)),
        ("TransactionEvent", "shipping", at(chain, 0)),
        ("ObjectEvent", "arriving", at(chain, 30)),
        ("ObjectEvent", "sensor_reporting", at(chain, 45)),
        ("ObjectEvent", "sensor_reporting", at(chain, 50)),
        ("ObjectEvent", "sensor_reporting", at(chain, 60)),
        ("ObjectEvent", "receiving", at(chain, 90)),
        ("TransactionEvent", "receiving", at(chain, 90)),
        ("ObjectEvent", "accepting", at(chain, 100)),
    ]


def test_the_whole_chain_of_custody_is_one_valid_query_document(chain: Chain, validator: Validator) -> None:
    boston = chain.ids["boston"]
    events = events_of(query(chain.client, BOSTON, EQ_bizTransaction=f"urn:uuid:{boston}"), validator)
    assert shape(events) == whole_chain(chain)
    scans = [e for e in events if e["type"] == "ObjectEvent" and e["bizStep"] != "sensor_reporting"]
    # each captured scan keeps its captured eventID: the rendering has the captured event hash
    assert [e["eventID"] for e in scans] == [
        chain.captured[s] for s in ("shipping", "arriving", "receiving", "accepting")
    ]
    assert [e["readPoint"] for e in scans] == [{"id": DOCK}, {"id": HUB}, {"id": WARD}, {"id": WARD}]
    epc = f"urn:epc:id:giai:4012345.{BOSTON_COI}"
    assert all(e["epcList"] == [epc] for e in events)
    assert all(
        e["bizTransactionList"] == [{"type": "desadv", "bizTransaction": f"urn:uuid:{boston}"}]
        for e in events
    )
    readings = [
        e["sensorElementList"][0]["sensorReport"][0] for e in events if e["bizStep"] == "sensor_reporting"
    ]
    assert readings == [{"type": "Temperature", "value": c, "uom": "CEL"} for c in (-181.5, -182.0, -181.0)]
    custody = [(e["sourceList"], e["destinationList"]) for e in events if e["type"] == "TransactionEvent"]
    assert custody == [
        (
            [{"type": "owning_party", "source": "urn:cgt:party:manufacturer:AGC-MILAN"}],
            [{"type": "owning_party", "destination": "urn:cgt:party:courier-ben"}],
        ),
        (
            [{"type": "owning_party", "source": "urn:cgt:party:courier-ben"}],
            [{"type": "owning_party", "destination": "urn:cgt:party:TC-BOSTON"}],
        ),
    ]
    again = events_of(query(chain.client, COORDINATOR, EQ_bizTransaction=f"urn:uuid:{boston}"), validator)
    assert again == events  # the same ids, the same events, whoever asks and however often
    assert len({e["eventID"] for e in events}) == len(events)


def test_each_filter_narrows_the_chain(chain: Chain, validator: Validator) -> None:
    boston, full = chain.ids["boston"], whole_chain(chain)
    mine = {"EQ_bizTransaction": f"urn:uuid:{boston}"}

    def narrowed(**params: str) -> list[tuple[str, str | None, str]]:
        return shape(events_of(query(chain.client, COORDINATOR, **mine, **params), validator))

    assert narrowed(eventType="TransactionEvent") == [e for e in full if e[0] == "TransactionEvent"]
    assert narrowed(eventType="ObjectEvent") == [e for e in full if e[0] == "ObjectEvent"]
    assert narrowed(eventType="AggregationEvent|TransformationEvent") == []
    assert narrowed(EQ_bizStep="shipping") == [e for e in full if e[1] == "shipping"]
    assert narrowed(EQ_bizStep="receiving|https://ref.gs1.org/cbv/BizStep-accepting") == full[6:]
    assert narrowed(EQ_bizStep="sensor_reporting", eventType="ObjectEvent") == full[3:6]
    assert narrowed(GE_eventTime=at(chain, 30), LT_eventTime=at(chain, 90)) == full[2:6]
    assert narrowed(GE_eventTime=at(chain, 90)) == full[6:]
    assert narrowed(LT_eventTime=at(chain, 0)) == []
    epc = f"urn:epc:id:giai:4012345.{BOSTON_COI}"
    assert narrowed(MATCH_epc=epc) == full
    assert narrowed(MATCH_anyEPC=f"https://id.gs1.org/8004/4012345{DENVER_COI}") == []
    # Without the shipment: MATCH_epc alone finds Boston's chain among every shipment's events
    by_epc = events_of(query(chain.client, COORDINATOR, MATCH_epc=epc), validator)
    assert shape(by_epc) == full
    denver = events_of(
        query(chain.client, COORDINATOR, EQ_bizTransaction=f"urn:uuid:{chain.ids['denver']}"), validator
    )
    assert shape(denver) == [
        ("ObjectEvent", "shipping", at(chain, 0)),
        ("TransactionEvent", "shipping", at(chain, 0)),
    ]
    assert (
        events_of(query(chain.client, COORDINATOR, EQ_bizTransaction="urn:uuid:not-a-uuid"), validator) == []
    )
    of_type = events_of(
        query(chain.client, COORDINATOR, "/eventTypes/TransactionEvent/events", **mine), validator
    )
    assert shape(of_type) == [e for e in full if e[0] == "TransactionEvent"]
    types = chain.client.get("/eventTypes", headers=COORDINATOR)
    assert types.status_code == 200 and types.json() == ["ObjectEvent", "TransactionEvent"]


def test_paging_returns_every_event_once(chain: Chain, validator: Validator) -> None:
    everything = events_of(query(chain.client, COORDINATOR, perPage="100"), validator)
    assert len(everything) == 9 + 2 + 2  # Boston's chain, Denver's and the other pick-up, each with custody
    assert "Link" not in query(chain.client, COORDINATOR, perPage="100").headers
    for per_page in (1, 2, 4):
        pages = walk(chain, validator, perPage=str(per_page))
        assert [e for page in pages for e in page] == everything
        assert [len(page) for page in pages] == [per_page] * (13 // per_page) + [13 % per_page] * (
            13 % per_page > 0
        )
    # the token keeps the filters of the URL it came with
    custody = [e for e in everything if e["type"] == "TransactionEvent"]
    pages = walk(chain, validator, perPage="1", eventType="TransactionEvent")
    assert [e for page in pages for e in page] == custody and len(pages) == 4


MAX_PAGES = 20
"""More pages than any walk here needs: a token that does not move on fails the walk, never hangs it."""


def walk(chain: Chain, validator: Validator, **params: str) -> list[list[dict[str, Any]]]:
    """Every page of a query, following `Link: <...>; rel="next"` (each with the query's parameters)."""
    answer, pages = query(chain.client, COORDINATOR, **params), []
    for _ in range(MAX_PAGES):
        pages.append(events_of(answer, validator))
        link = answer.headers.get("Link")
        if link is None:
            return pages
        url, _, rel = link.partition(">; ")
        assert rel == 'rel="next"' and url.startswith("<http://testserver/events?"), link
        for name, value in params.items():
            assert f"{name}={value}" in url
        answer = chain.client.get(url[1:], headers=COORDINATOR)
    raise AssertionError(f"more than {MAX_PAGES} pages: the next page token does not move on")


def test_each_caller_sees_only_the_shipments_it_may(chain: Chain, validator: Validator) -> None:
    ids = chain.ids

    def shipments_seen(caller: dict[str, str]) -> set[str]:
        events = events_of(query(chain.client, caller, perPage="100"), validator)
        return {e["bizTransactionList"][0]["bizTransaction"].removeprefix("urn:uuid:") for e in events}

    assert shipments_seen(COORDINATOR) == shipments_seen(QA) == set(ids.values())
    assert shipments_seen(BOSTON) == {ids["boston"], ids["other"]}
    assert shipments_seen(DENVER) == {ids["denver"]}
    assert shipments_seen(CRYO) == {ids["boston"], ids["denver"]}
    assert shipments_seen(OTHER) == {ids["other"]}
    # naming another's shipment finds nothing, exactly as naming one that does not exist
    for caller, elsewhere in ((DENVER, ids["boston"]), (OTHER, ids["boston"]), (CRYO, ids["other"])):
        named = query(chain.client, caller, EQ_bizTransaction=f"urn:uuid:{elsewhere}")
        assert events_of(named, validator) == []
        assert elsewhere not in named.text
    epc = f"urn:epc:id:giai:4012345.{BOSTON_COI}"
    for caller, count in ((DENVER, 0), (OTHER, 0), (CRYO, 9), (BOSTON, 9)):
        assert len(events_of(query(chain.client, caller, MATCH_epc=epc), validator)) == count
    assert chain.client.get("/events").status_code == 401


def test_a_parameter_it_does_not_take_is_a_query_parameter_exception(chain: Chain) -> None:
    for params, name in (
        ({"EQ_disposition": "in_transit"}, "EQ_disposition"),
        ({"site": "TC-DENVER"}, "site"),
        ({"perPage": "0"}, "perPage"),
        ({"perPage": "101"}, "perPage"),
        ({"GE_eventTime": "yesterday"}, "GE_eventTime"),
        ({"GE_eventTime": "2026-12-01T09:00:00"}, "GE_eventTime"),
        ({"eventType": "ShipmentEvent"}, "eventType"),
        ({"nextPageToken": "bm90LWEtdG9rZW4"}, "nextPageToken"),
    ):
        answer = query(chain.client, COORDINATOR, **params)
        assert answer.status_code == 400, (params, answer.text)
        body = answer.json()
        assert body["title"] == "QueryParameterException"
        assert body["type"] == "epcisException:QueryParameterException"
        assert [(e["location"], e["pointer"]) for e in body["errors"]] == [("query", f"/{name}")]
        assert all(value not in answer.text for value in params.values() if len(value) > 4)


def test_the_scans_captured_again_are_duplicates(chain: Chain, validator: Validator) -> None:
    """The strongest proof the mapping is faithful: the query's scan events, posted back by the courier
    who captured them, have the captured eventIDs AND event hashes. Custody TransactionEvents carry no
    temperature and no scan: captured, they are applied as an event with no temperatures and change
    nothing the query returns (a reading captured again would be stored again: see docs/epcis.md)."""
    boston = chain.ids["boston"]
    before = events_of(query(chain.client, CRYO, EQ_bizTransaction=f"urn:uuid:{boston}"), validator)
    scans = [e for e in before if e["type"] == "ObjectEvent" and e["bizStep"] != "sensor_reporting"]
    custody = [e for e in before if e["type"] == "TransactionEvent"]
    answer = capture(chain.client, CRYO, *scans, *custody)
    assert answer.status_code == 202, answer.text
    outcomes = [(e["event_id"], e["outcome"], e["reason"]) for e in answer.json()["events"]]
    assert outcomes == [
        *((e["eventID"], "duplicate", "this eventID was captured before") for e in scans),
        *((e["eventID"], "applied", "readings: no temperatures") for e in custody),
    ]
    after = events_of(query(chain.client, CRYO, EQ_bizTransaction=f"urn:uuid:{boston}"), validator)
    assert after == before
