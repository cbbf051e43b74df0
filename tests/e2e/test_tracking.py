"""COI tracking through its HTTP API on the real broker and database: scans, readings, QA, the ledger."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session, col, select

from deploy.observe import EventLog, WebhookListener
from services.coi_tracking import ledger, verify
from services.coi_tracking.domain import GENESIS_SHA256, entry_hash
from services.coi_tracking.models import LedgerEntry, Shipment
from services.common.development import DEV_QA_SIGNING_PIN
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, OTHER_COURIER, QA, RunningStack
from tests.e2e.journey import (
    book_first_option,
    place_accepted_order,
    place_released_order,
    record_collection_and_manufacturing,
    scan,
    shipment_for,
)
from tests.support.infra import publish_courier_scan, wait_committed

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


async def new_return_shipment(
    http: httpx.AsyncClient, stack: RunningStack, events: EventLog
) -> tuple[str, str]:
    order = await place_released_order(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    return order["coi"], shipment["id"]


def now(minutes: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


async def test_every_scan_is_stored_and_a_refused_one_is_explained_and_published(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    early = await http.post(
        f"{stack.tracking}/shipments/{shipment}/scans", json=scan("delivery", [coi]), headers=COURIER
    )
    assert early.status_code == 201
    assert early.json()["accepted"] is False
    assert "cannot follow a shipment that is planned" in early.json()["refusal_reason"]
    published = await events.wait_for(
        lambda e: e.type == "shipment.scanned.v2" and str(e.data.scan_id) == early.json()["scan_id"]
    )
    assert published.data.accepted is False and published.data.refusal_code == "out_of_sequence"  # type: ignore[union-attr]
    stored = (await http.get(f"{stack.tracking}/shipments/{shipment}/scans", headers=COORDINATOR)).json()
    assert [(s["scan_type"], s["accepted"]) for s in stored] == [("delivery", False)]


async def test_a_missing_bag_is_a_coi_break(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    result = (
        await http.post(
            f"{stack.tracking}/shipments/{shipment}/scans", json=scan("pick_up", []), headers=COURIER
        )
    ).json()
    assert (
        result["coi_verified"] is False
        and result["quarantined"]
        and "1 of 1 bags not scanned" in result["quarantine_reason"]
    )
    await events.wait_for(lambda e: e.type == "coi.break.v1" and e.subject == coi)


async def test_couriers_scan_and_post_readings_only_for_their_company(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    assert (
        await http.post(f"{base}/scans", json=scan("pick_up", [coi]), headers=OTHER_COURIER)
    ).status_code == 403
    readings = {"logger_id": "LG-1", "readings": [{"at": now(), "celsius": -180.0}]}
    assert (await http.post(f"{base}/readings", json=readings, headers=OTHER_COURIER)).status_code == 403
    assert (await http.post(f"{base}/scans", json=scan("pick_up", [coi]), headers=QA)).status_code == 403


async def test_a_warm_logger_reading_quarantines_and_the_series_reads_back(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.post(f"{base}/scans", json=scan("pick_up", [coi]), headers=COURIER)
    batch = [{"at": now(i * 5 - 20), "celsius": c} for i, c in enumerate([-185.0, -182.0, -140.0, -181.0])]
    result = await http.post(
        f"{base}/readings", json={"logger_id": "LG-7", "readings": batch}, headers=COURIER
    )
    assert result.status_code == 201
    assert result.json()["quarantined"] is True and "-140.0 °C" in result.json()["excursions"][0]
    excursion = await events.wait_for(lambda e: e.type == "temperature.excursion.v1" and e.subject == coi)
    assert excursion.data.reading_celsius == -140.0  # type: ignore[union-attr]
    await events.wait_for(lambda e: e.type == "shipment.quarantined.v2" and e.subject == coi)
    series = (await http.get(f"{base}/readings", headers=COORDINATOR)).json()
    assert [r["celsius"] for r in series if r["source"] == "logger:LG-7"] == [-185.0, -182.0, -140.0, -181.0]


async def test_a_logger_gap_and_a_spent_dry_shipper_are_excursions(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    declared = await http.put(
        f"{base}/container",
        json={
            "container_id": "DS-GAP-1",
            "charged_at": now(-60),
            "validated_hold_hours": 240,
            "seal_id": "SEAL-1",
            "logger_interval_minutes": 5,
        },
        headers=COURIER,
    )
    assert declared.status_code == 200 and declared.json()["container"]["id"] == "DS-GAP-1"
    picked = await http.post(
        f"{base}/scans",
        json=scan("pick_up", [coi], container_id="DS-GAP-1", seal_id="SEAL-1"),
        headers=COURIER,
    )
    assert picked.json()["quarantined"] is False
    batch = [{"at": now(m), "celsius": -180.0} for m in (-50, -45, -40, -5)]  # a logger download: past
    result = (
        await http.post(f"{base}/readings", json={"logger_id": "LG-9", "readings": batch}, headers=COURIER)
    ).json()
    assert result["quarantined"] and any("no reading from" in e for e in result["excursions"])

    coi2, shipment2 = await new_return_shipment(http, stack, events)
    spent = f"{stack.tracking}/shipments/{shipment2}"
    await http.put(
        f"{spent}/container",
        json={"container_id": "DS-OLD-1", "charged_at": now(-11 * 24 * 60), "validated_hold_hours": 240},
        headers=COURIER,
    )
    late = (await http.post(f"{spent}/scans", json=scan("pick_up", [coi2]), headers=COURIER)).json()
    assert late["quarantined"] and "hold time" in late["quarantine_reason"]


async def test_another_container_or_seal_than_the_one_packed_is_a_coi_break(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.put(
        f"{base}/container",
        json={
            "container_id": "DS-A",
            "charged_at": now(-30),
            "validated_hold_hours": 240,
            "seal_id": "SEAL-A",
        },
        headers=COURIER,
    )
    result = (
        await http.post(
            f"{base}/scans",
            json=scan("pick_up", [coi], container_id="DS-B", seal_id="SEAL-A"),
            headers=COURIER,
        )
    ).json()
    assert result["coi_verified"] is False and "container 'DS-B'" in result["quarantine_reason"]
    assert (
        await http.put(
            f"{base}/container",
            json={"container_id": "DS-C", "charged_at": now(), "validated_hold_hours": 1},
            headers=COURIER,
        )
    ).status_code == 409


async def test_a_delay_scan_publishes_the_new_eta(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}/scans"
    await http.post(base, json=scan("pick_up", [coi]), headers=COURIER)
    new_eta = (datetime.now(UTC) + timedelta(days=4)).replace(microsecond=0)
    delayed = await http.post(
        base, json=scan("delay", [coi], location="Frankfurt hub", eta_at=new_eta.isoformat()), headers=COURIER
    )
    assert delayed.json()["accepted"] and delayed.json()["shipment_status"] == "in_transit"
    event = await events.wait_for(lambda e: e.type == "shipment.delayed.v2" and e.subject == coi)
    assert event.data.eta_at == new_eta and event.data.previous_eta_at is not None  # type: ignore[union-attr]
    assert str(event.data.scan_id) == delayed.json()["scan_id"]  # type: ignore[union-attr]
    read = (await http.get(f"{stack.tracking}/shipments/{shipment}", headers=COORDINATOR)).json()
    assert datetime.fromisoformat(read["eta_at"].replace("Z", "+00:00")) == new_eta


async def test_a_qa_release_lets_a_quarantined_delivery_be_confirmed(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    assert (
        await http.post(f"{stack.scheduling}/webhooks", json={"url": webhook_listener.url}, headers=CENTER)
    ).status_code == 201
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.post(f"{base}/scans", json=scan("pick_up", [coi]), headers=COURIER)
    await book_first_option(http, stack, events, coi)
    warm = await http.post(
        f"{base}/scans", json=scan("checkpoint", [coi], temperature=-120.0), headers=COURIER
    )
    assert warm.json()["quarantined"] is True
    await events.wait_for(lambda e: e.type == "slot.held.v2" and e.subject == coi)
    delivered = await http.post(f"{base}/scans", json=scan("delivery", [coi]), headers=COURIER)
    assert delivered.json()["shipment_status"] == "quarantined"

    disposition = {
        "decision": "release",
        "reason_code": "product_within_limits",
        "note": "logger spike during courier swap; product probe stayed below -150 °C",
        "meaning": "approval",
        "signing_pin": DEV_QA_SIGNING_PIN,
    }
    assert (await http.post(f"{base}/dispositions", json=disposition, headers=COORDINATOR)).status_code == 403
    signed = await http.post(f"{base}/dispositions", json=disposition, headers=QA)
    assert signed.status_code == 201, signed.text
    signature = signed.json()
    assert (
        signature["signer_printed_name"] == "J. Rivera (QA)"
        and signature["meaning"] == "approval"
        and signature["signed_at"]
        and signature["reason_code"] == "product_within_limits"
        and signature["note"] == disposition["note"]
    )
    released = await events.wait_for(lambda e: e.type == "shipment.released.v2" and e.subject == coi)
    assert released.data.signer_id == "qa-jr"  # type: ignore[union-attr]
    assert released.data.reason_code == "product_within_limits"  # type: ignore[union-attr]
    confirmed_delivery = await events.wait_for(
        lambda e: e.type == "shipment.delivered.v1" and e.subject == coi
    )
    assert str(confirmed_delivery.data.released_by_disposition_id) == signature["id"]  # type: ignore[union-attr]
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    webhook_listener.wait_for(lambda h: h.json()["coi"] == coi and h.json()["kind"] == "slot.confirmed")

    ledger = (await http.get(f"{base}/ledger", headers=QA)).json()
    assert ledger["valid"]
    release_entry = ledger["entries"][-1]
    assert (
        release_entry["kind"] == "release"
        and "J. Rivera" in release_entry["signer"]
        and release_entry["meaning"] == "approval"
        and release_entry["reason"] == f"product_within_limits: {disposition['note']}"
    )
    again = await http.post(f"{base}/dispositions", json=disposition, headers=QA)
    assert again.status_code == 409


async def test_a_qa_release_before_delivery_resumes_the_slot_and_the_delivery_confirms_it(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.post(f"{base}/scans", json=scan("pick_up", [coi], temperature=-100.0), headers=COURIER)
    quarantined = await events.wait_for(lambda e: e.type == "shipment.quarantined.v2" and e.subject == coi)
    await wait_committed(stack.kafka, "scheduling", *events.positions[str(quarantined.id)])
    booked = await book_first_option(http, stack, events, coi)
    assert booked["state"] == "on_hold"  # booked while the shipment is quarantined: held at once
    release = {
        "decision": "release",
        "reason_code": "logger_fault",
        "meaning": "approval",
        "signing_pin": DEV_QA_SIGNING_PIN,
    }
    assert (await http.post(f"{base}/dispositions", json=release, headers=QA)).status_code == 201
    released = await events.wait_for(lambda e: e.type == "shipment.released.v2" and e.subject == coi)
    topic, partition, offset = events.positions[str(released.id)]
    await wait_committed(stack.kafka, "scheduling", topic, partition, offset)
    appointment = (
        await http.get(f"{stack.scheduling}/appointments", params={"coi": coi}, headers=COORDINATOR)
    ).json()
    assert [a["state"] for a in appointment] == ["tentative"]
    delivered = (await http.post(f"{base}/scans", json=scan("delivery", [coi]), headers=COURIER)).json()
    assert delivered["shipment_status"] == "delivered"
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)


async def test_a_qa_rejection_stops_the_shipment_and_cancels_the_slot(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.post(f"{base}/scans", json=scan("pick_up", [coi], temperature=-90.0), headers=COURIER)
    booked = await book_first_option(http, stack, events, coi)
    not_quarantined_yet = {
        "decision": "reject",
        "reason_code": "temperature_compromised",
        "note": "the product thawed in transit",
        "meaning": "rejection",
        "signing_pin": DEV_QA_SIGNING_PIN,
    }
    # The meaning is required, from a closed list, and must fit the decision: never defaulted.
    unsaid = {k: v for k, v in not_quarantined_yet.items() if k != "meaning"}
    missing = await http.post(f"{base}/dispositions", json=unsaid, headers=QA)
    assert missing.status_code == 422 and [e["pointer"] for e in missing.json()["errors"]] == ["/meaning"]
    free_text = await http.post(f"{base}/dispositions", json={**unsaid, "meaning": "ok by me"}, headers=QA)
    assert free_text.status_code == 422
    contrary = await http.post(f"{base}/dispositions", json={**unsaid, "meaning": "approval"}, headers=QA)
    assert contrary.status_code == 409 and "meaning rejection, not approval" in contrary.json()["detail"]
    # The reason too is a code its decision can give: a rejection is not justified by a logger fault.
    unjustified = await http.post(
        f"{base}/dispositions", json={**not_quarantined_yet, "reason_code": "logger_fault"}, headers=QA
    )
    assert unjustified.status_code == 422
    assert [e["pointer"] for e in unjustified.json()["errors"]] == ["/reason_code"]
    signed = await http.post(f"{base}/dispositions", json=not_quarantined_yet, headers=QA)
    assert signed.status_code == 201 and signed.json()["meaning"] == "rejection"
    rejected = await events.wait_for(lambda e: e.type == "shipment.rejected.v2" and e.subject == coi)
    assert rejected.data.reason_code == "temperature_compromised"  # type: ignore[union-attr]
    after = (await http.post(f"{base}/scans", json=scan("delivery", [coi]), headers=COURIER)).json()
    assert after["accepted"] is False and "rejected" in after["refusal_reason"]
    assert not [e for e in events.of(coi) if e.type == "shipment.delivered.v1"]
    cancelled = await events.wait_for(lambda e: e.type == "slot.cancelled.v2" and e.subject == coi)
    assert str(cancelled.data.appointment_id) == booked["id"]  # type: ignore[union-attr]


async def test_a_qa_disposition_needs_a_quarantined_shipment(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    _, shipment = await new_return_shipment(http, stack, events)
    body = {
        "decision": "release",
        "reason_code": "other",
        "note": "nothing to release here",
        "meaning": "approval",
        "signing_pin": DEV_QA_SIGNING_PIN,
    }
    refused = await http.post(f"{stack.tracking}/shipments/{shipment}/dispositions", json=body, headers=QA)
    assert refused.status_code == 409 and "only a quarantined shipment" in refused.json()["detail"]


def _tamper(stack: RunningStack, sql: str, **params: Any) -> None:
    engine = create_engine(
        stack.stack.database_urls["coi-tracking"].replace("postgresql://", "postgresql+psycopg://")
    )
    with engine.begin() as connection:
        connection.execute(text(sql), params)
    engine.dispose()


def _verify_cli(stack: RunningStack, shipment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.coi_tracking.verify",
            "--shipment",
            shipment,
            "--database-url",
            stack.stack.database_urls["coi-tracking"],
            "--bootstrap-servers",
            stack.kafka.bootstrap_servers,
        ],
        env={**os.environ, **stack.kafka.environment()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_tampered_ledger_is_detected_and_located_by_the_api_and_the_cli(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.post(f"{base}/scans", json=scan("pick_up", [coi]), headers=COURIER)
    await http.post(f"{base}/scans", json=scan("hand_off", [coi], handed_to="courier-cy"), headers=COURIER)
    await http.post(
        f"{base}/scans",
        json=scan("hand_off", [coi], handed_to="courier-ben"),
        headers={"Authorization": "Bearer dev-courier2-token"},
    )
    assert (await http.get(f"{base}/ledger", headers=QA)).json()["valid"] is True
    await _head_published(stack, shipment, 3)
    clean = _verify_cli(stack, shipment)
    assert clean.returncode == 0 and "ok" in clean.stdout and "3 entries" in clean.stdout

    _tamper(
        stack,
        "UPDATE custody_ledger SET to_party = 'courier-evil' WHERE shipment_id = :s AND sequence = 2",
        s=_key(stack, shipment),
    )
    changed = (await http.get(f"{base}/ledger", headers=QA)).json()
    assert (
        changed["valid"] is False and changed["broken_at_sequence"] == 2 and "changed" in changed["problem"]
    )
    cli = _verify_cli(stack, shipment)
    assert cli.returncode == 1 and "BROKEN" in cli.stdout and "at entry 2" in cli.stdout

    _tamper(
        stack,
        "UPDATE custody_ledger SET to_party = 'courier-cy' WHERE shipment_id = :s AND sequence = 2",
        s=_key(stack, shipment),
    )
    assert (await http.get(f"{base}/ledger", headers=QA)).json()["valid"] is True
    _tamper(
        stack, "DELETE FROM custody_ledger WHERE shipment_id = :s AND sequence = 2", s=_key(stack, shipment)
    )
    removed = (await http.get(f"{base}/ledger", headers=QA)).json()
    assert (
        removed["valid"] is False and removed["broken_at_sequence"] == 2 and "removed" in removed["problem"]
    )
    assert _verify_cli(stack, shipment).returncode == 1


async def _head_published(stack: RunningStack, shipment: str, sequence: int, timeout: float = 30) -> None:
    """Wait until the relay has put the shipment's head for `sequence` on ledger.heads (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        heads = await verify.read_published_heads(stack.kafka)
        if shipment in heads and heads[shipment].sequence >= sequence:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no head {sequence} of {shipment} on ledger.heads within {timeout}s")


def _rewrite_as_an_insider(stack: RunningStack, shipment: str, edits: dict[int, str]) -> None:
    """Edit entries, then recompute every hash, link and the database's head with the project's own hash
    function: what anyone with write access to the database and this repository can do."""
    engine = create_engine(
        stack.stack.database_urls["coi-tracking"].replace("postgresql://", "postgresql+psycopg://")
    )
    with Session(engine) as session:
        entries = session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.shipment_id == uuid.UUID(shipment))
            .order_by(col(LedgerEntry.sequence))
        ).all()
        previous = GENESIS_SHA256
        for entry in entries:
            entry.to_party = edits.get(entry.sequence, entry.to_party)
            entry.previous_sha256 = previous
            entry.entry_sha256 = previous = entry_hash(ledger.stored(entry).content, previous)
            session.add(entry)
        moved = session.get_one(Shipment, uuid.UUID(shipment))
        moved.ledger_head_sha256 = previous
        session.add(moved)
        session.commit()
    engine.dispose()


async def _three_entries(http: httpx.AsyncClient, stack: RunningStack, events: EventLog) -> tuple[str, str]:
    coi, shipment = await new_return_shipment(http, stack, events)
    base = f"{stack.tracking}/shipments/{shipment}"
    await http.post(f"{base}/scans", json=scan("pick_up", [coi]), headers=COURIER)
    await http.post(f"{base}/scans", json=scan("hand_off", [coi], handed_to="courier-cy"), headers=COURIER)
    await http.post(
        f"{base}/scans",
        json=scan("hand_off", [coi], handed_to="courier-ben"),
        headers={"Authorization": "Bearer dev-courier2-token"},
    )
    await _head_published(stack, shipment, 3)
    return coi, shipment


async def test_a_chain_an_insider_rewrote_with_recomputed_hashes_fails_at_the_first_edit(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    _, shipment = await _three_entries(http, stack, events)
    _rewrite_as_an_insider(stack, shipment, {2: "courier-evil", 3: "courier-evil"})
    api = (await http.get(f"{stack.tracking}/shipments/{shipment}/ledger", headers=QA)).json()
    assert api["valid"] is False and api["broken_at_sequence"] == 2 and "bad signature" in api["problem"]
    cli = _verify_cli(stack, shipment)
    assert cli.returncode == 1, cli.stderr
    assert "BROKEN" in cli.stdout and "at entry 2: entry 2 has a bad signature" in cli.stdout


async def test_a_tail_removed_with_its_outbox_heads_is_caught_by_the_heads_on_the_broker(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    coi, shipment = await _three_entries(http, stack, events)
    key = _key(stack, shipment)
    ledger_url = f"{stack.tracking}/shipments/{shipment}/ledger"
    second = (await http.get(ledger_url, headers=QA)).json()["entries"][1]["entry_sha256"]
    _tamper(stack, "DELETE FROM custody_ledger WHERE shipment_id = :s AND sequence = 3", s=key)
    _tamper(
        stack, "UPDATE shipment SET ledger_length = 2, ledger_head_sha256 = :h WHERE id = :s", s=key, h=second
    )
    # Trust boundary: the API checks what the database holds, so deleting the outbox's heads too hides the
    # cut from it; the broker's copy is out of a database writer's reach.
    _tamper(stack, "DELETE FROM outbox WHERE topic = 'ledger.heads' AND key = :c", c=coi)
    assert (await http.get(ledger_url, headers=QA)).json()["valid"] is True
    cli = _verify_cli(stack, shipment)
    assert cli.returncode == 1, cli.stderr
    assert "at entry 3: the ledger ends after entry 2 but entry 3 was published" in cli.stdout


def _key(stack: RunningStack, shipment: str) -> str:
    """UUIDs are stored as 32 hex characters by SQLAlchemy on SQLite and natively on PostgreSQL."""
    return shipment.replace("-", "") if stack.backend == "sqlite" else shipment


async def test_each_collection_travels_fresh_to_manufacturing_with_its_din(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_accepted_order(http, stack)
    din = await record_collection_and_manufacturing(http, stack, order["id"])
    outbound = await shipment_for(http, stack, events, order["coi"], leg="outbound")
    assert outbound["bags"] == [{"number": 1, "of": 1, "coi": order["coi"], "din": din}]
    assert outbound["min_celsius"] == 2.0 and outbound["storage_limit_celsius"] == 8.0
    assert outbound["max_transit_hours"] == 72.0 and outbound["destination"] == "manufacturer:AGC-MILAN"
    base = f"{stack.tracking}/shipments/{outbound['id']}/scans"
    assert (
        await http.post(base, json=scan("pick_up", [order["coi"]], temperature=5.0), headers=COURIER)
    ).json()["quarantined"] is False
    frozen = (
        await http.post(base, json=scan("checkpoint", [order["coi"]], temperature=0.5), headers=COURIER)
    ).json()
    assert frozen["quarantined"] and "below the minimum of 2.0" in frozen["quarantine_reason"]
    # The outbound leg's events do not touch the infusion slot (none is proposed for it).
    await events.wait_for(lambda e: e.type == "shipment.quarantined.v2" and e.subject == order["coi"])


async def test_scans_published_by_a_couriers_system_on_kafka_are_applied_once(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    from cgt_contracts.events import CourierScanData, CourierScanSubmitted, ScanType

    from services.common.topics import COURIER_SCANS, dlq

    coi, shipment = await new_return_shipment(http, stack, events)
    pick_up = CourierScanSubmitted(
        source="courier/cryo-express",
        subject=coi,
        correlationid="kafka-scan-1",
        data=CourierScanData(
            shipment_id=uuid.UUID(shipment),
            scan_type=ScanType.PICK_UP,
            bag_cois=[coi],
            location="AGC Biologics, Milan",
            device_time=datetime.now(UTC),
            temperature_celsius=-183.0,
            eta_at=datetime.now(UTC) + timedelta(days=2),
            courier_id="courier-ben",
            courier_company="CRYO-EXPRESS",
        ),
    )
    for _ in range(2):  # the second copy is a redelivery: applied once
        await publish_courier_scan(stack.broker, pick_up.model_dump_json().encode(), key=coi.encode())
    await events.wait_for(lambda e: e.type == "shipment.dispatched.v1" and e.subject == coi)
    stranger = pick_up.model_copy(
        update={
            "id": uuid.uuid4(),
            "data": pick_up.data.model_copy(update={"courier_company": "OTHER-LOGISTICS"}),
        }
    )
    partition, offset = await publish_courier_scan(
        stack.broker, stranger.model_dump_json().encode(), key=coi.encode(), company="OTHER-LOGISTICS"
    )
    await wait_committed(stack.kafka, "coi-tracking-scans", COURIER_SCANS, partition, offset)
    scans = (await http.get(f"{stack.tracking}/shipments/{shipment}/scans", headers=COORDINATOR)).json()
    assert [(s["scan_type"], s["accepted"], s["scanned_by"]) for s in scans] == [
        ("pick_up", True, "courier-ben")
    ]
    dead = EventLog(stack.kafka, [dlq(COURIER_SCANS)])
    await dead.start()
    try:
        refused = await dead.wait_raw(
            lambda _t, _v, headers: b"another courier company" in headers.get("dlq-reason", b"")
        )
        assert refused
    finally:
        await dead.stop()
