"""A courier's system integrating in EPCIS 2.0 only (issue 19), on the real broker and both databases:
it captures the shipment's pick-up, a logger's readings and the delivery as EPCIS documents, then pulls
the whole chain of custody back with `GET /events` as an `EPCISQueryDocument` that validates against
GS1's schema. The treatment center pulls the same chain; another courier company sees none of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog
from services.coi_tracking import epcis
from tests.e2e.conftest import CENTER, COURIER, OTHER_COURIER, RunningStack
from tests.e2e.journey import place_released_order, shipment_for
from tests.e2e.test_epcis_capture import capture, epcis_document, object_event

pytestmark = pytest.mark.e2e


async def pull(
    http: httpx.AsyncClient, stack: RunningStack, caller: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    """Every event of the query, page after page by its `Link` rel="next", each page schema-valid."""
    validator = epcis.default_validator()
    events: list[dict[str, Any]] = []
    url: str | None = f"{stack.tracking}/events"
    query: dict[str, str] | None = {**params, "perPage": "2"}
    for _ in range(20):  # bounded: a token that did not move on fails here
        answer = await http.get(url, params=query, headers=caller) if url else None
        assert answer is not None and answer.status_code == 200, answer.text if answer else None
        assert answer.headers["gs1-epcis-version"] == "2.0.0"
        document = answer.json()
        assert [e.message for e in validator.iter_errors(document)] == []
        assert document["type"] == "EPCISQueryDocument"
        events += document["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
        link = answer.headers.get("link")
        if link is None:
            return events
        url, query = link.split(";")[0].strip("<> "), None
    raise AssertionError("the query's pages did not end")


async def test_a_courier_captures_in_epcis_and_pulls_the_whole_chain_back(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = (await shipment_for(http, stack, events, coi))["id"]
    start = datetime.now(UTC) - timedelta(minutes=5)

    def at(minutes: int, event: dict[str, Any], *, sensors: bool = False) -> dict[str, Any]:
        """The event at `start + minutes`; a scan without the sensor report (the logger's are separate)."""
        timed = {**event, "eventTime": (start + timedelta(minutes=minutes)).isoformat()}
        return timed if sensors else {k: v for k, v in timed.items() if k != "sensorElementList"}

    picked = at(0, object_event("shipping", [coi], shipment=shipment))
    reading = at(1, object_event("sensor_reporting", [coi], celsius=-180.0, shipment=shipment), sensors=True)
    delivered = at(2, object_event("receiving", [coi], shipment=shipment))
    for step in (picked, reading, delivered):
        answer = await capture(http, stack, epcis_document(step))
        assert answer.status_code == 202 and answer.json()["success"] is True, answer.text
    await events.wait_for(lambda e: e.type == "shipment.delivered.v1" and e.subject == coi)

    chain = await pull(http, stack, COURIER, EQ_bizTransaction=f"urn:uuid:{shipment}")

    steps = [(e["type"], e["bizStep"]) for e in chain]
    assert steps.count(("ObjectEvent", "shipping")) == 1 and steps.count(("ObjectEvent", "receiving")) == 1
    assert ("ObjectEvent", "sensor_reporting") in steps
    assert [s for s in steps if s[0] == "TransactionEvent"], "custody changes are in the chain"
    times = [e["eventTime"] for e in chain]
    assert times == sorted(times) and len({e["eventID"] for e in chain}) == len(chain)
    captured = {picked["eventID"], delivered["eventID"]}
    assert captured <= {e["eventID"] for e in chain}, "a captured scan keeps its eventID"
    assert await pull(http, stack, CENTER, EQ_bizTransaction=f"urn:uuid:{shipment}") == chain
    assert await pull(http, stack, OTHER_COURIER, EQ_bizTransaction=f"urn:uuid:{shipment}") == []
    only_sensors = await pull(
        http, stack, COURIER, EQ_bizTransaction=f"urn:uuid:{shipment}", EQ_bizStep="sensor_reporting"
    )
    assert only_sensors and {e["bizStep"] for e in only_sensors} == {"sensor_reporting"}

    again = await capture(http, stack, epcis_document(*[e for e in chain if e["eventID"] in captured]))
    assert [e["outcome"] for e in again.json()["events"]] == ["duplicate", "duplicate"]
