"""Re-encrypt every stored patient identity under the newest PHI key: `python -m services.order_intake.rekey`.

Rotation without downtime: set PHI_ENCRYPTION_KEY to the new key followed by the old ones (comma-separated)
and restart order intake, which then encrypts with the new key and still reads every identity; run this
(the service keeps running); then drop the old keys from the list. Reads DATABASE_URL and the key ring as
the service does. Prints how many rows it rewrote; exits 2 if a row is under none of the listed keys.
"""

from __future__ import annotations

import json
import sys

from services.common.db import make_engine
from services.common.encryption import KeyRingError, reencrypt_column
from services.order_intake.models import PatientRecord
from services.order_intake.runtime import OrderIntakeSettings


def main() -> int:
    settings = OrderIntakeSettings()
    table = PatientRecord.__table__  # type: ignore[attr-defined]
    try:
        rewritten = reencrypt_column(
            make_engine(settings.database_url), table, table.c.encrypted_identity, settings.phi_key_ring()
        )
    except KeyRingError as error:
        print(f"rekey stopped: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"table": table.name, "rows_reencrypted": rewritten}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
