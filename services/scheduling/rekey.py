"""Re-encrypt every stored webhook secret (and FHIR Subscription channel header) under the newest key: `python -m services.scheduling.rekey`.

Rotation without downtime: set WEBHOOK_SECRET_KEY to the new key followed by the old ones (comma-separated)
and restart scheduling, which then stores new secrets under the new key and still signs with every stored
one; run this (the service keeps running); then drop the old keys from the list. Secrets stored in plain
text by a version before they were encrypted are encrypted too. Reads DATABASE_URL and the key ring as the
service does. Prints how many values it rewrote; exits 2 if one is under none of the listed keys.
"""

from __future__ import annotations

from services.common.db import make_engine
from services.common.encryption import reencrypt_column, rekey_command
from services.scheduling.models import FhirSubscription, WebhookEndpoint
from services.scheduling.runtime import SchedulingSettings


def rewrite() -> dict[str, object]:
    settings = SchedulingSettings()
    table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
    engine, ring = make_engine(settings.database_url), settings.webhook_secret_ring()
    columns = (table.c.secret, table.c.previous_secret)
    counts = {
        column.name: reencrypt_column(engine, table, column, ring, plaintext_before=True)
        for column in columns
    }
    subscriptions = FhirSubscription.__table__  # type: ignore[attr-defined]
    counts["fhir_subscription.headers"] = reencrypt_column(
        engine, subscriptions, subscriptions.c.headers, ring
    )
    return {"table": table.name, "values_reencrypted": counts}


if __name__ == "__main__":
    raise SystemExit(rekey_command(rewrite))
