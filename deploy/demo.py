"""`make demo`: one clean vein-to-vein journey and one wrong-COI shipment, told as a timeline.

Uses the stack that `make up` runs (ports 8001-8003, Kafka on 127.0.0.1:9092) when it answers, otherwise
starts its own on temporary SQLite databases. Exits 0 only if the clean journey's infusion slot was
confirmed (and the treatment center's webhook received it) and the wrong-COI shipment was quarantined.
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
from cgt_contracts.events import AnyEvent

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
        case "product.released_for_shipment.v1":
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


async def journey(http: httpx.AsyncClient, urls: dict[str, str], events: EventLog, *, wrong_coi: bool) -> str:
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
                "expires_on": (date.today() + timedelta(days=90)).isoformat(),
            },
            "eligibility_attested": True,
        },
    )
    order.raise_for_status()
    coi: str = order.json()["coi"]
    order_url = f"{urls['order-intake']}/orders/{order.json()['id']}"
    collected = await http.post(
        f"{order_url}/collections", headers=COORDINATOR, json={"collected_at": datetime.now(UTC).isoformat()}
    )
    collected.raise_for_status()
    events.notes.append((coi, f"cells collected: DIN {collected.json()['din_label']} under COI {coi}"))
    started = await http.post(f"{order_url}/status", headers=COORDINATOR, json={"status": "in_manufacturing"})
    started.raise_for_status()
    released = await http.post(
        f"{order_url}/manufacturing-release",
        headers=COORDINATOR,
        json={"lot_number": "LOT-DEMO-0001", "released_at": datetime.now(UTC).isoformat()},
    )
    released.raise_for_status()
    await events.wait_for(lambda e: e.type == "product.released_for_shipment.v1" and e.subject == coi)
    await events.wait_for(
        lambda e: e.type == "shipment.created.v1" and e.subject == coi and e.data.leg == "return"
    )
    listed = (
        await http.get(f"{urls['coi-tracking']}/shipments", params={"coi": coi}, headers=COURIER)
    ).json()
    shipment = next(s for s in listed if s["leg"] == "return")
    while not shipment["product_released_at"]:  # COI tracking takes the release from orders.events
        await asyncio.sleep(0.05)
        listed = (
            await http.get(f"{urls['coi-tracking']}/shipments", params={"coi": coi}, headers=COURIER)
        ).json()
        shipment = next(s for s in listed if s["leg"] == "return")
    scans = f"{urls['coi-tracking']}/shipments/{shipment['id']}/scans"

    async def post_scan(headers: dict[str, str], body: dict[str, Any]) -> None:
        (await http.post(scans, headers=headers, json=body)).raise_for_status()

    await post_scan(COURIER, scan("pick_up", [coi], "AGC Biologics, Milan"))
    offered = await events.wait_for(lambda e: e.type == "slot.options_offered.v1" and e.subject == coi)
    first = offered.data.options[0]  # type: ignore[union-attr]
    booking = await http.post(
        f"{urls['scheduling']}/cases/{coi}/bookings",
        headers=COORDINATOR,
        json={"option_id": str(first.option_id)},
    )
    booking.raise_for_status()
    events.notes.append(
        (coi, f"booked: conditioning from {first.conditioning_start_on}, infusion {first.infusion_on}")
    )
    await events.wait_for(lambda e: e.type == "slot.proposed.v1" and e.subject == coi)
    if wrong_coi:
        await post_scan(COURIER, scan("checkpoint", ["CHW432126ZZZZZZQ"], "Frankfurt hub"))
        await events.wait_for(lambda e: e.type == "slot.held.v2" and e.subject == coi)
        return coi
    await post_scan(COURIER, scan("hand_off", [coi], "JFK cargo", handed_to="courier-cy"))
    await post_scan(COURIER_2, scan("delivery", [coi], "Boston QTC cell lab"))
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    return coi


def notes_of(events: EventLog, coi: str) -> list[str]:
    return [note for key, note in events.notes if key == coi]


def print_timeline(title: str, events: list[AnyEvent], notes: list[str]) -> None:
    print(f"\n{title}")
    for note in notes:
        print(f"  {'':12}  {'coordinator':<13} {note}")
    for event in sorted(events, key=lambda e: e.time):
        line = describe(event)
        if line:
            print(f"  {event.time:%H:%M:%S.%f}"[:-3] + f"  {event.source.split('/')[-1]:<13} {line}")


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
            hook = await asyncio.to_thread(
                listener.wait_for, lambda h: h.json()["coi"] == clean and h.json()["kind"] == "slot.confirmed"
            )
            shipments = (
                await http.get(f"{urls['coi-tracking']}/shipments", params={"coi": broken}, headers=COURIER)
            ).json()
            # A site has at most MAX_ENDPOINTS_PER_SITE endpoints: the demo, run again and again, frees its one.
            await http.delete(f"{urls['scheduling']}/webhooks/{registered.json()['id']}", headers=CENTER)
        print_timeline(f"Journey 1 — {clean}: clean cold chain", events.of(clean), notes_of(events, clean))
        print(
            f"  webhook       treatment center received '{hook.json()['kind']}' (signed, {len(hook.body)} bytes)"
        )
        print_timeline(
            f"Journey 2 — {broken}: a bag with the wrong COI", events.of(broken), notes_of(events, broken)
        )
        confirmed = any(e.type == "slot.confirmed.v1" for e in events.of(clean))
        return_leg = next(s for s in shipments if s["leg"] == "return")
        quarantined = return_leg["status"] == "quarantined" and not any(
            e.type == "slot.confirmed.v1" for e in events.of(broken)
        )
        print(
            f"\nslot confirmed: {confirmed}; wrong-COI shipment quarantined and never confirmed: {quarantined}"
        )
        return 0 if confirmed and quarantined else 1
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
