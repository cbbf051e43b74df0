"""Write contracts/asyncapi.json (committed): the bus's AsyncAPI 3.0.0 document, from the code.

`make schemas` runs it after generate_schemas.py. It builds the three services' apps as their modules do
(never started: no broker, a throwaway SQLite file, the published development secrets, in this process
only) and reads what each one declared on its broker (`services.common.asyncapi.combined_document`): the
topics it reads with its consumer groups and the event types they apply, and the event types its outbox
writes to each topic. tests/unit/test_asyncapi.py regenerates it and fails when the committed file differs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DOCUMENT = ROOT / "contracts" / "asyncapi.json"
SERVICES = {
    "order_intake": "OrderIntakeSettings",
    "coi_tracking": "TrackingSettings",
    "scheduling": "SchedulingSettings",
}
"""Each service's package and its settings class."""


@contextmanager
def _development_environment(scratch: Path) -> Iterator[None]:
    """The environment a development stack runs with (deploy/stack.py), for this process until exit."""
    from deploy import stack
    from services.common import development

    values = {
        development.DEV_MODE_VARIABLE: "true",
        "CGT_API_TOKENS_FILE": str(stack.DEV_TOKENS_FILE),
        "PHI_ENCRYPTION_KEY": development.DEV_PHI_KEY,
        "PATIENT_MATCH_KEY": development.DEV_PATIENT_MATCH_KEY,
        "LEDGER_SIGNING_KEYS": stack.DEV_LEDGER_SIGNING_KEYS,
        "COURIER_VERIFY_KEYS": stack.DEV_COURIER_VERIFY_KEYS,
        "WEBHOOK_SECRET_KEY": development.DEV_WEBHOOK_SECRET_KEY,
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "DATABASE_URL": f"sqlite:///{scratch / 'unused.db'}",
        "LOG_LEVEL": "ERROR",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def current_document() -> dict[str, Any]:
    """The combined document as the code declares it now."""
    from services.common.asyncapi import combined_document

    with tempfile.TemporaryDirectory() as scratch, _development_environment(Path(scratch)):
        brokers = {}
        for package, settings_class in SERVICES.items():
            module = importlib.import_module(f"services.{package}.app")
            runtime = module.create_app(getattr(module, settings_class)()).state.runtime
            brokers[runtime.settings.service_name] = runtime.broker
            runtime.engine.dispose()
        return combined_document(brokers, version=importlib.metadata.version("cgt-contracts"))


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    document = current_document()
    DOCUMENT.write_text(render(document))
    print(
        f"wrote {DOCUMENT.relative_to(ROOT)}: {len(document['channels'])} channels, "
        f"{len(document['operations'])} operations, {len(document['components']['messages'])} messages"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
