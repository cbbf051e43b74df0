"""Where the official third-party documents are: `CONFORMANCE_DIR` (default `../shared/conformance` beside
the repository root; a relative value is taken from the repository root). They are GS1's EPCIS 2.0 schema and
examples (`epcis/`, © GS1 AISBL, github.com/gs1/EPCIS) and HL7's FHIR examples (`fhir/`), read at test time
and never copied into the repository. `make test` does not collect this directory; `make conformance` does,
and fails (never skips) when the directory is missing."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE_DIR = (ROOT / os.environ.get("CONFORMANCE_DIR", "../shared/conformance")).resolve()
EPCIS_DIR = CONFORMANCE_DIR / "epcis"
FHIR_R4_DIR = CONFORMANCE_DIR / "fhir" / "R4"


def missing() -> str | None:
    """Why the conformance material cannot be read, or None."""
    for needed in (EPCIS_DIR / "EPCIS-JSON-Schema.json", EPCIS_DIR / "JSON", FHIR_R4_DIR):
        if not needed.exists():
            return (
                f"the conformance material is not there: {needed} does not exist. Set CONFORMANCE_DIR to the "
                f"directory holding GS1's EPCIS documents (epcis/) and HL7's FHIR examples (fhir/R4/); "
                f"default: ../shared/conformance beside the repository (now {CONFORMANCE_DIR})"
            )
    return None
