"""GS1 EPCIS 2.0 query: a shipment's stored records as EPCIS events, and the `GET /events` parameters.

Pure: no I/O. commands.query_events reads the rows (filtered, scoped and paged in the database) and this
module renders them; the route (epcis_query_api.py) wraps them in an `EPCISQueryDocument`.

| record                                    | EPCIS event                                                          |
|-------------------------------------------|----------------------------------------------------------------------|
| accepted scan pick_up                     | ObjectEvent OBSERVE, bizStep `shipping`                              |
| accepted scan checkpoint                  | ObjectEvent OBSERVE, bizStep `arriving`                              |
| accepted scan delivery                    | ObjectEvent OBSERVE, bizStep `receiving`                             |
| accepted scan receipt                     | ObjectEvent OBSERVE, bizStep `accepting`                             |
| accepted scan hand_off / delay            | ObjectEvent OBSERVE, bizStep `urn:cgt:bizstep:hand_off` / `…:delay`  |
| temperature reading (logger, EPCIS)       | ObjectEvent OBSERVE, bizStep `sensor_reporting`, the shipment's bags |
| custody ledger entry (kind custody)       | TransactionEvent OBSERVE, bizStep of the scan that moved it, sourceList / destinationList `owning_party` |

Every event: `eventTime` in UTC with `eventTimeZoneOffset` `+00:00`; `bizTransactionList`
`[{"type": "desadv", "bizTransaction": "urn:uuid:<shipment id>"}]` (what capture reads to name a shipment);
`epcList` one `urn:epc:id:giai:4012345.<COI>` per bag, the form `epcis.coi_of` reads back (a label that is
not a well-formed COI is left out: an EPC must be a URI). A scan's temperature is its `sensorElementList`
(its copy in the readings table, source `scan`, is not rendered twice).

- eventID, stable across queries: a scan captured through EPCIS keeps its captured eventID when the event
  rendered here has the captured event hash (the rendering is faithful: capturing it again is a duplicate);
  otherwise, and for every other record, `urn:uuid:<uuid>`: the scan's id, or a UUIDv5 of the reading's
  row id or of the ledger entry's (shipment, sequence). Never a captured id with another hash: captured
  again it would be a conflict put before QA.
- locations: `readPoint` / `bizLocation` only when the stored location is a non-identifying GS1 location
  identifier (`urn:epc:id:sgln:…`, or a GS1 Digital Link with a GLN, `https://id.gs1.org/414/…`); a free
  text place ("AGC Biologics, Milan") is never published (issue 17).
- parties: `urn:cgt:party:<id>` of the ledger's from/to party (courier, site or manufacturer ids: no
  patient data). Not rendered: refused scans (they moved nothing; `GET /shipments/{id}/scans` has them),
  quarantine and QA ledger entries (COI tracking's own decisions). A retracted scan carries an
  `errorDeclaration` with its `declarationTime` (the free-text reason stays out).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote
from uuid import UUID

from cgt_contracts.events import ScanType

from services.coi_tracking import epcis
from services.coi_tracking.epcis_hash import STANDARD_CONTEXT, event_hash
from services.common.identifiers import COI_PATTERN, has_valid_check

GIAI_PREFIX = "urn:epc:id:giai:4012345."
"""A bag's EPC: GS1's example company prefix, then the COI (what `epcis.coi_of` reads back)."""
BIZ_TRANSACTION_TYPE = "desadv"
PARTY_PREFIX = "urn:cgt:party:"
CUSTOM_STEP = "urn:cgt:bizstep:"
SCAN_STEPS: dict[ScanType, str] = {
    ScanType.PICK_UP: "shipping",
    ScanType.CHECKPOINT: "arriving",
    ScanType.DELIVERY: "receiving",
    ScanType.RECEIPT: "accepting",
    ScanType.HAND_OFF: f"{CUSTOM_STEP}hand_off",
    ScanType.DELAY: f"{CUSTOM_STEP}delay",
}
"""The bizStep of each scan type; capture reads the four CBV ones back as the same scan type (epcis.BIZ_STEPS)
and refuses the two custom ones (EPCIS carries no hand-off between couriers, no new ETA)."""
READING_STEP = "sensor_reporting"
OBJECT_EVENT, TRANSACTION_EVENT = "ObjectEvent", "TransactionEvent"
QUERYABLE_TYPES = (OBJECT_EVENT, TRANSACTION_EVENT)
"""The event types this service renders (`GET /eventTypes`)."""
ID_NAMESPACE = UUID("6f1c1f6e-3a5b-5d2e-9c4f-8b7a6e5d4c3b")
"""The UUIDv5 namespace of the eventIDs of readings and ledger entries (fixed: ids stay stable)."""
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100

T = TypeVar("T")
SCAN, READING, CUSTODY = 0, 1, 2
"""The record sources, in the order ties of eventTime go (then by the record's own id)."""

_LOCATION = re.compile(
    r"(urn:epc:id:sgln:[0-9]+\.[0-9]*\.[!-~]+|https://id\.gs1\.org/414/[0-9]{13}(/254/[!-~]+)?)$"
)


# --- the query parameters --------------------------------------------------------------------------------


class QueryParameterError(ValueError):
    """EPCIS QueryParameterException: `name` is the parameter (never its value) and `detail` what is wrong."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@dataclass(frozen=True)
class PageToken:
    """Where the previous page ended: the last event's time, source and record id (the sort key)."""

    at: datetime
    source: int
    record: str


@dataclass(frozen=True)
class EventQuery:
    """`GET /events` parameters, parsed. None: not constrained. `biz_steps` holds bare CBV words (a CBV
    URI given is reduced to its word) and custom URIs as given."""

    event_types: frozenset[str] | None = None
    ge_event_time: datetime | None = None
    lt_event_time: datetime | None = None
    biz_steps: frozenset[str] | None = None
    cois: frozenset[str] | None = None
    """MATCH_epc / MATCH_anyEPC: the COIs of the EPCs given (an EPC that carries none matches nothing)."""
    shipment_ids: frozenset[UUID] | None = None
    """EQ_bizTransaction(_desadv): the shipments named `urn:uuid:<id>` (another value matches nothing)."""
    per_page: int = DEFAULT_PER_PAGE
    after: PageToken | None = None

    def wants(self, event_type: str) -> bool:
        return self.event_types is None or event_type in self.event_types

    def wants_step(self, step: str) -> bool:
        return self.biz_steps is None or step in self.biz_steps

    def scan_types(self) -> list[ScanType]:
        """The scan types whose event the query can return (every filter on an ObjectEvent scan)."""
        if not self.wants(OBJECT_EVENT):
            return []
        return [t for t, step in SCAN_STEPS.items() if self.wants_step(step)]

    def custody_scan_types(self) -> list[ScanType]:
        if not self.wants(TRANSACTION_EVENT):
            return []
        return [t for t, step in SCAN_STEPS.items() if self.wants_step(step)]

    def wants_readings(self) -> bool:
        return self.wants(OBJECT_EVENT) and self.wants_step(READING_STEP)


LIST_PARAMETERS = (
    "eventType",
    "EQ_bizStep",
    "MATCH_epc",
    "MATCH_anyEPC",
    "EQ_bizTransaction",
    f"EQ_bizTransaction_{BIZ_TRANSACTION_TYPE}",
)
QUERY_PARAMETERS = (
    "eventType",
    "GE_eventTime",
    "LT_eventTime",
    "EQ_bizStep",
    "MATCH_epc",
    "MATCH_anyEPC",
    "EQ_bizTransaction",
    f"EQ_bizTransaction_{BIZ_TRANSACTION_TYPE}",
    "perPage",
    "nextPageToken",
)
"""Every parameter `GET /events` takes; another (a standard one this service does not evaluate too) is a
QueryParameterException: a filter is applied or refused, never ignored."""
MAX_VALUES = 50


def parse_query(items: Iterable[tuple[str, str]], event_type: str | None = None) -> EventQuery:
    """The query of `GET /events` (or `/eventTypes/{eventType}/events`, which takes no `eventType`): list values are pipe-delimited (the REST
    binding's `style: pipeDelimited`) and a parameter may be repeated (the values add up, but each scalar
    parameter once). Raises QueryParameterError naming the first bad parameter."""
    given: dict[str, list[str]] = {}
    for name, value in items:
        if name not in QUERY_PARAMETERS:
            raise QueryParameterError(name, "not a query parameter of this endpoint")
        given.setdefault(name, []).append(value)
    for name, values in given.items():
        if len(values) > 1 and name not in LIST_PARAMETERS:
            raise QueryParameterError(name, "given more than once")

    def listed(name: str) -> list[str] | None:
        if name not in given:
            return None
        values = [v.strip() for value in given[name] for v in value.split("|")]
        if not values or any(not v for v in values):
            raise QueryParameterError(name, "an empty value")
        if len(values) > MAX_VALUES:
            raise QueryParameterError(name, f"more than {MAX_VALUES} values")
        return values

    types = listed("eventType")
    if event_type is not None:
        if types is not None:
            raise QueryParameterError("eventType", "the path names the event type")
        types = [event_type]
    if types is not None:
        unknown = [t for t in types if t not in epcis.EVENT_TYPES]
        if unknown:
            raise QueryParameterError(
                "eventType", f"not an EPCIS event type ({', '.join(epcis.EVENT_TYPES)})"
            )
    steps = listed("EQ_bizStep")
    cois = _both(*(_cois(listed(n)) for n in ("MATCH_epc", "MATCH_anyEPC")))
    names = ("EQ_bizTransaction", f"EQ_bizTransaction_{BIZ_TRANSACTION_TYPE}")
    shipments = _both(*(_shipments(listed(n)) for n in names))
    query = EventQuery(
        event_types=None if types is None else frozenset(types),
        ge_event_time=_time(given, "GE_eventTime"),
        lt_event_time=_time(given, "LT_eventTime"),
        biz_steps=None if steps is None else frozenset(epcis.biz_step_word(s) for s in steps),
        cois=cois,
        shipment_ids=shipments,
        per_page=_per_page(given),
        after=None if "nextPageToken" not in given else decode_token(given["nextPageToken"][0]),
    )
    return query


def _both(first: frozenset[T] | None, second: frozenset[T] | None) -> frozenset[T] | None:
    """MATCH_epc and MATCH_anyEPC (or both EQ_bizTransaction forms) both given: the events both allow."""
    if first is None or second is None:
        return first if second is None else second
    return first & second


def _cois(epcs: list[str] | None) -> frozenset[str] | None:
    """The COIs the EPCs carry (in any form `epcis.coi_of` reads); one that carries none matches nothing."""
    return None if epcs is None else frozenset(c for c in map(epcis.coi_of, epcs) if c is not None)


def _time(given: dict[str, list[str]], name: str) -> datetime | None:
    if name not in given:
        return None
    try:
        return epcis.parse_time(given[name][0], name)
    except epcis.EventRefused:
        raise QueryParameterError(name, "not a date-time with a UTC offset (RFC 3339)") from None


def _per_page(given: dict[str, list[str]]) -> int:
    if "perPage" not in given:
        return DEFAULT_PER_PAGE
    text = given["perPage"][0]
    if not text.isdigit() or not 1 <= int(text) <= MAX_PER_PAGE:
        raise QueryParameterError("perPage", f"a whole number from 1 to {MAX_PER_PAGE}")
    return int(text)


def _shipments(values: list[str] | None) -> frozenset[UUID] | None:
    """The shipments named `urn:uuid:<id>`; another value names none."""
    if values is None:
        return None
    found: set[UUID] = set()
    for value in values:
        if value.lower().startswith("urn:uuid:"):
            try:
                found.add(UUID(value[len("urn:uuid:") :]))
            except ValueError:
                continue
    return frozenset(found)


# --- the page token --------------------------------------------------------------------------------------


def encode_token(token: PageToken) -> str:
    raw = json.dumps(
        [token.at.astimezone(UTC).isoformat(), token.source, token.record], separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(text: str) -> PageToken:
    """The token `encode_token` gave; anything else is a QueryParameterError naming nextPageToken."""
    bad = QueryParameterError("nextPageToken", "not a token this endpoint gave")
    if len(text) > 300:
        raise bad
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        at, source, record = values
        parsed = datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad from None
    valid_record = (
        isinstance(record, str)
        and (source != SCAN or _is_uuid(record))
        and (source == SCAN or record.isdigit())
    )
    if parsed.tzinfo is None or source not in (SCAN, READING, CUSTODY) or not valid_record:
        raise bad
    return PageToken(parsed.astimezone(UTC), source, record)


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


# --- the records, as the renderer reads them -------------------------------------------------------------


@dataclass(frozen=True)
class ScanFacts:
    id: UUID
    shipment_id: UUID
    scan_type: ScanType
    bag_cois: tuple[str, ...]
    location: str
    device_time: datetime
    temperature_celsius: float | None
    epcis_event_id: str | None
    epcis_event_hash: str | None
    retracted_at: datetime | None


@dataclass(frozen=True)
class ReadingFacts:
    id: int
    shipment_id: UUID
    read_at: datetime
    celsius: float
    bag_cois: tuple[str, ...]
    """The shipment's bags (a logger reading is of the shipper they are in)."""


@dataclass(frozen=True)
class CustodyFacts:
    id: int
    shipment_id: UUID
    sequence: int
    from_party: str
    to_party: str
    location: str
    at: datetime
    meaning: str
    bag_cois: tuple[str, ...]


Record = ScanFacts | ReadingFacts | CustodyFacts


def sort_key(record: Record) -> tuple[datetime, int, str]:
    """The order of events: eventTime, then source (scan, reading, custody), then the record's id (a UUID's
    text, or a row id zero-padded so that text order is number order, as in the database)."""
    if isinstance(record, ScanFacts):
        return (record.device_time.astimezone(UTC), SCAN, str(record.id))
    if isinstance(record, ReadingFacts):
        return (record.read_at.astimezone(UTC), READING, f"{record.id:020d}")
    return (record.at.astimezone(UTC), CUSTODY, f"{record.id:020d}")


def token_after(record: Record) -> PageToken:
    at, source, _ = sort_key(record)
    return PageToken(at, source, str(record.id))


def custody_scan_type(meaning: str) -> ScanType | None:
    """The scan type a custody entry's meaning names (`pick_up: custody handed over`), if any."""
    word = meaning.partition(":")[0]
    return ScanType(word) if word in ScanType._value2member_map_ else None


# --- rendering -------------------------------------------------------------------------------------------


def epc_of(coi: str) -> str:
    return f"{GIAI_PREFIX}{coi}"


def epc_list(cois: Sequence[str]) -> list[str]:
    """One EPC per bag label that is a well-formed COI, in the order read (duplicates kept once)."""
    valid = [c for c in cois if COI_PATTERN.match(c) and has_valid_check(c)]
    return [epc_of(c) for c in dict.fromkeys(valid)]


def location_id(location: str) -> str | None:
    """The location as a readPoint/bizLocation id, only if it is a GS1 location identifier."""
    return location if _LOCATION.match(location) else None


def event_time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def transaction(shipment_id: UUID) -> list[dict[str, str]]:
    return [{"type": BIZ_TRANSACTION_TYPE, "bizTransaction": f"urn:uuid:{shipment_id}"}]


def temperature_element(celsius: float) -> list[dict[str, Any]]:
    return [{"sensorReport": [{"type": "Temperature", "value": celsius, "uom": "CEL"}]}]


def derived_id(kind: str, *parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(ID_NAMESPACE, ':'.join([kind, *map(str, parts)]))}"


def render(record: Record) -> dict[str, Any]:
    if isinstance(record, ScanFacts):
        return scan_event(record)
    if isinstance(record, ReadingFacts):
        return reading_event(record)
    return custody_event(record)


def scan_event(scan: ScanFacts) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": OBJECT_EVENT,
        "eventTime": event_time(scan.device_time),
        "eventTimeZoneOffset": "+00:00",
        "epcList": epc_list(scan.bag_cois),
        "action": "OBSERVE",
        "bizStep": SCAN_STEPS[scan.scan_type],
    }
    where = location_id(scan.location)
    if where is not None:
        event["readPoint"] = {"id": where}
    event["bizTransactionList"] = transaction(scan.shipment_id)
    if scan.temperature_celsius is not None:
        event["sensorElementList"] = temperature_element(scan.temperature_celsius)
    event_id = f"urn:uuid:{scan.id}"
    if scan.epcis_event_id is not None and scan.epcis_event_hash is not None:
        canonical = json.dumps(event, separators=(",", ":"))  # in order: the hash package reads it
        if _hash_of(canonical) == scan.epcis_event_hash:
            event_id = scan.epcis_event_id
    rendered = {"type": OBJECT_EVENT, "eventID": event_id} | event
    if scan.retracted_at is not None:
        rendered["errorDeclaration"] = {"declarationTime": event_time(scan.retracted_at)}
    return rendered


@functools.lru_cache(maxsize=4096)
def _hash_of(canonical: str) -> str:
    """The EPCIS event hash of an event given as JSON, its keys in the rendered order (release 1.9.3 of
    epcis-event-hash-generator hashes a bizTransaction with `type` after its value differently). ~5 ms
    each; a scan's row is append-only, so its rendering never changes: a page asked again is cheap."""
    return event_hash(json.loads(canonical), [STANDARD_CONTEXT])


def reading_event(reading: ReadingFacts) -> dict[str, Any]:
    return {
        "type": OBJECT_EVENT,
        "eventID": derived_id("reading", reading.id),
        "eventTime": event_time(reading.read_at),
        "eventTimeZoneOffset": "+00:00",
        "epcList": epc_list(reading.bag_cois),
        "action": "OBSERVE",
        "bizStep": READING_STEP,
        "bizTransactionList": transaction(reading.shipment_id),
        "sensorElementList": temperature_element(reading.celsius),
    }


def party(identifier: str) -> str:
    return PARTY_PREFIX + quote(identifier, safe="-._~:")


def custody_event(entry: CustodyFacts) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": TRANSACTION_EVENT,
        "eventID": derived_id("custody", entry.shipment_id, entry.sequence),
        "eventTime": event_time(entry.at),
        "eventTimeZoneOffset": "+00:00",
        "bizTransactionList": transaction(entry.shipment_id),
        "epcList": epc_list(entry.bag_cois),
        "action": "OBSERVE",
    }
    scan_type = custody_scan_type(entry.meaning)
    if scan_type is not None:
        event["bizStep"] = SCAN_STEPS[scan_type]
    where = location_id(entry.location)
    if where is not None:
        event["bizLocation"] = {"id": where}
    event["sourceList"] = [{"type": "owning_party", "source": party(entry.from_party)}]
    event["destinationList"] = [{"type": "owning_party", "destination": party(entry.to_party)}]
    return event


def query_document(events: list[dict[str, Any]], created: datetime) -> dict[str, Any]:
    """The `EPCISQueryDocument` of one page of events (SimpleEventQuery: the REST binding's `GET /events`)."""
    return {
        "@context": [STANDARD_CONTEXT],
        "type": "EPCISQueryDocument",
        "schemaVersion": "2.0",
        "creationDate": event_time(created),
        "epcisBody": {
            "queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": events}}
        },
    }
