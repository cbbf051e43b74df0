"""Re-encrypt every stored webhook secret under the newest key: `python -m services.scheduling.rekey`.

Rotation without downtime: set WEBHOOK_SECRET_KEY to the new key followed by the old ones (comma-separated)
and restart scheduling, which then stores new secrets under the new key and still signs with every stored
one; run this (the service keeps running); then drop the old keys from the list. Secrets stored in plain
text by a version before they were encrypted are encrypted too. Reads DATABASE_URL and the key ring as the
service does. Prints how many values it rewrote; exits 2 if one is under none of the listed keys.
"""

from __future__ import annotations

import json
import sys

from services.common.db import make_engine
from services.common.encryption import KeyRingError, reencrypt_column
from services.scheduling.models import WebhookEndpoint
from services.scheduling.runtime import SchedulingSettings


def main() -> int:
    settings = SchedulingSettings()
    engine, ring = make_engine(settings.database_url), settings.webhook_secret_ring()
    table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
    try:
        rewritten = {
            column.name: reencrypt_column(engine, table, column, ring, plaintext_before=True)
            for column in (table.c.secret, table.c.previous_secret)
        }
    except KeyRingError as error:
        print(f"rekey stopped: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"table": table.name, "values_reencrypted": rewritten}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
