"""Minimum necessary (I6) on every channel, on the real broker, SQLite and PostgreSQL: text a person typed —
a coordinator's cancellation note and reschedule note, a courier's scan location, a QA signer's note — is
in no record on any topic (dead-letter topics included), in no webhook a site receives and in no log line,
and in no other service's database; the service that received it keeps it and answers it through its API.

Each text carries a marker of this run, so that a leak is found wherever it went, whole."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, create_engine

from deploy.observe import EventLog, ReceivedWebhook, WebhookListener
from services.common.development import DEV_QA_SIGNING_PIN
from services.common.topics import ALL_TOPICS
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, QA, RunningStack
from tests.e2e.journey import (
    book_first_option,
    place_accepted_order,
    place_released_order,
    record_collection_and_manufacturing,
    scan,
    shipment_for,
)

pytestmark = pytest.mark.e2e

OWNER = {
    "cancel": "order-intake",
    "failure": "order-intake",
    "location": "coi-tracking",
    "qa": "coi-tracking",
    "move": "scheduling",
}
"""Which service receives each text, and alone keeps it."""


@pytest.fixture
async def every_topic(stack: RunningStack) -> AsyncIterator[EventLog]:
    """Every record of every topic, the dead-letter topics too, valid events or not."""
    log = EventLog(stack.kafka, [t.name for t in ALL_TOPICS])
    await log.start()
    yield log
    await log.stop()


def typed_texts() -> dict[str, str]:
    marker = f"SENTINEL-{uuid.uuid4().hex[:10]}"
    return {
        "cancel": f"{marker} cancel: mother called, the family moved to Ohio",
        "failure": f"{marker} failure: mycoplasma positive on day 12, batch record p. 4",
        "location": f"{marker} loc: Dock 7 behind Gate B",
        "qa": f"{marker} qa: probe read -171 °C in the dewar",
        "move": f"{marker} move: patient asked for Friday",
    }


def database_text(stack: RunningStack, service: str) -> str:
    """Every row of every table of the service's database, as text."""
    engine = create_engine(
        stack.stack.database_urls[service].replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return "\n".join(
                repr(tuple(row))
                for table in metadata.sorted_tables
                for row in connection.execute(table.select())
            )
    finally:
        engine.dispose()


async def quarantined_released_and_moved(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, texts: dict[str, str]
) -> dict[str, Any]:
    """A return shipment scanned at a location typed by the courier, quarantined for a warm reading there,
    released by QA with a note, its appointment moved by a coordinator with a note."""
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = (await shipment_for(http, stack, events, coi))["id"]
    scans = f"{stack.tracking}/shipments/{shipment}/scans"
    picked = await http.post(scans, json=scan("pick_up", [coi], location=texts["location"]), headers=COURIER)
    assert picked.json()["accepted"], picked.text
    booked = await book_first_option(http, stack, events, coi)
    warm = await http.post(
        scans, json=scan("checkpoint", [coi], location=texts["location"], temperature=-120.0), headers=COURIER
    )
    assert warm.json()["quarantined"], warm.text
    await events.wait_for(lambda e: e.type == "slot.held.v2" and e.subject == coi)
    released = await http.post(
        f"{stack.tracking}/shipments/{shipment}/dispositions",
        json={
            "decision": "release",
            "reason_code": "product_within_limits",
            "note": texts["qa"],
            "meaning": "approval",
            "signing_pin": DEV_QA_SIGNING_PIN,
        },
        headers=QA,
    )
    assert released.status_code == 201, released.text
    await events.wait_for(lambda e: e.type == "slot.resumed.v2" and e.subject == coi)
    options = (await http.get(f"{stack.scheduling}/cases/{coi}", headers=COORDINATOR)).json()["options"]
    moved = await http.post(
        f"{stack.scheduling}/appointments/{booked['id']}/reschedule",
        json={"option_id": options[1]["option_id"], "reason_code": "patient_request", "note": texts["move"]},
        headers=COORDINATOR,
    )
    assert moved.status_code == 200, moved.text
    await events.wait_for(lambda e: e.type == "slot.rescheduled.v2" and e.subject == coi)
    return {
        "coi": coi,
        "shipment": shipment,
        "appointment": booked["id"],
        "disposition": released.json()["id"],
    }


async def cancelled_with_a_note(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, texts: dict[str, str]
) -> dict[str, Any]:
    """A booked order cancelled by a coordinator with a note: its shipment and appointment follow."""
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = (await shipment_for(http, stack, events, coi))["id"]
    picked = await http.post(
        f"{stack.tracking}/shipments/{shipment}/scans", json=scan("pick_up", [coi]), headers=COURIER
    )
    assert picked.json()["accepted"], picked.text
    booked = await book_first_option(http, stack, events, coi)
    cancelled = await http.post(
        f"{stack.orders}/orders/{order['id']}/cancel",
        json={"reason_code": "patient_withdrew", "note": texts["cancel"]},
        headers=COORDINATOR,
    )
    assert cancelled.status_code == 200, cancelled.text
    event = await events.wait_for(lambda e: e.type == "slot.cancelled.v2" and e.subject == coi)
    assert event.data.reason_code == "order_cancelled"  # type: ignore[union-attr]
    return {"coi": coi, "order": order["id"], "shipment": shipment, "appointment": booked["id"]}


async def told(listener: WebhookListener, coi: str, kind: str) -> ReceivedWebhook:
    def matches(hook: ReceivedWebhook) -> bool:
        return bool(hook.json()["coi"] == coi and hook.json()["kind"] == kind)

    return await asyncio.to_thread(listener.wait_for, matches)


async def failed_with_a_note(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog, texts: dict[str, str]
) -> dict[str, Any]:
    """A lot recorded failed by a coordinator with a note: COI tracking closes its return leg."""
    order = await place_accepted_order(http, stack)
    coi = order["coi"]
    await record_collection_and_manufacturing(http, stack, order["id"])
    failed = await http.post(
        f"{stack.orders}/orders/{order['id']}/manufacturing-failure",
        json={"reason_code": "sterility_failure", "note": texts["failure"]},
        headers=COORDINATOR,
    )
    assert failed.status_code == 201, failed.text
    await events.wait_for(lambda e: e.type == "manufacturing.failed.v1" and e.subject == coi)
    for _ in range(300):  # COI tracking has taken it: the next lot's return leg is planned
        legs = [e for e in events.of(coi) if e.type == "shipment.created.v1" and e.data.leg == "return"]
        if len(legs) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(legs) == 2
    return {"coi": coi, "order": order["id"]}


async def test_text_a_person_typed_stays_with_the_service_that_received_it(
    stack: RunningStack, http: httpx.AsyncClient, every_topic: EventLog, webhook_listener: WebhookListener
) -> None:
    registered = await http.post(
        f"{stack.scheduling}/webhooks", json={"url": webhook_listener.url}, headers=CENTER
    )
    assert registered.status_code == 201, registered.text
    texts = typed_texts()
    held = await quarantined_released_and_moved(http, stack, every_topic, texts)
    ended = await cancelled_with_a_note(http, stack, every_topic, texts)
    lot = await failed_with_a_note(http, stack, every_topic, texts)

    # The site was told each step by codes; a patient's webhooks go out in order, so these are the last.
    moved = await told(webhook_listener, held["coi"], "slot.rescheduled")
    assert moved.json()["reason_code"] == "patient_request"
    cancelled = await told(webhook_listener, ended["coi"], "slot.cancelled")
    assert cancelled.json()["reason_code"] == "order_cancelled"
    await every_topic.wait_for(lambda e: e.type == "shipment.released.v2" and e.subject == held["coi"])
    await every_topic.wait_for(lambda e: e.type == "order.cancelled.v2" and e.subject == ended["coi"])

    # Nowhere they must not be: no record (value or header) on any topic, no webhook, no log line, no
    # other service's database.
    records = [(topic, value or b"", headers) for topic, value, headers in every_topic.raw]
    assert records, "the topics were read"
    webhooks = [hook.body for hook in webhook_listener.received]
    assert len(webhooks) >= 6, [hook.json()["kind"] for hook in webhook_listener.received]
    logs = {
        name: service.log_path.read_text(errors="replace") for name, service in stack.stack.services.items()
    }
    databases = {name: database_text(stack, name) for name in OWNER.values()}
    for what, typed in texts.items():
        needle = typed.encode()
        leaked_to = [
            topic
            for topic, value, headers in records
            if needle in value or needle in b"".join(headers.values())
        ]
        assert leaked_to == [], f"the {what} text is on {sorted(set(leaked_to))}"
        assert not [body for body in webhooks if needle in body], f"the {what} text is in a webhook"
        assert [name for name, log in logs.items() if typed in log] == [], f"the {what} text is logged"
        elsewhere = [name for name, rows in databases.items() if typed in rows and name != OWNER[what]]
        assert elsewhere == [], f"the {what} text is in the database of {elsewhere}"
        assert typed in databases[OWNER[what]], f"{OWNER[what]} keeps the {what} text"

    # The owners answer them to those who may read the record.
    order = (await http.get(f"{stack.orders}/orders/{ended['order']}", headers=CENTER)).json()
    assert (order["cancelled_reason_code"], order["cancelled_note"]) == ("patient_withdrew", texts["cancel"])
    [failure] = (
        await http.get(f"{stack.orders}/orders/{lot['order']}/manufacturing-failures", headers=CENTER)
    ).json()
    assert (failure["reason_code"], failure["note"]) == ("sterility_failure", texts["failure"])
    tracking = f"{stack.tracking}/shipments/{held['shipment']}"
    scans = (await http.get(f"{tracking}/scans", headers=COURIER)).json()
    assert [s["location"] for s in scans] == [texts["location"], texts["location"]]
    ledger = (await http.get(f"{tracking}/ledger", headers=COORDINATOR)).json()
    assert ledger["valid"] and texts["location"] in [entry["location"] for entry in ledger["entries"]]
    [disposition] = (await http.get(f"{tracking}/dispositions", headers=QA)).json()
    assert (disposition["id"], disposition["reason_code"], disposition["note"]) == (
        held["disposition"],
        "product_within_limits",
        texts["qa"],
    )
    appointment = (
        await http.get(f"{stack.scheduling}/appointments/{held['appointment']}", headers=CENTER)
    ).json()
    assert (appointment["reason_code"], appointment["note"]) == ("patient_request", texts["move"])
