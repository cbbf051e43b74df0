"""Verify every shipment's custody ledger: `python -m services.coi_tracking.verify`.

Reads `--database-url`, else DATABASE_URL (like the service), else the SQLite database `make up` writes
(`var/db/coi_tracking.db` under the repository root). Checks each chain's hashes and links, every entry's
Ed25519 signature against the ledger's public keys (LEDGER_SIGNING_KEYS and LEDGER_VERIFY_KEYS, as the
service reads them), and that the database still holds the last head published to the `ledger.heads`
topic, read from the broker itself (`--bootstrap-servers`, else KAFKA_BOOTSTRAP_SERVERS): a database writer
can neither sign nor unpublish. Prints one line per shipment and, for a broken chain, the position of the
first entry that does not verify and why. Exits 1 if any ledger is broken, 2 if the SQLite database file
does not exist (it is never created here) or no ledger key is configured, 3 if the broker cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from uuid import UUID

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from cgt_contracts.events import LedgerHeadPublished
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, select

from services.coi_tracking.domain import ChainVerification, LedgerKeyError, PublishedHead
from services.coi_tracking.ledger import (
    install_keyring,
    keyring_from_environment,
    published_head,
    verify_shipment_ledger,
)
from services.coi_tracking.models import Shipment
from services.common.db import make_engine
from services.common.kafka_access import KafkaAccess, kafka_from_environment
from services.common.topics import ALL_TOPICS, LEDGER_HEADS
from services.common.unit_of_work import session_factory

DEFAULT_DATABASE = Path(__file__).resolve().parents[2] / "var" / "db" / "coi_tracking.db"
"""The file `make up` writes for coi-tracking (deploy/stack.py: sqlite_urls(var / "db"))."""


def missing_sqlite_file(url: str) -> Path | None:
    """The database file a SQLite URL names, if it does not exist (opening it would create an empty one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


LEDGER_HEADS_PARTITIONS = next(spec.partitions for spec in ALL_TOPICS if spec.name == LEDGER_HEADS)


class BrokerUnavailable(Exception):
    """The published heads could not be read: without them a removed tail would go unseen."""


async def read_published_heads(kafka: KafkaAccess, timeout_seconds: float = 30.0) -> dict[str, PublishedHead]:
    """The highest head published per shipment, the whole topic read from the beginning without a consumer
    group (nothing committed). A record that is not a head is skipped: the topic's ACL decides who writes."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, request_timeout_ms=15000)
    try:
        await asyncio.wait_for(consumer.start(), timeout_seconds)
        if LEDGER_HEADS not in await consumer.topics():  # no service has started against this broker
            return {}
        partitions = [TopicPartition(LEDGER_HEADS, p) for p in range(LEDGER_HEADS_PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        heads: dict[str, PublishedHead] = {}
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await asyncio.wait_for(consumer.getmany(*remaining, timeout_ms=1000), timeout_seconds)
            for tp, records in batch.items():
                for record in records:
                    _keep_highest(heads, record.value)
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        return heads
    except (KafkaError, TimeoutError, OSError) as error:
        raise BrokerUnavailable(f"{type(error).__name__}: {error}") from None
    finally:
        await consumer.stop()


def _keep_highest(heads: dict[str, PublishedHead], value: bytes | None) -> None:
    try:
        head = published_head(LedgerHeadPublished.model_validate_json(value or b"").data)
    except ValidationError:
        return
    known = heads.get(head.shipment_id)
    if known is None or head.sequence >= known.sequence:
        heads[head.shipment_id] = head


def _report(
    shipment: Shipment, result: ChainVerification, published: PublishedHead | None, as_json: bool
) -> str:
    if as_json:
        return json.dumps(
            {
                "shipment_id": str(shipment.id),
                "coi": shipment.coi,
                "valid": result.valid,
                "entries": result.entries,
                "published_sequence": published.sequence if published else None,
                "broken_at_sequence": result.broken_at_sequence,
                "problem": result.problem,
            }
        )
    if result.valid:
        return f"ok      {shipment.id}  {shipment.coi}  {result.entries} entries"
    where = f"at entry {result.broken_at_sequence}" if result.broken_at_sequence else "its published head"
    return f"BROKEN  {shipment.id}  {shipment.coi}  {where}: {result.problem}"


def _check(
    session: Session, shipment: Shipment, heads: dict[str, PublishedHead]
) -> tuple[ChainVerification, PublishedHead | None]:
    """Against the head read from the broker; a shipment with entries but no published head is broken."""
    published = heads.get(str(shipment.id))
    result = verify_shipment_ledger(session, shipment, published, trust_outbox=False)
    if result.valid and published is None and shipment.ledger_length > 0:
        problem = f"no head was published to {LEDGER_HEADS} for its {shipment.ledger_length} entries"
        result = ChainVerification(False, result.entries, 1, problem)
    return result, published


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or f"sqlite:///{DEFAULT_DATABASE}",
        help="default: DATABASE_URL, else the SQLite database of `make up` (var/db/coi_tracking.db)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092",
        help="the broker holding the published heads; default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092 "
        "(logged in with KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CAFILE)",
    )
    parser.add_argument("--shipment", type=UUID, help="only this shipment")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = missing_sqlite_file(args.database_url)
    if missing is not None:
        print(
            f"verify: no COI tracking database at {missing}: start the stack with `make up` (it writes "
            "var/db/coi_tracking.db), or name the database with --database-url or DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    try:
        install_keyring(keyring_from_environment())
    except LedgerKeyError as error:
        print(f"verify: {error}", file=sys.stderr)
        return 2
    engine = make_engine(args.database_url)
    broken = 0
    try:
        with session_factory(engine)() as session:
            query = select(Shipment).order_by(col(Shipment.created_at))
            if args.shipment:
                query = query.where(Shipment.id == args.shipment)
            shipments = list(session.exec(query))
            # The broker is read only when some ledger has entries: an empty one has nothing to have lost.
            needs_heads = any(shipment.ledger_length > 0 for shipment in shipments)
            kafka = kafka_from_environment().model_copy(update={"bootstrap_servers": args.bootstrap_servers})
            heads = asyncio.run(read_published_heads(kafka)) if needs_heads else {}
            for shipment in shipments:
                result, published = _check(session, shipment, heads)
                broken += not result.valid
                print(_report(shipment, result, published, args.json))
    except BrokerUnavailable as error:
        print(f"verify: cannot read {LEDGER_HEADS} from {args.bootstrap_servers} ({error})", file=sys.stderr)
        return 3
    finally:
        engine.dispose()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
