"""Write-path benchmark: courier scans applied in batches, in process, no broker (`make bench`).

What the `couriers.scans` consumer does per batch, without Kafka: take the batch's fresh events into the
inbox, apply every scan under the domain's rules, commit (`consumer.apply_batch` with
`COURIER_SCANS_CONSUMER`, the consumer's own code). Each accepted checkpoint
scan writes its scan row, its reading, its outbox event and its inbox row at commit. Prints scans per second
of wall time and CPU microseconds per scan (this process only: the figure least moved by other load on the
machine), median of the measured runs, per database.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cgt_contracts.envelope import new_uuid
from cgt_contracts.events import CourierScanData, CourierScanSubmitted, ScanType, ShipmentLeg
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from deploy.stack import create_postgres_databases, drop_postgres_databases
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.handlers import COURIER_SCANS_CONSUMER, CourierScan
from services.coi_tracking.models import TABLES, Bag, Container, Courier, ScanRecord, Shipment
from services.common.consumer import apply_batch
from services.common.db import create_tables, make_engine
from services.common.identifiers import coi_identifier
from services.common.logging import configure_logging
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory

COURIER = "courier-ben"
COMPANY = "CRYO-EXPRESS"


def plan_shipments(engine: Engine, count: int, start: datetime) -> list[tuple[uuid.UUID, str]]:
    """`count` return shipments in transit, held by courier-ben, one bag each: (shipment id, COI)."""
    planned: list[tuple[uuid.UUID, str]] = []
    with session_factory(engine)(expire_on_commit=False) as session:
        session.add(Courier(id=COURIER, company=COMPANY))
        for n in range(count):
            coi = coi_identifier("W0000", 2026, n)
            shipment = Shipment(
                order_id=uuid.uuid4(),
                coi=coi,
                leg=ShipmentLeg.RETURN,
                treatment_center_id="TC-BOSTON",
                courier_company=COMPANY,
                storage_limit_celsius=-150.0,
                destination="TC-BOSTON",
                custodian=COURIER,
                status=ShipmentStatus.IN_TRANSIT,
                physical_status=ShipmentStatus.IN_TRANSIT,
                dispatched_at=start,
                product_released_at=start,
                eta_at=start + timedelta(days=3),
                created_at=start - timedelta(hours=1),
            )
            session.add(shipment)
            session.flush()
            session.add(Container(id=f"DS-B{n}", shipment_id=shipment.id))
            session.add(Bag(shipment_id=shipment.id, coi=coi, number=1, of=1))
            planned.append((shipment.id, coi))
        session.commit()
    return planned


def checkpoint(shipment_id: uuid.UUID, coi: str, at: datetime) -> CourierScanSubmitted:
    return CourierScanSubmitted(
        source="bench",
        subject=coi,
        correlationid=f"bench-{new_uuid()}",
        data=CourierScanData(
            shipment_id=shipment_id,
            scan_type=ScanType.CHECKPOINT,
            bag_cois=[coi],
            location="Hub 1",
            device_time=at,
            temperature_celsius=-180.0,
            courier_id=COURIER,
            courier_company=COMPANY,
        ),
    )


def run_once(engine: Engine, shipments: int, batches: int, batch_size: int) -> tuple[float, float]:
    """Apply `batches` batches of checkpoint scans; returns (wall seconds, CPU seconds)."""
    start = datetime.now(UTC) - timedelta(days=2)
    planned = plan_shipments(engine, shipments, start)
    sessions = session_factory(engine)
    step = timedelta(milliseconds=1)
    events: list[list[CourierScan]] = [
        [
            checkpoint(*planned[i % shipments], start + step * (b * batch_size + i + 1))
            for i in range(batch_size)
        ]
        for b in range(batches)
    ]
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in events:
        applied, refused = apply_batch(sessions, COURIER_SCANS_CONSUMER, batch)
        if refused or applied != len(batch):
            raise SystemExit(f"bench scans were not all applied: {applied} of {len(batch)}, {refused[:1]}")
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    with sessions() as session:
        scans = session.exec(
            select(func.count()).select_from(ScanRecord).where(col(ScanRecord.accepted))
        ).one()
    if scans != batches * batch_size:
        raise SystemExit(f"only {scans} of {batches * batch_size} bench scans were accepted")
    return elapsed


def bench(kind: str, args: argparse.Namespace) -> None:
    walls: list[float] = []
    cpus: list[float] = []
    for run in range(args.warmup_runs + args.runs):
        with tempfile.TemporaryDirectory() as directory:
            urls = (
                {"bench": f"sqlite:///{Path(directory) / 'bench.db'}"}
                if kind == "sqlite"
                else create_postgres_databases(["bench"])
            )
            engine = make_engine(urls["bench"])
            try:
                create_tables(engine, [*COMMON_TABLES, *TABLES])
                wall, cpu = run_once(engine, args.shipments, args.batches, args.batch_size)
            finally:
                engine.dispose()
                if kind == "postgresql":
                    drop_postgres_databases(urls)
        if run >= args.warmup_runs:
            walls.append(wall)
            cpus.append(cpu)
    scans = args.batches * args.batch_size
    print(
        f"write path {kind:10s}: {scans / statistics.median(walls):8,.0f} scans/s "
        f"(runs {min(scans / w for w in walls):,.0f}-{max(scans / w for w in walls):,.0f}), "
        f"CPU {statistics.median(cpus) / scans * 1e6:5.0f} µs/scan "
        f"(runs {min(cpus) / scans * 1e6:.0f}-{max(cpus) / scans * 1e6:.0f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup-runs", type=int, default=1)
    parser.add_argument("--shipments", type=int, default=40)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args(argv)
    configure_logging("bench-writes", "WARNING")
    for kind in args.databases:
        bench(kind, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
