"""Verify every shipment's custody ledger against the database: `python -m services.coi_tracking.verify`.

Reads `--database-url`, else DATABASE_URL (like the service), else the SQLite database `make up` writes
(`var/db/coi_tracking.db` under the repository root). Prints one line per shipment and, for a broken chain,
the position of the first entry that does not verify and why. Exits 1 if any ledger is broken, 2 if the
SQLite database file does not exist (it is never created here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from uuid import UUID

from sqlalchemy.engine import make_url
from sqlmodel import col, select

from services.coi_tracking.ledger import verify_shipment_ledger
from services.coi_tracking.models import Shipment
from services.common.db import make_engine
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or f"sqlite:///{DEFAULT_DATABASE}",
        help="default: DATABASE_URL, else the SQLite database of `make up` (var/db/coi_tracking.db)",
    )
    parser.add_argument("--shipment", type=UUID, help="only this shipment")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    missing = missing_sqlite_file(args.database_url)
    if missing is not None:
        print(
            f"verify: no COI tracking database at {missing}: start the stack with `make up` (it writes "
            "var/db/coi_tracking.db), or name the database with --database-url or DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    engine = make_engine(args.database_url)
    broken = 0
    with session_factory(engine)() as session:
        query = select(Shipment).order_by(col(Shipment.created_at))
        if args.shipment:
            query = query.where(Shipment.id == args.shipment)
        for shipment in session.exec(query):
            result = verify_shipment_ledger(session, shipment)
            broken += not result.valid
            if args.json:
                print(
                    json.dumps(
                        {
                            "shipment_id": str(shipment.id),
                            "coi": shipment.coi,
                            "valid": result.valid,
                            "entries": result.entries,
                            "broken_at_sequence": result.broken_at_sequence,
                            "problem": result.problem,
                        }
                    )
                )
            elif result.valid:
                print(f"ok      {shipment.id}  {shipment.coi}  {result.entries} entries")
            else:
                print(
                    f"BROKEN  {shipment.id}  {shipment.coi}  at entry {result.broken_at_sequence}: {result.problem}"
                )
    engine.dispose()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
