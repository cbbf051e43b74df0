"""`make demo`: a clean vein-to-vein journey, a wrong-COI shipment and a failed lot, told as timelines.

Uses the stack that `make up` runs (ports 8001-8003, Kafka on 127.0.0.1:9092) when it answers, otherwise
starts its own on temporary SQLite databases. Exits 0 only if the clean journey's infusion slot was
confirmed (and the treatment center's webhook received it), the wrong-COI shipment was quarantined, and
the failed lot's case was collected again (a second DIN under its COI) and its infusion confirmed.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cgt_contracts.events import AnyEvent, CollectionRecorded

from deploy.observe import EventLog, WebhookListener
from deploy.stack import DEFAULT_PORTS, ROOT, Stack, make_up_kafka, sqlite_urls

sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
from kafka_local import LocalKafka  # type: ignore[import-not-found]

from services.common.kafka_access import KafkaAccess
from services.common.topics import ORDERS, SCHEDULING, SHIPMENTS

COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
COURIER = {"Authorization": "Bearer dev-courier-token"}
COURIER_2 = {"Authorization": "Bearer dev-courier2-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}


def describe(event: AnyEvent) -> str | None:
    """One line a coordinator can read; None for events not worth a line."""
    d: Any = event.data
    match event.type:
        case "order.accepted.v1" | "order.accepted.v2":
            return f"order accepted for patient {d.patient_ref}: chain-of-identity {d.coi} assigned"
        case "product.released_for_shipment.v1" | "product.released_for_shipment.v2":
            return f"product lot {d.lot_number} released for shipment by the manufacturer"
        case "shipment.created.v1":
            return f"{d.leg} leg planned: container {d.container_id}, {d.bag_count} bag(s), courier {d.courier_company}"
        case "shipment.dispatched.v1":
            return f"picked up at the manufacturer, ETA {d.eta_at:%Y-%m-%d %H:%M} UTC"
        case "custody.transferred.v2":
            return f"custody {d.from_party} -> {d.to_party} (ledger entry {d.ledger_sequence})"
        case "shipment.delivered.v1":
            return f"delivered to {d.treatment_center_id}: COI verified, max {d.max_temperature_celsius} °C"
        case "coi.break.v1":
            return f"COI BREAK: bag label read {d.read_cois}, order is {d.expected_coi}"
        case "temperature.excursion.v1":
            return f"TEMPERATURE EXCURSION: {d.reading_celsius} °C, limit {d.limit_celsius} °C"
        case "shipment.quarantined.v2":
            return f"shipment QUARANTINED: {', '.join(d.reason_codes)}"
        case "slot.options_offered.v1":
            days = ", ".join(f"{o.infusion_on}" for o in d.options)
            return f"{len(d.options)} infusion options offered (day 0 on {days})"
        case "slot.proposed.v1":
            return f"tentative slot sent to the site: conditioning from {d.conditioning_start_on}, infusion (day 0) {d.infusion_on}"
        case "slot.confirmed.v1":
            return f"infusion slot CONFIRMED: conditioning may start {d.conditioning_start_on}, infusion {d.infusion_on}"
        case "slot.held.v2":
            return f"slot ON HOLD: {d.reason_code}"
        case "manufacturing.started.v1":
            return f"manufacturing started (collection {d.collection_number})"
        case "plan.replanned.v1":
            return f"plan re-planned ({d.reason_code}): infusion now {d.infusion_on}, the sites told"
        case "manufacturing.failed.v1":
            return f"LOT FAILED in manufacturing (collection {d.collection_number}): {d.reason_code}"
        case "slot.cancelled.v2":
            return f"appointment released, the site told: {d.reason_code}"
    return None


def scan(kind: str, bags: list[str], location: str, **extra: Any) -> dict[str, Any]:
    body = {
        "scan_type": kind,
        "bag_cois": bags,
        "location": location,
        "device_time": datetime.now(UTC).isoformat(),
        "temperature_celsius": -182.0,
        **extra,
    }
    if kind == "pick_up":
        body["eta_at"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    return body


async def place_order(http: httpx.AsyncClient, urls: dict[str, str]) -> tuple[str, str]:
    """An accepted order for a new demo patient: its COI and its URL."""
    order = await http.post(
        f"{urls['order-intake']}/orders",
        headers=COORDINATOR,
        json={
            "patient_ref": f"PSN-{uuid.uuid4().hex[:8]}",
            "patient": {
                "name": "Demo Patient",
                "date_of_birth": "2020-01-15",
                "medical_record_number": f"MRN-DEMO-{uuid.uuid4().hex[:8]}",  # a patient per journey
            },
            "therapy_code": "WASKYRA",
            "treatment_center_id": "TC-BOSTON",
            "prescriber_npi": "1234567893",
            "consent": {"signed_on": date.today().isoformat(), "form_version": "WAS-ICF-2.1"},
            "payer_authorization": {
                "reference": "PA-DEMO",
                "expires_on": (date.today() + timedelta(days=365)).isoformat(),
            },
            "eligibility_attested": True,
        },
    )
    order.raise_for_status()
    return order.json()["coi"], f"{urls['order-intake']}/orders/{order.json()['id']}"


def note(events: EventLog, coi: str, text: str) -> None:
    events.notes.append((coi, datetime.now(UTC), text))


async def collect_and_manufacture(
    http: httpx.AsyncClient, order_url: str, events: EventLog, coi: str
) -> None:
    """A coordinator records the apheresis collection (a new DIN under the COI) and the start of
    manufacturing."""
    collected = await http.post(
        f"{order_url}/collections", headers=COORDINATOR, json={"collected_at": datetime.now(UTC).isoformat()}
    )
    collected.raise_for_status()
    note(events, coi, f"cells collected: DIN {collected.json()['din_label']} under COI {coi}")
    started = await http.post(f"{order_url}/status", headers=COORDINATOR, json={"status": "in_manufacturing"})
    started.raise_for_status()


async def release_and_ship(
    http: httpx.AsyncClient, urls: dict[str, str], order_url: str, events: EventLog, coi: str, lot: str
) -> str:
    """The manufacturer releases the lot; once COI tracking has opened its return leg, the courier picks
    it up. The leg's scan URL."""
    released = await http.post(
        f"{order_url}/manufacturing-release",
        headers=COORDINATOR,
        json={"lot_number": lot, "released_at": datetime.now(UTC).isoformat()},
    )
    released.raise_for_status()
    await events.wait_for(lambda e: e.type == "product.released_for_shipment.v2" and e.data.lot_number == lot)
    for _ in range(600):  # COI tracking takes the release from orders.events
        listed = (
            await http.get(f"{urls['coi-tracking']}/shipments", params={"coi": coi}, headers=COURIER)
        ).json()
        ready = [
            s for s in listed if s["leg"] == "return" and s["product_released_at"] and not s["lot_failed_at"]
        ]
        if ready:
            break
        await asyncio.sleep(0.05)
    else:
        raise TimeoutError(f"no return leg opened for {coi}")
    scans = f"{urls['coi-tracking']}/shipments/{ready[0]['id']}/scans"
    (
        await http.post(scans, headers=COURIER, json=scan("pick_up", [coi], "AGC Biologics, Milan"))
    ).raise_for_status()
    return scans


async def deliver(http: httpx.AsyncClient, scans: str, events: EventLog, coi: str) -> None:
    """Hand-off to the second courier, delivery at the treatment center, and the confirmation (I4)."""
    handed = await http.post(
        scans, headers=COURIER, json=scan("hand_off", [coi], "JFK cargo", handed_to="courier-cy")
    )
    handed.raise_for_status()
    (
        await http.post(scans, headers=COURIER_2, json=scan("delivery", [coi], "Boston QTC cell lab"))
    ).raise_for_status()
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)


async def journey(http: httpx.AsyncClient, urls: dict[str, str], events: EventLog, *, wrong_coi: bool) -> str:
    coi, order_url = await place_order(http, urls)
    await collect_and_manufacture(http, order_url, events, coi)
    scans = await release_and_ship(http, urls, order_url, events, coi, f"LOT-DEMO-{coi[-4:]}")
    offered = await events.wait_for(lambda e: e.type == "slot.options_offered.v1" and e.subject == coi)
    first = offered.data.options[0]  # type: ignore[union-attr]
    booking = await http.post(
        f"{urls['scheduling']}/cases/{coi}/bookings",
        headers=COORDINATOR,
        json={"option_id": str(first.option_id)},
    )
    booking.raise_for_status()
    note(
        events, coi, f"booked: conditioning from {first.conditioning_start_on}, infusion {first.infusion_on}"
    )
    await events.wait_for(lambda e: e.type == "slot.proposed.v1" and e.subject == coi)
    if wrong_coi:
        checkpoint = scan("checkpoint", ["CHW432126ZZZZZZQ"], "Frankfurt hub")
        (await http.post(scans, headers=COURIER, json=checkpoint)).raise_for_status()
        await events.wait_for(lambda e: e.type == "slot.held.v2" and e.subject == coi)
        return coi
    await deliver(http, scans, events, coi)
    return coi


async def book_plan(http: httpx.AsyncClient, urls: dict[str, str], events: EventLog, coi: str) -> None:
    """A coordinator asks for the case's earliest vein-to-vein plan (once scheduling has the case) and
    books it: collection chair, manufacturing slot and a tentative infusion, held as one."""
    for _ in range(600):
        offered = await http.post(
            f"{urls['scheduling']}/cases/{coi}/plans", headers=COORDINATOR, json={"count": 1}
        )
        if offered.status_code != 404:
            break
        await asyncio.sleep(0.05)
    offered.raise_for_status()
    [plan] = offered.json()
    booked = await http.post(
        f"{urls['scheduling']}/cases/{coi}/plans/{plan['plan_id']}/book", headers=COORDINATOR, json={}
    )
    booked.raise_for_status()
    note(
        events,
        coi,
        f"plan booked: collection {plan['collection_on']} at {plan['collection_center_id']}, manufacturing "
        f"{plan['manufacturing_week']} at {plan['manufacturing_site_id']}, release {plan['release_on']}, "
        f"infusion {plan['infusion_on']}",
    )


async def failed_lot_journey(http: httpx.AsyncClient, urls: dict[str, str], events: EventLog) -> str:
    """The first lot fails sterility: its appointment is released and the site told; the case is planned
    again, collected again (a new DIN, the same COI), and the second lot is infused."""
    coi, order_url = await place_order(http, urls)
    await book_plan(http, urls, events, coi)
    await collect_and_manufacture(http, order_url, events, coi)
    failed = await http.post(
        f"{order_url}/manufacturing-failure", headers=COORDINATOR, json={"reason_code": "sterility_failure"}
    )
    failed.raise_for_status()
    await events.wait_for(lambda e: e.type == "slot.cancelled.v2" and e.subject == coi)
    await book_plan(http, urls, events, coi)
    await collect_and_manufacture(http, order_url, events, coi)
    scans = await release_and_ship(http, urls, order_url, events, coi, f"LOT-DEMO-{coi[-4:]}-2")
    await deliver(http, scans, events, coi)
    plans = (await http.get(f"{urls['scheduling']}/cases/{coi}/plans", headers=COORDINATOR)).json()
    for plan in plans:
        if plan["state"] == "booked":
            legs = (
                "collection_done_at",
                "manufacturing_started_at",
                "product_released_at",
                "product_delivered_at",
            )
            done = ", ".join(f"{leg.removesuffix('_at')} {plan[leg][11:19]}" for leg in legs if plan[leg])
            note(events, coi, f"the booked plan's legs, each confirmed by its event: {done}")
    return coi


def print_timeline(title: str, events: EventLog, coi: str) -> None:
    """The journey's events and what its callers did, in the order they happened."""
    print(f"\n{title}")
    lines = [(at, "coordinator", text) for key, at, text in events.notes if key == coi]
    for event in events.of(coi):
        line = describe(event)
        if line:
            lines.append((event.time, event.source.split("/")[-1], line))
    for at, who, text in sorted(lines, key=lambda line: line[0]):
        print(f"  {at:%H:%M:%S.%f}"[:-3] + f"  {who:<13} {text}")


async def run(urls: dict[str, str], kafka: KafkaAccess) -> int:
    listener = WebhookListener()
    listener.start()
    events = EventLog(kafka, [ORDERS, SHIPMENTS, SCHEDULING])
    await events.start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            registered = await http.post(
                f"{urls['scheduling']}/webhooks", headers=CENTER, json={"url": listener.url}
            )
            registered.raise_for_status()
            clean = await journey(http, urls, events, wrong_coi=False)
            broken = await journey(http, urls, events, wrong_coi=True)
            failed = await failed_lot_journey(http, urls, events)
            hook = await asyncio.to_thread(
                listener.wait_for, lambda h: h.json()["coi"] == clean and h.json()["kind"] == "slot.confirmed"
            )
            shipments = (
                await http.get(f"{urls['coi-tracking']}/shipments", params={"coi": broken}, headers=COURIER)
            ).json()
            # A site has at most MAX_ENDPOINTS_PER_SITE endpoints: the demo, run again and again, frees its one.
            await http.delete(f"{urls['scheduling']}/webhooks/{registered.json()['id']}", headers=CENTER)
        print_timeline(f"Journey 1 — {clean}: clean cold chain", events, clean)
        print(
            f"  webhook       treatment center received '{hook.json()['kind']}' (signed, {len(hook.body)} bytes)"
        )
        print_timeline(f"Journey 2 — {broken}: a bag with the wrong COI", events, broken)
        print_timeline(f"Journey 3 — {failed}: a failed lot, collected again, infused", events, failed)
        confirmed = any(e.type == "slot.confirmed.v1" for e in events.of(clean))
        return_leg = next(s for s in shipments if s["leg"] == "return")
        quarantined = return_leg["status"] == "quarantined" and not any(
            e.type == "slot.confirmed.v1" for e in events.of(broken)
        )
        recollected = [e.data.din for e in events.of(failed) if isinstance(e, CollectionRecorded)]
        second_lot = len(set(recollected)) == 2 and any(
            e.type == "slot.confirmed.v1" for e in events.of(failed)
        )
        print(
            f"\nslot confirmed: {confirmed}; wrong-COI shipment quarantined and never confirmed: {quarantined}; "
            f"failed lot collected again under its COI and infused: {second_lot}"
        )
        return 0 if confirmed and quarantined and second_lot else 1
    finally:
        await events.stop()
        listener.stop()


def running_stack() -> dict[str, str] | None:
    urls = {name: f"http://127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}
    try:
        if all(httpx.get(f"{url}/ready", timeout=2).status_code == 200 for url in urls.values()):
            return urls
    except httpx.HTTPError:
        return None
    return None


def main() -> int:
    urls = running_stack()
    if urls is not None:
        print("using the running stack (make up)")
        return asyncio.run(run(urls, make_up_kafka()))
    print("no running stack found: starting one on temporary SQLite databases ...")

    with (
        tempfile.TemporaryDirectory(prefix="cgt-demo-") as tmp,
        LocalKafka(data_dir=Path(tmp) / "kafka") as broker,
    ):
        stack = Stack(
            kafka=broker,
            database_urls=sqlite_urls(Path(tmp) / "db"),
            workdir=Path(tmp) / "logs",
        )
        try:
            stack.start()
            return asyncio.run(run({n: s.url for n, s in stack.services.items()}, broker.access()))
        finally:
            stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
