"""COI tracking rules: scan evaluation (identity, temperature, order of scans) and the custody ledger.

Pure Python, no I/O. A scan is always recorded; this module decides what it means.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cgt_contracts.events import ScanType, ShipmentLeg


class ShipmentStatus(StrEnum):
    PLANNED = "planned"
    DISPATCHED = "dispatched"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    RECEIVED = "received"
    QUARANTINED = "quarantined"
    RELEASED = "released"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    """The order was cancelled: the shipment takes no more scans."""


# Which scans may follow which status (a quarantined shipment still moves physically: its scans are kept).
ALLOWED_FROM: dict[ScanType, frozenset[ShipmentStatus]] = {
    ScanType.PICK_UP: frozenset({ShipmentStatus.PLANNED}),
    ScanType.HAND_OFF: frozenset({ShipmentStatus.DISPATCHED, ShipmentStatus.IN_TRANSIT}),
    ScanType.CHECKPOINT: frozenset({ShipmentStatus.DISPATCHED, ShipmentStatus.IN_TRANSIT}),
    ScanType.DELAY: frozenset({ShipmentStatus.DISPATCHED, ShipmentStatus.IN_TRANSIT}),
    ScanType.DELIVERY: frozenset({ShipmentStatus.DISPATCHED, ShipmentStatus.IN_TRANSIT}),
    ScanType.RECEIPT: frozenset({ShipmentStatus.DELIVERED}),
}
_NEXT_STATUS: dict[ScanType, ShipmentStatus] = {
    ScanType.PICK_UP: ShipmentStatus.DISPATCHED,
    ScanType.HAND_OFF: ShipmentStatus.IN_TRANSIT,
    ScanType.CHECKPOINT: ShipmentStatus.IN_TRANSIT,
    ScanType.DELAY: ShipmentStatus.IN_TRANSIT,
    ScanType.DELIVERY: ShipmentStatus.DELIVERED,
    ScanType.RECEIPT: ShipmentStatus.RECEIVED,
}


CLOCK_TOLERANCE = timedelta(minutes=5)
"""How far a device's clock may be off the server's: a scan dated later than that was not made yet, and one
dated that much before its shipment was planned is not of this shipment."""
NEEDS_ETA = frozenset({ScanType.PICK_UP, ScanType.DELAY})

GAP_TOLERANCE = 1.5
"""A logger gap is an excursion when it exceeds 1.5 logger intervals (one missed reading plus jitter)."""


@dataclass(frozen=True)
class TemperaturePolicy:
    """What a leg's temperature record must satisfy (I2)."""

    max_celsius: float
    min_celsius: float | None = None
    logger_interval_minutes: float | None = None
    hold_until: datetime | None = None
    """Dry shipper: charge time + validated hold time."""
    transit_deadline: datetime | None = None
    """Fresh leg: dispatch + maximum transit time."""


@dataclass(frozen=True)
class Reading:
    at: datetime
    celsius: float


def temperature_problems(
    policy: TemperaturePolicy, readings: list[Reading], previous_reading_at: datetime | None = None
) -> list[str]:
    """Every excursion in a batch of readings: out of range, a logger gap, past the hold or transit time."""
    problems: list[str] = []
    for reading in sorted(readings, key=lambda r: r.at):
        if reading.celsius > policy.max_celsius:
            problems.append(
                f"{reading.celsius} °C at {reading.at.isoformat()} is above the limit of {policy.max_celsius} °C"
            )
        if policy.min_celsius is not None and reading.celsius < policy.min_celsius:
            problems.append(
                f"{reading.celsius} °C at {reading.at.isoformat()} is below the minimum of {policy.min_celsius} °C"
            )
        if policy.logger_interval_minutes is not None and previous_reading_at is not None:
            gap = (reading.at - previous_reading_at).total_seconds() / 60
            if gap > policy.logger_interval_minutes * GAP_TOLERANCE:
                problems.append(
                    f"no reading from {previous_reading_at.isoformat()} to {reading.at.isoformat()} "
                    f"({gap:.0f} min; the logger reads every {policy.logger_interval_minutes:g} min)"
                )
        previous_reading_at = (
            reading.at if previous_reading_at is None else max(previous_reading_at, reading.at)
        )
    latest = max((r.at for r in readings), default=None)
    if latest is not None:
        problems.extend(time_limit_problems(policy, latest))
    return problems


def time_limit_problems(policy: TemperaturePolicy, at: datetime) -> list[str]:
    problems = []
    if policy.hold_until is not None and at > policy.hold_until:
        problems.append(f"past the dry shipper's validated hold time ({policy.hold_until.isoformat()})")
    if policy.transit_deadline is not None and at > policy.transit_deadline:
        problems.append(f"past the leg's maximum transit time ({policy.transit_deadline.isoformat()})")
    return problems


@dataclass(frozen=True)
class ShipmentState:
    status: ShipmentStatus
    physical_status: ShipmentStatus
    """Where the shipment is in its journey, kept apart from quarantine so scans can go on."""
    expected_coi: str
    bag_count: int
    policy: TemperaturePolicy
    custodian: str
    quarantined: bool
    container_id: str | None = None
    seal_id: str | None = None
    planned_at: datetime | None = None
    """When the shipment was planned: no scan of it can be older."""
    courier_company: str | None = None
    """The company that carries the shipment: only its couriers may hold it."""
    order_cancelled: bool = False
    """Order intake cancelled the order (`order.cancelled`): its shipments take no scan."""
    leg: ShipmentLeg | None = None
    product_released: bool = False
    """The manufacturer released the product for shipment (`product.released_for_shipment`): a return
    leg is picked up only then. An outbound leg exists only once its collection was recorded."""


@dataclass(frozen=True)
class Scan:
    scan_type: ScanType
    bag_cois: tuple[str, ...]
    temperature_celsius: float | None
    scanned_by: str
    handed_to: str | None
    treatment_center_id: str
    at: datetime
    """The device's (or the EPCIS event's) time."""
    received_at: datetime
    """The server's clock when the scan arrived."""
    container_id: str | None = None
    seal_id: str | None = None
    eta_at: datetime | None = None
    scanned_by_company: str | None = None
    """The company the courier registry has for `scanned_by` (None: not a registered courier)."""
    handed_to_company: str | None = None
    """The company the courier registry has for `handed_to` (None: not a registered courier)."""


@dataclass(frozen=True)
class CustodyChange:
    from_party: str
    to_party: str


@dataclass(frozen=True)
class ScanDecision:
    accepted: bool
    refusal_reason: str | None
    physical_status: ShipmentStatus
    coi_break: bool
    temperature_excursion: bool
    quarantine_reasons: tuple[str, ...]
    custody: CustodyChange | None
    reading: Reading | None = None
    """The scan's temperature, at the time it is judged at (the server's, if the device's is not credible)."""
    dispatched: bool = False
    delivered_clean: bool = False

    @property
    def quarantine(self) -> bool:
        return bool(self.quarantine_reasons)


def coi_mismatches(expected_coi: str, bag_count: int, bag_cois: tuple[str, ...]) -> list[str]:
    """Every identity problem at a scan: a bag with another COI, a missing bag, an extra bag."""
    problems = [
        f"bag label reads {read!r}, order is {expected_coi!r}" for read in bag_cois if read != expected_coi
    ]
    if len(bag_cois) < bag_count:
        problems.append(f"{bag_count - len(bag_cois)} of {bag_count} bags not scanned")
    if len(bag_cois) > bag_count:
        problems.append(f"{len(bag_cois)} bags scanned, the shipment has {bag_count}")
    return problems


def container_mismatches(state: ShipmentState, scan: Scan) -> list[str]:
    """A different shipper or seal than the one packed means the product may have been swapped or opened."""
    problems = []
    if state.container_id and scan.container_id and scan.container_id != state.container_id:
        problems.append(
            f"container {scan.container_id!r} scanned, the shipment travels in {state.container_id!r}"
        )
    if state.seal_id and scan.seal_id and scan.seal_id != state.seal_id:
        problems.append(f"seal {scan.seal_id!r} scanned, {state.seal_id!r} was applied at packing")
    return problems


def evaluate_scan(state: ShipmentState, scan: Scan) -> ScanDecision:
    """Decide what a courier's scan means. Identity and temperature are checked at every scan, even one
    that is refused (I1, I2); a scan whose time is not credible is judged at the time it arrived."""
    identity_problems = coi_mismatches(state.expected_coi, state.bag_count, scan.bag_cois)
    identity_problems += container_mismatches(state, scan)
    time_refusal = _time_refusal(state, scan)
    judged_at = scan.received_at if time_refusal else scan.at
    reading = Reading(judged_at, scan.temperature_celsius) if scan.temperature_celsius is not None else None
    thermal_problems = (
        temperature_problems(state.policy, [reading])
        if reading
        else time_limit_problems(state.policy, judged_at)
    )
    reasons: list[str] = []
    if identity_problems:
        reasons.append("COI break: " + "; ".join(identity_problems))
    if thermal_problems:
        reasons.append("temperature excursion: " + "; ".join(thermal_problems))

    refusal = time_refusal or _refusal(state, scan)
    if refusal is not None:
        return ScanDecision(
            accepted=False,
            refusal_reason=refusal,
            physical_status=state.physical_status,
            coi_break=bool(identity_problems),
            temperature_excursion=bool(thermal_problems),
            quarantine_reasons=tuple(reasons),
            custody=None,
            reading=reading,
        )
    will_be_quarantined = state.quarantined or bool(reasons)
    return ScanDecision(
        accepted=True,
        refusal_reason=None,
        physical_status=_NEXT_STATUS[scan.scan_type],
        coi_break=bool(identity_problems),
        temperature_excursion=bool(thermal_problems),
        quarantine_reasons=tuple(reasons),
        custody=_custody_change(state, scan),
        reading=reading,
        dispatched=scan.scan_type is ScanType.PICK_UP,
        delivered_clean=scan.scan_type is ScanType.DELIVERY and not will_be_quarantined,
    )


def _time_refusal(state: ShipmentState, scan: Scan) -> str | None:
    """A scan dated in the future or before its shipment existed, or a pick-up or delay without a
    credible ETA, says nothing reliable about where the product is or when it will arrive."""
    ahead = scan.at - scan.received_at
    if ahead > CLOCK_TOLERANCE:
        return (
            f"the scan is dated more than {CLOCK_TOLERANCE.total_seconds() / 60:.0f} min ahead of the "
            "server's clock: check the device's clock"
        )
    if state.planned_at is not None and scan.at < state.planned_at - CLOCK_TOLERANCE:
        return f"the scan is dated before the shipment was planned ({state.planned_at.isoformat()})"
    if scan.scan_type in NEEDS_ETA:
        if scan.eta_at is None:
            return f"a {scan.scan_type} scan must give the expected delivery time (eta_at)"
        if scan.eta_at < scan.received_at:
            return f"the expected delivery time {scan.eta_at.isoformat()} is in the past"
    return None


def _refusal(state: ShipmentState, scan: Scan) -> str | None:
    if state.order_cancelled:
        return "the order was cancelled: its shipments take no scan"
    if state.status is ShipmentStatus.REJECTED:
        return "QA rejected this shipment: its product may not move on"
    if scan.scan_type is ScanType.PICK_UP and state.leg is ShipmentLeg.RETURN and not state.product_released:
        return "the manufacturer has not released the product for shipment yet: it cannot be picked up"
    if state.physical_status not in ALLOWED_FROM[scan.scan_type]:
        return f"a {scan.scan_type} scan cannot follow a shipment that is {state.physical_status}"
    if scan.scan_type is ScanType.PICK_UP:
        return _courier_refusal(state, scan.scanned_by, scan.scanned_by_company)
    if scan.scan_type in (ScanType.HAND_OFF, ScanType.DELIVERY) and scan.scanned_by != state.custodian:
        return f"custody is with {state.custodian}: only they can hand the shipment on"
    if scan.scan_type is ScanType.HAND_OFF:
        if not scan.handed_to:
            return "a hand-off must name who takes the shipment (handed_to)"
        if scan.handed_to == state.custodian:
            return f"{scan.handed_to} already holds the shipment"
        return _courier_refusal(state, scan.handed_to, scan.handed_to_company)
    return None


def _courier_refusal(state: ShipmentState, party: str, company: str | None) -> str | None:
    """Custody passes only to a registered courier of the company that carries the shipment (I3)."""
    if company is None:
        return f"{party} is not a registered courier: custody passes only to a known courier"
    if state.courier_company is not None and company != state.courier_company:
        return f"{party} works for {company}; this shipment is carried by {state.courier_company}"
    return None


def _custody_change(state: ShipmentState, scan: Scan) -> CustodyChange | None:
    if scan.scan_type is ScanType.PICK_UP:
        return CustodyChange(from_party=state.custodian, to_party=scan.scanned_by)
    if scan.scan_type is ScanType.HAND_OFF and scan.handed_to:
        return CustodyChange(from_party=state.custodian, to_party=scan.handed_to)
    if scan.scan_type is ScanType.DELIVERY:
        return CustodyChange(from_party=state.custodian, to_party=scan.treatment_center_id)
    return None


class Disposition(StrEnum):
    RELEASE = "release"
    REJECT = "reject"


class SignatureMeaning(StrEnum):
    """What a QA signer declares by signing (21 CFR Part 11 §11.50(a)(3)): from a closed list."""

    APPROVAL = "approval"
    REJECTION = "rejection"


MEANING_OF: dict[Disposition, SignatureMeaning] = {
    Disposition.RELEASE: SignatureMeaning.APPROVAL,
    Disposition.REJECT: SignatureMeaning.REJECTION,
}


def disposition_refusal(
    status: ShipmentStatus, decision: Disposition, meaning: SignatureMeaning
) -> str | None:
    """QA signs a disposition only for a quarantined shipment, and only with the meaning its decision has
    (a release is an approval, a rejection a rejection): a signature must mean what it says."""
    if meaning is not MEANING_OF[decision]:
        return f"a {decision} is signed with the meaning {MEANING_OF[decision]}, not {meaning}"
    if status is not ShipmentStatus.QUARANTINED:
        return f"only a quarantined shipment takes a QA {decision}; this one is {status}"
    return None


# ---------------------------------------------------------------- custody ledger (I3)

GENESIS_SHA256 = "0" * 64


class LedgerKind(StrEnum):
    CUSTODY = "custody"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    REJECT = "reject"


@dataclass(frozen=True)
class LedgerContent:
    """What one ledger entry says; the hash covers all of it plus the previous entry's hash."""

    shipment_id: str
    sequence: int
    kind: LedgerKind
    from_party: str
    to_party: str
    location: str
    at: datetime
    signer: str
    meaning: str
    reason: str


def canonical_bytes(content: LedgerContent, previous_sha256: str) -> bytes:
    """Canonical encoding: JSON, keys sorted, no whitespace, UTF-8, instants in UTC ISO 8601."""
    document = {
        "shipment_id": content.shipment_id,
        "sequence": content.sequence,
        "kind": content.kind.value,
        "from_party": content.from_party,
        "to_party": content.to_party,
        "location": content.location,
        "at": content.at.isoformat(),
        "signer": content.signer,
        "meaning": content.meaning,
        "reason": content.reason,
        "previous_sha256": previous_sha256,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(content: LedgerContent, previous_sha256: str) -> str:
    return hashlib.sha256(canonical_bytes(content, previous_sha256)).hexdigest()


@dataclass(frozen=True)
class StoredEntry:
    content: LedgerContent
    previous_sha256: str
    entry_sha256: str


@dataclass(frozen=True)
class ChainVerification:
    valid: bool
    entries: int
    broken_at_sequence: int | None = None
    """The position (1-based) of the first entry that does not verify."""
    problem: str | None = None


def verify_chain(entries: list[StoredEntry], head_sha256: str | None = None) -> ChainVerification:
    """Recompute every link. A changed entry fails its own hash; a removed or reordered one breaks the
    sequence or the link to its predecessor; either way the first bad position is named. `head_sha256`,
    kept apart from the entries, catches entries cut off at the end."""
    previous = GENESIS_SHA256
    for position, entry in enumerate(entries, start=1):
        if entry.content.sequence != position:
            return ChainVerification(
                False,
                len(entries),
                position,
                f"entry at position {position} has sequence {entry.content.sequence}: an entry was removed or reordered",
            )
        if entry.previous_sha256 != previous:
            return ChainVerification(
                False, len(entries), position, f"entry {position} does not link to entry {position - 1}"
            )
        if entry_hash(entry.content, entry.previous_sha256) != entry.entry_sha256:
            return ChainVerification(
                False, len(entries), position, f"entry {position} was changed after it was written"
            )
        previous = entry.entry_sha256
    if head_sha256 is not None and head_sha256 != previous:
        return ChainVerification(
            False,
            len(entries),
            len(entries) + 1,
            f"the ledger ends after entry {len(entries)}: later entries were removed",
        )
    return ChainVerification(True, len(entries))
