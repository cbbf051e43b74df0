"""Re-encrypt every stored patient identity under the newest PHI key: `python -m services.order_intake.rekey`.

Rotation without downtime: set PHI_ENCRYPTION_KEY to the new key followed by the old ones (comma-separated)
and restart order intake, which then encrypts with the new key and still reads every identity; run this
(the service keeps running); then drop the old keys from the list. Reads DATABASE_URL and the key ring as
the service does. Prints how many rows it rewrote; exits 2 if a row is under none of the listed keys.
"""

from __future__ import annotations

from services.common.db import make_engine
from services.common.encryption import reencrypt_column, rekey_command
from services.order_intake.models import PatientRecord
from services.order_intake.runtime import OrderIntakeSettings


def rewrite() -> dict[str, object]:
    settings = OrderIntakeSettings()
    table = PatientRecord.__table__  # type: ignore[attr-defined]
    engine, ring = make_engine(settings.database_url), settings.phi_key_ring()
    return {
        "table": table.name,
        "rows_reencrypted": reencrypt_column(engine, table, table.c.encrypted_identity, ring),
    }


if __name__ == "__main__":
    raise SystemExit(rekey_command(rewrite))
