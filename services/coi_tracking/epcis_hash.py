"""The EPCIS 2.0 event hash (CBV 2.0 §8.9, "canonical event hash"): what tells a re-sent event from another
event under the same eventID. Computed by the PyPI package `epcis-event-hash-generator` (pinned in uv.lock):
eventID, recordTime and errorDeclaration are outside the hash, so an error declaration hashes like the event
it declares erroneous; the event time is normalised to UTC; CBV values to their web-vocabulary URIs, EPCs to
GS1 Digital Link.

The package is used offline and one event at a time:
- its JSON-LD expansion (pyld) may load only the two EPCIS contexts the package bundles (its own loader
  falls back to the network for any other URL; ours refuses), so a document's other context URLs are left
  out of the hashed copy (inline `{prefix: namespace}` contexts are kept);
- it keeps the namespaces of the last document in a module dictionary, so hashing is serialised and that
  dictionary cleared first: one event's hash never depends on the document hashed before;
- it skips, with a log line, an event it cannot canonicalise; then the hash here is the SHA-256 of the
  event's canonical JSON (keys sorted, eventID / recordTime / errorDeclaration left out), marked
  `?ver=cgt-json`, so that same and different content are still told apart.

Known limit: release 1.9.3 (the newest on PyPI) predates the repository's current test vectors (it puts a
bizTransaction's `type` before its value, for one), so its hashes equal those of the event hash generator
of its time, not of the newest one; both are deterministic, which is what telling same from different needs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from epcis_event_hash_generator import hash_generator, json_to_py
from pyld import jsonld

STANDARD_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
BUNDLED: dict[str, str] = {
    STANDARD_CONTEXT: "e532647e8eb371379b8b0e8602d8981c8566bc60f7351f22c76a5bc865962008.jsonld",
    "https://gs1.github.io/EPCIS/epcis-context.jsonld": (
        "14b10c9d3e92d35f577bfc610fe5ec15aa2941124987919389d7cd9998516861.jsonld"
    ),
}
"""The EPCIS contexts the package ships (its files, named by their SHA-256), by URL."""
BUNDLED_CONTEXTS = frozenset(BUNDLED)
NOT_HASHED = ("eventID", "recordTime", "errorDeclaration")
"""What the canonical hash leaves out (the same list in the fallback)."""

_lock = threading.Lock()


@functools.cache
def _bundled_context(url: str) -> Any:
    return json.loads((files("epcis_event_hash_generator") / BUNDLED[url]).read_text(encoding="utf-8"))


def _offline_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """pyld's document loader: the bundled contexts, and nothing from the network."""
    if url not in BUNDLED:
        raise jsonld.JsonLdError(
            f"{url} is not a bundled EPCIS context: nothing is fetched",
            "jsonld.LoadDocumentError",
            code="loading document failed",
        )
    document = _bundled_context(url)
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": document,
    }


jsonld.set_document_loader(_offline_loader)  # the package installed its own, with a network fallback


def hashed_context(context: object) -> list[Any]:
    """The contexts a hashed copy carries: the standard one, and the document's bundled or inline ones."""
    given = context if isinstance(context, list) else [context]
    kept = [c for c in given if (isinstance(c, str) and c in BUNDLED_CONTEXTS) or isinstance(c, dict)]
    return kept if any(isinstance(c, str) for c in kept) else [STANDARD_CONTEXT, *kept]


def event_hash(event: Mapping[str, Any], context: object = STANDARD_CONTEXT) -> str:
    """The event's hash as a `ni:///sha-256;<hex>?ver=CBV2.0` URI (the fallback: `?ver=cgt-json`)."""
    document = {
        "@context": hashed_context(context),
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2000-01-01T00:00:00Z",
        "epcisBody": {"eventList": [copy.deepcopy(dict(event))]},
    }
    hashes: list[str] = []
    with _lock:
        json_to_py._namespaces.clear()  # the package's module state: see the module's docstring
        try:
            events = json_to_py.event_list_from_epcis_document_json(document)
            hashes = hash_generator.epcis_hashes_from_events(events)
        except Exception as error:  # the package's failures are of every kind; the fallback covers them
            logging.getLogger(__name__).debug("event hash fallback: %r", error)
    if len(hashes) == 1:
        return str(hashes[0])
    return fallback_hash(event)


def fallback_hash(event: Mapping[str, Any]) -> str:
    content = {k: v for k, v in event.items() if k not in NOT_HASHED}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"ni:///sha-256;{hashlib.sha256(canonical.encode()).hexdigest()}?ver=cgt-json"
