"""Write the JSON Schema of every event to contracts/schemas/<type>.json (committed).

`make schemas` regenerates them; tests/unit/test_contracts.py fails when a model changes an existing
version's schema incompatibly: such a change needs a new version (`.v2`), not an edit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cgt_contracts.events import EVENT_TYPES

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def current_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema(mode="validation") for name, model in EVENT_TYPES.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    SCHEMAS.mkdir(exist_ok=True)
    for name, schema in current_schemas().items():
        (SCHEMAS / f"{name}.json").write_text(render(schema))
    print(f"wrote {len(EVENT_TYPES)} schemas to {SCHEMAS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
