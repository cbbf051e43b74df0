"""`make chaos`: many concurrent vein-to-vein journeys through the three services on PostgreSQL and a real
broker, with faults injected while they run; then every journey's end state and every consumer's effects
are checked. The last line reads `... journeys=N faults=F lost=L duplicated=D dead_lettered=X`; the exit
code is 0 only if nothing was lost or doubled and every malformed message reached a dead-letter topic.

Phase 1, one broker: malformed and schema-violating messages on every topic, each service SIGKILLed and
restarted, the broker SIGKILLed and restarted, a database made unreachable for a while, duplicated
deliveries. Phase 2, three brokers (replication factor 3, min.insync.replicas 2): one broker killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from aiokafka import AIOKafkaProducer
from cgt_contracts.events import parse_event

from deploy.observe import EventLog
from deploy.stack import ROOT, SERVICES, Stack, create_postgres_databases, drop_postgres_databases
from services.common.dlq import DLQ_TOPICS, read_dead_letters
from services.common.kafka_access import KafkaAccess
from services.common.topics import ORDERS, SCHEDULING, SHIPMENTS, ensure_topics

sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
from kafka_local import LocalKafka, LocalKafkaCluster  # type: ignore[import-not-found]

COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
COURIER = {"Authorization": "Bearer dev-courier-token"}
EVENT_TOPICS = [ORDERS, SHIPMENTS, SCHEDULING]
CONSUMER_GROUPS = {
    ORDERS: {"coi-tracking", "scheduling"},
    SHIPMENTS: {"order-intake", "scheduling"},
    SCHEDULING: {"order-intake"},
}
JOURNEY_DEADLINE_SECONDS = 240.0


@dataclass
class Tally:
    journeys: int = 0
    faults: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    dead_lettered: int = 0
    malformed_missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"journeys={self.journeys} faults={len(self.faults)} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} dead_lettered={self.dead_lettered}"
        )


class Client:
    """HTTP with patience: a service being killed or a database away is retried until a deadline."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(
        self, method: str, url: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> httpx.Response:
        deadline = time.monotonic() + JOURNEY_DEADLINE_SECONDS
        delay = 0.1
        while True:
            try:
                response = await self.http.request(method, url, **kwargs)
                # A 409 with Retry-After: the same Idempotency-Key's first request (maybe cut off by a
                # kill) has not been answered yet; asking again later gets its answer.
                if response.status_code in ok or (
                    response.status_code < 500 and "Retry-After" not in response.headers
                ):
                    return response
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {url} kept failing")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def until(self, url: str, predicate: Any, headers: dict[str, str]) -> Any:
        deadline = time.monotonic() + JOURNEY_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            response = await self.call("GET", url, headers=headers)
            if response.status_code == 200:
                found = predicate(response.json())
                if found:
                    return found
            await asyncio.sleep(0.2)
        raise TimeoutError(f"GET {url} never matched")


@dataclass
class Journey:
    number: int
    patient_ref: str
    coi: str | None = None
    done: bool = False
    error: str | None = None


def _now(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def release_product(client: Client, urls: dict[str, str], order_id: str, coi: str) -> None:
    """Collection and manufacturing as steps, then the manufacturer's release, each safe to retry (a step
    already taken is 409); done once COI tracking has opened the return leg for pick-up."""
    order_url = f"{urls['order-intake']}/orders/{order_id}"
    for step in ("cells_collected", "in_manufacturing"):
        await client.call("POST", f"{order_url}/status", headers=COORDINATOR, json={"status": step})
    await client.call(
        "POST",
        f"{order_url}/manufacturing-release",
        headers=COORDINATOR,
        json={"lot_number": "LOT-CHAOS", "released_at": _now()},
    )
    await client.until(
        f"{urls['coi-tracking']}/shipments?coi={coi}",
        lambda rows: any(r["leg"] == "return" and r["product_released_at"] for r in rows),
        COORDINATOR,
    )


async def run_journey(client: Client, urls: dict[str, str], journey: Journey, run_id: str) -> None:
    """Order, pick-up, booking, delivery, confirmation — each step safe to retry."""
    order = await client.call(
        "POST",
        f"{urls['order-intake']}/orders",
        headers={**COORDINATOR, "Idempotency-Key": f"chaos-{run_id}-{journey.number}"},
        json={
            "patient_ref": journey.patient_ref,
            "patient": {
                "name": "Chaos Patient",
                "date_of_birth": "2019-01-01",
                "medical_record_number": f"MRN-C-{journey.patient_ref}",  # a patient per journey, retried alike
            },
            "therapy_code": "WASKYRA",
            "treatment_center_id": "TC-BOSTON",
            "prescriber_npi": "1234567893",
            "consent": {"signed_on": "2026-01-02", "form_version": "ICF-1"},
            "payer_authorization": {"reference": "PA-C", "expires_on": "2099-01-01"},
            "eligibility_attested": True,
        },
    )
    if order.status_code not in (200, 201) or order.json()["status"] != "accepted":
        raise RuntimeError(f"order refused: {order.text}")
    coi: str = order.json()["coi"]
    journey.coi = coi
    await release_product(client, urls, order.json()["id"], coi)
    shipments = f"{urls['coi-tracking']}/shipments"
    shipment = await client.until(
        f"{shipments}?coi={coi}", lambda rows: next((r for r in rows if r["leg"] == "return"), None), COURIER
    )
    scans = f"{shipments}/{shipment['id']}/scans"

    async def scan(kind: str, **extra: Any) -> None:
        body = {
            "scan_type": kind,
            "bag_cois": [coi],
            "location": "chaos lane",
            "device_time": _now(),
            "temperature_celsius": -180.0,
            **extra,
        }
        response = await client.call("POST", scans, headers=COURIER, json=body)
        result = response.json()
        # A retried scan whose first attempt went through is refused as out of order: the step is done.
        if response.status_code != 201 or not (
            result["accepted"] or "cannot follow" in (result["refusal_reason"] or "")
        ):
            raise RuntimeError(f"{kind} scan: {response.text}")

    await scan("pick_up", eta_at=_now(days=2))
    case_url = f"{urls['scheduling']}/cases/{coi}"
    options = await client.until(case_url, lambda case: case["options"] or case["appointment"], COORDINATOR)
    if isinstance(options, list):
        for option in options:
            booked = await client.call(
                "POST", f"{case_url}/bookings", headers=COORDINATOR, json={"option_id": option["option_id"]}
            )
            if booked.status_code == 201 or "already has an appointment" in booked.text:
                break
        else:
            raise RuntimeError(f"no option could be booked: {booked.text}")
    await scan("delivery")
    await client.until(
        f"{urls['scheduling']}/appointments?coi={coi}",
        lambda rows: any(r["state"] == "confirmed" for r in rows),
        COORDINATOR,
    )
    journey.done = True


async def guarded(
    client: Client, urls: dict[str, str], journey: Journey, run_id: str, gate: asyncio.Semaphore
) -> None:
    async with gate:
        try:
            await run_journey(client, urls, journey, run_id)
        except Exception as error:
            journey.error = repr(error)[:300]


# ---------------------------------------------------------------- faults


async def inject_malformed(kafka: KafkaAccess, per_topic: int) -> list[tuple[str, bytes]]:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    sent: list[tuple[str, bytes]] = []
    try:
        for topic in EVENT_TOPICS:
            for n in range(per_topic):
                marker = uuid.uuid4().hex
                value = (
                    f"\x00not json {marker}".encode()
                    if n % 2 == 0
                    else json.dumps(
                        {"type": "order.accepted.v1", "subject": "CHAOS", "chaos": marker}
                    ).encode()
                )
                await producer.send_and_wait(topic, value, key=marker.encode())
                sent.append((topic, value))
    finally:
        await producer.stop()
    return sent


async def duplicate_deliveries(kafka: KafkaAccess, events: EventLog, count: int) -> int:
    """Publish again, byte for byte, events that were already delivered (as a producer retry would)."""
    candidates = [
        (topic, value) for topic, value, _ in events.raw if topic in EVENT_TOPICS and _is_event(value)
    ]
    chosen = random.sample(candidates, min(count, len(candidates)))
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all")
    await producer.start()
    try:
        for topic, value in chosen:
            key = json.loads(value)["subject"].encode()
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
    return len(chosen)


def _is_event(value: bytes) -> bool:
    try:
        parse_event(value)
    except ValueError:
        return False
    return True


def database_outage(url: str, seconds: float) -> None:
    """Refuse new connections to one service's database and end its sessions; let them back later."""
    admin_url, database = url.rsplit("/", 1)
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
        )
        time.sleep(seconds)
        connection.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')


async def restart_service(stack: Stack, name: str) -> None:
    service = stack.services[name]
    service.kill()
    await asyncio.sleep(0.5)
    service.start()
    await asyncio.to_thread(service.wait_ready, 120.0)


async def phase_one_faults(
    stack: Stack,
    broker: Any,
    events: EventLog,
    tally: Tally,
    malformed: list[tuple[str, bytes]],
    journeys: list[Journey],
    small: bool,
) -> None:
    async def progress(fraction: float) -> None:
        while sum(j.done or j.error is not None for j in journeys) < fraction * len(journeys):
            await asyncio.sleep(0.2)

    malformed.extend(await inject_malformed(stack.admin, 2 if small else 4))
    tally.faults.append(f"malformed messages: {len(malformed)} on {len(EVENT_TOPICS)} topics")
    await progress(0.1)
    await restart_service(stack, "coi-tracking")
    tally.faults.append("coi-tracking SIGKILLed and restarted")
    await progress(0.2)
    broker.kill()
    await asyncio.sleep(2)
    await asyncio.to_thread(broker.start)
    tally.faults.append("broker SIGKILLed and restarted")
    await progress(0.35)
    await restart_service(stack, "scheduling")
    tally.faults.append("scheduling SIGKILLed and restarted")
    await progress(0.5)
    await asyncio.to_thread(database_outage, stack.database_urls["coi-tracking"], 3.0 if small else 6.0)
    tally.faults.append("coi-tracking's database unreachable, then back")
    await progress(0.6)
    await restart_service(stack, "order-intake")
    tally.faults.append("order-intake SIGKILLed and restarted")
    await progress(0.7)
    duplicated = await duplicate_deliveries(stack.admin, events, 20 if small else 80)
    tally.faults.append(f"{duplicated} events delivered a second time")


async def phase_two_faults(cluster: Any, tally: Tally, journeys: list[Journey]) -> None:
    while sum(j.done or j.error is not None for j in journeys) < 0.3 * len(journeys):
        await asyncio.sleep(0.2)
    victim = cluster.nodes[2]
    victim.kill()
    tally.faults.append("one of three brokers killed (RF 3, min ISR 2)")


# ---------------------------------------------------------------- checks


EXPECTED = (
    "order.accepted.v2",
    "shipment.dispatched.v1",
    "shipment.delivered.v1",
    "slot.proposed.v1",
    "slot.confirmed.v1",
)


async def wait_for_effects(events: EventLog, journeys: list[Journey], timeout: float = 90.0) -> None:
    """Wait (bounded) until every confirmed journey's events are on the bus: outboxes drain at their own
    pace after faults (a producer re-resolving partition leaders after a broker loss, say). What is still
    missing at the deadline is counted as lost by `check`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {(e.subject, e.type) for e in events.events}
        if all((j.coi, kind) in seen for j in journeys if j.done for kind in EXPECTED):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # duplicates were injected last: a moment for consumers before effects are counted


async def every_page(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every row of a paginated list: its pages of 500, following `Link: <...>; rel="next"`."""
    rows: list[dict[str, Any]] = []
    next_url: str | None = f"{url}?limit=500"
    while next_url is not None:
        answer = await http.get(next_url, headers=headers)
        answer.raise_for_status()
        rows += answer.json()
        link = answer.links.get("next")
        next_url = link["url"] if link else None
    return rows


async def check(
    stack: Stack, events: EventLog, journeys: list[Journey], tally: Tally, http: httpx.AsyncClient
) -> None:
    """Lost: a journey that did not end confirmed, or an effect missing on the bus. Duplicated: any
    effect applied twice — two orders for one idempotency key, two return shipments, two appointments,
    two distinct events where there must be one."""
    urls = {name: stack.url(name) for name in SERVICES}
    orders = await every_page(http, f"{urls['order-intake']}/orders", COORDINATOR)
    by_patient = Counter(o["patient_ref"] for o in orders)
    for journey in journeys:
        if not journey.done or journey.coi is None:
            tally.lost.append(f"journey {journey.number}: {journey.error}")
            continue
        coi = journey.coi
        if by_patient[journey.patient_ref] != 1:
            tally.duplicated.append(f"{coi}: {by_patient[journey.patient_ref]} orders")
        shipments = (
            await http.get(f"{urls['coi-tracking']}/shipments", params={"coi": coi}, headers=COORDINATOR)
        ).json()
        if len([s for s in shipments if s["leg"] == "return"]) != 1:
            tally.duplicated.append(f"{coi}: {len(shipments)} return shipments")
        appointments = (
            await http.get(f"{urls['scheduling']}/appointments", params={"coi": coi}, headers=COORDINATOR)
        ).json()
        if len([a for a in appointments if a["state"] != "cancelled"]) != 1:
            tally.duplicated.append(f"{coi}: {len(appointments)} appointments")
        distinct: Counter[str] = Counter(e.type for e in {e.id: e for e in events.of(coi)}.values())
        for kind in EXPECTED:
            if distinct[kind] == 0:
                tally.lost.append(f"{coi}: no {kind} on the bus")
            elif distinct[kind] > 1:
                tally.duplicated.append(f"{coi}: {distinct[kind]} distinct {kind}")
        if sum(1 for e in {e.id: e for e in events.of(coi)}.values() if e.type == "shipment.created.v1") != 1:
            tally.duplicated.append(f"{coi}: return shipment created more than once")


async def check_dead_letters(kafka: KafkaAccess, malformed: list[tuple[str, bytes]], tally: Tally) -> None:
    """Every malformed message must be in its topic's dead-letter topic once per consuming group."""
    deadline = time.monotonic() + 60
    while True:
        letters = await read_dead_letters(kafka, DLQ_TOPICS)
        seen = Counter(
            (
                d.headers.get("dlq-source-topic", b"").decode(),
                d.value,
                d.headers.get("dlq-consumer-group", b"").decode(),
            )
            for d in letters
        )
        missing = [
            f"{topic}: {value[:40]!r} not dead-lettered by {group}"
            for topic, value in malformed
            for group in CONSUMER_GROUPS[topic]
            if seen[(topic, value, group)] == 0
        ]
        if not missing or time.monotonic() > deadline:
            tally.dead_lettered += len(letters)
            tally.malformed_missing.extend(missing)
            return
        await asyncio.sleep(1)


# ---------------------------------------------------------------- phases


async def settle(stack: Stack) -> None:
    for service in stack.services.values():
        await asyncio.to_thread(service.wait_ready, 120.0)


async def run_phase(
    *, name: str, broker: Any, journeys_count: int, concurrency: int, small: bool, workdir: Path, tally: Tally
) -> None:
    await ensure_topics(broker.access(), replication_factor=3 if name == "cluster" else 1)
    urls_db = create_postgres_databases(list(SERVICES))
    stack = Stack(
        kafka=broker,
        database_urls=urls_db,
        workdir=workdir / name,
        extra_env={
            "OUTBOX_POLL_SECONDS": "0.2",
            "KAFKA_REPLICATION_FACTOR": "3" if name == "cluster" else "1",
            "LOG_LEVEL": "WARNING",
        },
    )
    events = EventLog(broker.access(), EVENT_TOPICS)
    try:
        await asyncio.to_thread(stack.start, 120.0)
        await events.start()
        run_id = uuid.uuid4().hex[:8]
        journeys = [Journey(n, f"PSN-{run_id}-{n}") for n in range(journeys_count)]
        async with httpx.AsyncClient(timeout=30) as http:
            client = Client(http)
            calendar = await client.call(
                "PUT",
                f"{stack.url('scheduling')}/sites/TC-BOSTON",
                headers=COORDINATOR,
                json={
                    "timezone": "America/New_York",
                    "infusions_per_day": 500,
                    "admissions_capacity": 5000,
                    "working_weekdays": [1, 2, 3, 4, 5, 6, 7],
                },
            )
            if calendar.status_code != 200:
                raise RuntimeError(f"could not open the chaos site's calendar: {calendar.text}")
            urls = {n: stack.url(n) for n in SERVICES}
            gate = asyncio.Semaphore(concurrency)
            malformed: list[tuple[str, bytes]] = []
            started = time.monotonic()
            runs = [asyncio.create_task(guarded(client, urls, j, run_id, gate)) for j in journeys]
            faults = (
                phase_one_faults(stack, broker, events, tally, malformed, journeys, small)
                if name == "single"
                else phase_two_faults(broker, tally, journeys)
            )
            await asyncio.gather(faults, *runs)
            tally.seconds += time.monotonic() - started
            await settle(stack)
            await wait_for_effects(events, journeys)
            tally.journeys += len(journeys)
            await check(stack, events, journeys, tally, http)
            if malformed:
                await check_dead_letters(broker.access(), malformed, tally)
        print(
            f"chaos {name}: {len(journeys)} journeys, {sum(j.done for j in journeys)} confirmed", flush=True
        )
    finally:
        await events.stop()
        await asyncio.to_thread(stack.stop)
        drop_postgres_databases(urls_db)


async def main_async(args: argparse.Namespace) -> int:
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="cgt-chaos-") as tmp:
        workdir = Path(tmp)
        single = LocalKafka(data_dir=workdir / "kafka")
        await asyncio.to_thread(single.start)
        try:
            await run_phase(
                name="single",
                broker=single,
                journeys_count=args.journeys,
                concurrency=args.concurrency,
                small=args.small,
                workdir=workdir,
                tally=tally,
            )
        finally:
            single.cleanup()
        cluster = LocalKafkaCluster(3, data_dir=workdir / "cluster")
        await asyncio.to_thread(cluster.start)
        try:
            await run_phase(
                name="cluster",
                broker=cluster,
                journeys_count=args.cluster_journeys,
                concurrency=args.concurrency,
                small=args.small,
                workdir=workdir,
                tally=tally,
            )
        finally:
            cluster.cleanup()
    for fault in tally.faults:
        print(f"  fault: {fault}")
    for problem in (tally.lost + tally.duplicated + tally.malformed_missing)[:20]:
        print(f"  PROBLEM: {problem}")
    ok = not tally.lost and not tally.duplicated and not tally.malformed_missing
    print(
        f"chaos {'passed' if ok else 'FAILED'} in {tally.seconds:.0f}s of journeys on PostgreSQL: "
        f"malformed_not_dead_lettered={len(tally.malformed_missing)} {tally.line()}",
        flush=True,
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--journeys", type=int, default=200)
    parser.add_argument("--cluster-journeys", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--small", action="store_true", help="the smaller form that `make test` runs")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
