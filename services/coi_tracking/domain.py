"""COI tracking rules: scan evaluation (identity, temperature, order of scans) and the custody ledger.

Pure Python, no I/O. A scan is always recorded; this module decides what it means.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import TypeVar

from cgt_contracts.events import QaReasonCode, QuarantineReasonCode, ScanRefusalCode, ScanType, ShipmentLeg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.common.scope import visible_to


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
    """The order was cancelled, or (a return leg) its lot failed: the shipment takes no more scans."""


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


class Problem(str):
    """A problem found with a shipment, as the sentence QA and the shipment's readers get, and its code:
    the code is what an event publishes (I6), the sentence stays with the shipment. A `str`, so that a list
    of them reads, joins and compares as the sentences it holds."""

    code: QuarantineReasonCode

    def __new__(cls, code: QuarantineReasonCode, text: str) -> Problem:
        problem = super().__new__(cls, text)
        problem.code = code
        return problem


class Refusal(str):
    """Why a scan is refused, as the sentence its sender and the shipment's readers get, and its code (what
    `shipment.scanned` publishes). A `str`, like `Problem`."""

    code: ScanRefusalCode

    def __new__(cls, code: ScanRefusalCode, text: str) -> Refusal:
        refusal = super().__new__(cls, text)
        refusal.code = code
        return refusal


def codes_of(problems: Iterable[str]) -> tuple[QuarantineReasonCode, ...]:
    """The codes of the problems, each once, in the order found; a sentence without one is `other`."""
    codes = (getattr(p, "code", QuarantineReasonCode.OTHER) for p in problems)
    return tuple(dict.fromkeys(codes))


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
        problems.extend(range_problems(policy, reading))
        if policy.logger_interval_minutes is not None and previous_reading_at is not None:
            gap = (reading.at - previous_reading_at).total_seconds() / 60
            if gap > policy.logger_interval_minutes * GAP_TOLERANCE:
                problems.append(
                    Problem(
                        QuarantineReasonCode.LOGGER_GAP,
                        f"no reading from {previous_reading_at.isoformat()} to {reading.at.isoformat()} "
                        f"({gap:.0f} min; the logger reads every {policy.logger_interval_minutes:g} min)",
                    )
                )
        previous_reading_at = (
            reading.at if previous_reading_at is None else max(previous_reading_at, reading.at)
        )
    latest = max((r.at for r in readings), default=None)
    if latest is not None:
        problems.extend(time_limit_problems(policy, latest))
    return problems


def range_problems(policy: TemperaturePolicy, reading: Reading) -> list[str]:
    """A reading above the leg's limit or below its minimum (a fresh leg's 2 °C)."""
    return [p for p in (_above_limit(policy, reading), _below_minimum(policy, reading)) if p is not None]


def _above_limit(policy: TemperaturePolicy, reading: Reading) -> str | None:
    if reading.celsius > policy.max_celsius:
        return Problem(
            QuarantineReasonCode.TEMPERATURE_EXCURSION,
            f"{reading.celsius} °C at {reading.at.isoformat()} is above the limit of {policy.max_celsius} °C",
        )
    return None


def _below_minimum(policy: TemperaturePolicy, reading: Reading) -> str | None:
    if policy.min_celsius is not None and reading.celsius < policy.min_celsius:
        return Problem(
            QuarantineReasonCode.BELOW_MINIMUM_TEMPERATURE,
            f"{reading.celsius} °C at {reading.at.isoformat()} is below the minimum of {policy.min_celsius} °C",
        )
    return None


@dataclass(frozen=True)
class TemperatureEvidence:
    """One temperature report as a sensor gave it, converted to °C but not yet judged (I2): a single
    `value`, an interval summary (`min_value`/`max_value`/`mean_value`), a sensor exception, or a report
    that could not be read (`unreadable` says why: no unit, not a number...)."""

    at: datetime
    value: float | None = None
    min_value: float | None = None
    max_value: float | None = None
    mean_value: float | None = None
    sensor_exception: str | None = None
    """The sensor's own alarm (EPCIS `exception`: ALARM_CONDITION, ERROR_CONDITION)."""
    unreadable: str | None = None


@dataclass(frozen=True)
class EvidenceJudgement:
    readings: list[Reading]
    """What is stored: the warmest value of each report, at its credible time."""
    problems: list[str]


def judge_evidence(
    policy: TemperaturePolicy,
    evidence: list[TemperatureEvidence],
    *,
    received_at: datetime,
    previous_reading_at: datetime | None = None,
) -> EvidenceJudgement:
    """Judge every temperature report whatever its shape. The warmest value of a report counts against
    the limit (a cryogenic product is harmed by warming: a cold `value` does not hide a warm `maxValue`),
    the coldest against a fresh leg's minimum; a sensor alarm, or a report that cannot be proven cold, is
    a problem in itself. A report dated ahead of the server's clock is judged at the time it arrived, as
    a scan is."""
    readings: list[Reading] = []
    problems: list[str] = []
    for item in sorted(evidence, key=lambda e: e.at):
        at = received_at if item.at - received_at > CLOCK_TOLERANCE else item.at
        if item.sensor_exception is not None:
            problems.append(
                Problem(
                    QuarantineReasonCode.SENSOR_ALARM,
                    f"the temperature sensor reports {item.sensor_exception} at {at.isoformat()}",
                )
            )
        if item.unreadable is not None:
            problems.append(
                _unproven(f"a temperature at {at.isoformat()} cannot be proven cold: {item.unreadable}")
            )
        upper = [v for v in (item.value, item.max_value, item.mean_value) if v is not None]
        if upper:
            readings.append(Reading(at, max(upper)))
            coldest = min([*upper, *([item.min_value] if item.min_value is not None else [])])
            below = _below_minimum(policy, Reading(at, coldest)) if coldest < max(upper) else None
            if below is not None:
                problems.append(below)
        elif item.min_value is not None:
            problems.append(
                _unproven(
                    f"a temperature at {at.isoformat()} cannot be proven cold: only a minimum "
                    f"({item.min_value} °C) is reported, not the warmest value"
                )
            )
        elif item.sensor_exception is None and item.unreadable is None:
            problems.append(
                _unproven(f"a temperature at {at.isoformat()} cannot be proven cold: it carries no value")
            )
    return EvidenceJudgement(readings, temperature_problems(policy, readings, previous_reading_at) + problems)


def _unproven(text: str) -> Problem:
    return Problem(QuarantineReasonCode.TEMPERATURE_UNPROVEN, text)


class Replay(StrEnum):
    """What an EPCIS event whose eventID was captured before is."""

    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def replay_of(stored_hash: str | None, found: bool, event_hash: str) -> Replay:
    """Same eventID and same content (the EPCIS event hash) is a duplicate; the same eventID with other
    content is a conflict for QA, never a duplicate (its readings could differ). A row stored before
    hashes were kept (no hash) counts as the same content."""
    if not found:
        return Replay.NEW
    if stored_hash is None or stored_hash == event_hash:
        return Replay.DUPLICATE
    return Replay.CONFLICT


def conflict_reason(event_id: str) -> str:
    return Problem(
        QuarantineReasonCode.EVENT_CONFLICT,
        f"EPCIS eventID {event_id} was captured before with different content (another event hash): "
        "QA reviews the shipment",
    )


def retraction_reason(event_id: str, declared_reason: str | None) -> str:
    """Why a shipment goes to QA when a courier's system declares one of its events erroneous."""
    why = f" (reason: {declared_reason})" if declared_reason else ""
    return Problem(
        QuarantineReasonCode.ERROR_DECLARATION,
        f"EPCIS error declaration retracts event {event_id}{why}: QA reviews the shipment",
    )


def time_limit_problems(policy: TemperaturePolicy, at: datetime) -> list[str]:
    problems: list[str] = []
    if policy.hold_until is not None and at > policy.hold_until:
        problems.append(
            Problem(
                QuarantineReasonCode.HOLD_TIME_EXCEEDED,
                f"past the dry shipper's validated hold time ({policy.hold_until.isoformat()})",
            )
        )
    if policy.transit_deadline is not None and at > policy.transit_deadline:
        problems.append(
            Problem(
                QuarantineReasonCode.TRANSIT_TIME_EXCEEDED,
                f"past the leg's maximum transit time ({policy.transit_deadline.isoformat()})",
            )
        )
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
    lot_failed: bool = False
    """The lot this return leg was planned for failed in manufacturing (`manufacturing.failed`): the leg is
    closed and takes no scan; the next lot travels on a new leg."""
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


# ---- what a scan implies: the facts the command applies and the translator publishes, each once


@dataclass(frozen=True)
class Moved:
    """The shipment is now here in its journey (an accepted scan)."""

    physical_status: ShipmentStatus
    eta_at: datetime | None
    """A new expected delivery time, if the scan gave one."""


@dataclass(frozen=True)
class Dispatched:
    at: datetime
    eta_at: datetime


@dataclass(frozen=True)
class Delayed:
    eta_at: datetime


@dataclass(frozen=True)
class CustodyChange:
    from_party: str
    to_party: str


@dataclass(frozen=True)
class CoiBroken:
    read_cois: tuple[str, ...]


@dataclass(frozen=True)
class TemperatureExceeded:
    reading: Reading | None
    """The reading out of range; None when the time itself is the excursion (past hold or transit time)."""


@dataclass(frozen=True)
class Quarantined:
    reason: str
    """Every problem, as sentences: the shipment's and its ledger's record, for QA."""
    codes: tuple[QuarantineReasonCode, ...] = (QuarantineReasonCode.OTHER,)
    """What `shipment.quarantined` publishes instead of the sentences (I6)."""

    @classmethod
    def of(cls, reason: str, problems: Iterable[str]) -> Quarantined:
        return cls(reason, codes_of(problems) or (QuarantineReasonCode.OTHER,))


@dataclass(frozen=True)
class Delivered:
    at: datetime
    clean: bool
    """Identity verified, temperature record clean and never quarantined: the site may be told (I1, I2)."""


Fact = (
    Moved | Dispatched | Delayed | CustodyChange | CoiBroken | TemperatureExceeded | Quarantined | Delivered
)


@dataclass(frozen=True)
class ScanDecision:
    """What a scan means: accepted or refused with the reason, and the facts it implies, in the order
    they are applied. A refused scan can still imply facts (a COI break, an excursion, a quarantine)."""

    accepted: bool
    refusal_reason: str | None
    facts: tuple[Fact, ...]
    reading: Reading | None = None
    """The scan's temperature, at the time it is judged at (the server's, if the device's is not credible)."""
    refusal_code: ScanRefusalCode | None = None
    """What `shipment.scanned` publishes of a refusal; the sentence stays with the scan."""

    def _first(self, kind: type[_F]) -> _F | None:
        return next((fact for fact in self.facts if isinstance(fact, kind)), None)

    @property
    def coi_break(self) -> bool:
        return self._first(CoiBroken) is not None

    @property
    def temperature_excursion(self) -> bool:
        return self._first(TemperatureExceeded) is not None

    @property
    def quarantine_reasons(self) -> tuple[str, ...]:
        return tuple(f.reason for f in self.facts if isinstance(f, Quarantined))

    @property
    def quarantine(self) -> bool:
        return bool(self.quarantine_reasons)

    @property
    def custody(self) -> CustodyChange | None:
        return self._first(CustodyChange)

    @property
    def dispatched(self) -> bool:
        return self._first(Dispatched) is not None

    @property
    def delivered_clean(self) -> bool:
        delivered = self._first(Delivered)
        return delivered is not None and delivered.clean


_F = TypeVar("_F", bound=Fact)


def coi_mismatches(expected_coi: str, bag_count: int, bag_cois: tuple[str, ...]) -> list[str]:
    """Every identity problem at a scan: a bag with another COI, a missing bag, an extra bag."""
    problems: list[str] = [
        Problem(QuarantineReasonCode.COI_BREAK, f"bag label reads {read!r}, order is {expected_coi!r}")
        for read in bag_cois
        if read != expected_coi
    ]
    if len(bag_cois) < bag_count:
        problems.append(
            Problem(
                QuarantineReasonCode.BAG_MISSING,
                f"{bag_count - len(bag_cois)} of {bag_count} bags not scanned",
            )
        )
    if len(bag_cois) > bag_count:
        problems.append(
            Problem(
                QuarantineReasonCode.BAG_EXTRA, f"{len(bag_cois)} bags scanned, the shipment has {bag_count}"
            )
        )
    return problems


def container_mismatches(state: ShipmentState, scan: Scan) -> list[str]:
    """A different shipper or seal than the one packed means the product may have been swapped or opened."""
    problems = packing_problems(state.container_id, scan.container_id)
    if state.seal_id and scan.seal_id and scan.seal_id != state.seal_id:
        problems.append(
            Problem(
                QuarantineReasonCode.SEAL_BROKEN,
                f"seal {scan.seal_id!r} scanned, {state.seal_id!r} was applied at packing",
            )
        )
    return problems


def packing_problems(expected_container: str | None, seen_container: str | None) -> list[str]:
    """The bags seen in (or packed into, by an EPCIS aggregation) another container than the declared one."""
    if expected_container and seen_container and seen_container != expected_container:
        return [
            Problem(
                QuarantineReasonCode.CONTAINER_MISMATCH,
                f"container {seen_container!r} scanned, the shipment travels in {expected_container!r}",
            )
        ]
    return []


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
    warnings: list[Fact] = []
    if identity_problems:
        warnings.append(CoiBroken(scan.bag_cois))
    if thermal_problems:
        warnings.append(TemperatureExceeded(reading))
    reasons = []
    if identity_problems:
        reasons.append("COI break: " + "; ".join(identity_problems))
    if thermal_problems:
        reasons.append("temperature excursion: " + "; ".join(thermal_problems))
    quarantined = (
        [Quarantined.of(" | ".join(reasons), identity_problems + thermal_problems)] if reasons else []
    )

    refusal = time_refusal or _refusal(state, scan)
    if refusal is not None:
        return ScanDecision(False, refusal, (*warnings, *quarantined), reading, refusal.code)
    facts = [*_movement(state, scan), *warnings, *quarantined]
    if scan.scan_type is ScanType.DELIVERY:
        facts.append(Delivered(scan.at, clean=not (state.quarantined or reasons)))
    return ScanDecision(True, None, tuple(facts), reading)


def _movement(state: ShipmentState, scan: Scan) -> list[Fact]:
    """What an accepted scan changes: where the shipment is, who holds it, its dispatch or delay."""
    facts: list[Fact] = [Moved(_NEXT_STATUS[scan.scan_type], scan.eta_at)]
    custody = _custody_change(state, scan)
    if custody is not None:
        facts.append(custody)
    if scan.scan_type is ScanType.PICK_UP and scan.eta_at is not None:
        facts.append(Dispatched(scan.at, scan.eta_at))
    if scan.scan_type is ScanType.DELAY and scan.eta_at is not None:
        facts.append(Delayed(scan.eta_at))
    return facts


def _time_refusal(state: ShipmentState, scan: Scan) -> Refusal | None:
    """A scan dated in the future or before its shipment existed, or a pick-up or delay without a
    credible ETA, says nothing reliable about where the product is or when it will arrive."""
    ahead = scan.at - scan.received_at
    if ahead > CLOCK_TOLERANCE:
        return Refusal(
            ScanRefusalCode.DEVICE_CLOCK_AHEAD,
            f"the scan is dated more than {CLOCK_TOLERANCE.total_seconds() / 60:.0f} min ahead of the "
            "server's clock: check the device's clock",
        )
    if state.planned_at is not None and scan.at < state.planned_at - CLOCK_TOLERANCE:
        return Refusal(
            ScanRefusalCode.DATED_BEFORE_PLANNING,
            f"the scan is dated before the shipment was planned ({state.planned_at.isoformat()})",
        )
    if scan.scan_type in NEEDS_ETA:
        if scan.eta_at is None:
            return Refusal(
                ScanRefusalCode.ETA_MISSING,
                f"a {scan.scan_type} scan must give the expected delivery time (eta_at)",
            )
        if scan.eta_at < scan.received_at:
            return Refusal(
                ScanRefusalCode.ETA_IN_PAST,
                f"the expected delivery time {scan.eta_at.isoformat()} is in the past",
            )
    return None


def _refusal(state: ShipmentState, scan: Scan) -> Refusal | None:
    if state.order_cancelled:
        return Refusal(ScanRefusalCode.ORDER_CANCELLED, "the order was cancelled: its shipments take no scan")
    if state.lot_failed:
        return Refusal(
            ScanRefusalCode.LOT_FAILED,
            "the lot this return leg was planned for failed in manufacturing: the leg takes no scan",
        )
    if state.status is ShipmentStatus.REJECTED:
        return Refusal(ScanRefusalCode.QA_REJECTED, "QA rejected this shipment: its product may not move on")
    if scan.scan_type is ScanType.PICK_UP and state.leg is ShipmentLeg.RETURN and not state.product_released:
        return Refusal(
            ScanRefusalCode.PRODUCT_NOT_RELEASED,
            "the manufacturer has not released the product for shipment yet: it cannot be picked up",
        )
    if state.physical_status not in ALLOWED_FROM[scan.scan_type]:
        return Refusal(
            ScanRefusalCode.OUT_OF_SEQUENCE,
            f"a {scan.scan_type} scan cannot follow a shipment that is {state.physical_status}",
        )
    if scan.scan_type is ScanType.PICK_UP:
        return _courier_refusal(state, scan.scanned_by, scan.scanned_by_company)
    if scan.scan_type in (ScanType.HAND_OFF, ScanType.DELIVERY) and scan.scanned_by != state.custodian:
        return Refusal(
            ScanRefusalCode.NOT_CUSTODIAN,
            f"custody is with {state.custodian}: only they can hand the shipment on",
        )
    if scan.scan_type is ScanType.HAND_OFF:
        if not scan.handed_to:
            return Refusal(
                ScanRefusalCode.HANDED_TO_MISSING, "a hand-off must name who takes the shipment (handed_to)"
            )
        if scan.handed_to == state.custodian:
            return Refusal(ScanRefusalCode.ALREADY_IN_CUSTODY, f"{scan.handed_to} already holds the shipment")
        return _courier_refusal(state, scan.handed_to, scan.handed_to_company)
    return None


def other_company_refusal(shipment_company: str, courier_company: str | None) -> str | None:
    """Only the courier company a shipment is assigned to may see it, scan it or capture events of it;
    None (a coordinator, QA, the system) is not a courier and is not limited."""
    if courier_company is not None and courier_company != shipment_company:
        return "this shipment is assigned to another courier company"
    return None


def shipment_visible_to(
    site_scope: str | None, company_scope: str | None, treatment_center_id: str, courier_company: str
) -> bool:
    """Whether a caller may read a shipment: a treatment center its site's, a courier its company's (the
    others are not scoped). What it may not read is the same 404 as a shipment that does not exist."""
    return (
        visible_to(site_scope, treatment_center_id)
        and other_company_refusal(courier_company, company_scope) is None
    )


def _courier_refusal(state: ShipmentState, party: str, company: str | None) -> Refusal | None:
    """Custody passes only to a registered courier of the company that carries the shipment (I3)."""
    if company is None:
        return Refusal(
            ScanRefusalCode.UNREGISTERED_COURIER,
            f"{party} is not a registered courier: custody passes only to a known courier",
        )
    if state.courier_company is not None and company != state.courier_company:
        return Refusal(
            ScanRefusalCode.OTHER_COURIER_COMPANY,
            f"{party} works for {company}; this shipment is carried by {state.courier_company}",
        )
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


QA_REASONS: dict[Disposition, frozenset[QaReasonCode]] = {
    Disposition.RELEASE: frozenset(
        {
            QaReasonCode.PRODUCT_WITHIN_LIMITS,
            QaReasonCode.LOGGER_FAULT,
            QaReasonCode.WITHIN_STABILITY_DATA,
            QaReasonCode.IDENTITY_CONFIRMED,
            QaReasonCode.RECORD_CORRECTED,
            QaReasonCode.OTHER,
        }
    ),
    Disposition.REJECT: frozenset(
        {
            QaReasonCode.TEMPERATURE_COMPROMISED,
            QaReasonCode.IDENTITY_NOT_CONFIRMED,
            QaReasonCode.CONTAINER_COMPROMISED,
            QaReasonCode.PRODUCT_DAMAGED,
            QaReasonCode.OTHER,
        }
    ),
}
"""The reasons each decision may give: a release is not justified by a compromised product, nor the
reverse (`other` either way, with a note)."""


def disposition_reason_problem(decision: Disposition, code: QaReasonCode) -> str | None:
    """Why `code` cannot justify `decision`, or None."""
    if code in QA_REASONS[decision]:
        return None
    allowed = ", ".join(sorted(QA_REASONS[decision]))
    return f"is not a reason for a {decision}; a {decision} gives one of: {allowed}"


def qa_ledger_reason(code: QaReasonCode, note: str | None) -> str:
    """A disposition's reason as its ledger entry holds it (inside the entry's hash): the code, then the
    signer's note if any."""
    return f"{code.value}: {note}" if note else code.value


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


# ---------------------------------------------------------------- QA signing PIN (21 CFR Part 11)
# §11.200(a)(1): a non-biometric signature is made of two distinct identification components. The bearer
# token identifies the signer; a signing PIN that only the signer knows is the second one, checked at every
# signature. §11.300(d): consecutive wrong PINs are detected, reported and end in a block.

SIGNING_PIN_MIN_LENGTH = 8
SIGNING_PIN_MAX_LENGTH = 128
MAX_WRONG_SIGNING_PINS = 5
"""Consecutive wrong PINs after which the signer is blocked until a coordinator resets the enrolment."""
PIN_SALT_BYTES = 16


@dataclass(frozen=True)
class ScryptWork:
    """scrypt's work factor: n=2^14, r=8 costs 16 MiB and tens of milliseconds per try, cheap for one
    signature and dear for a guesser with a stolen table. Stored with each hash, so it can be raised."""

    n: int = 2**14
    r: int = 8
    p: int = 1
    length: int = 32


PIN_WORK = ScryptWork()


def signing_pin_problems(pin: str, signer_id: str) -> list[str]:
    """What makes a PIN too weak to sign with: too short or long, control characters, one character
    repeated, a run of consecutive characters (12345678, abcdefgh), or the signer's own id inside it."""
    problems: list[str] = []
    if not SIGNING_PIN_MIN_LENGTH <= len(pin) <= SIGNING_PIN_MAX_LENGTH:
        problems.append(f"must be {SIGNING_PIN_MIN_LENGTH} to {SIGNING_PIN_MAX_LENGTH} characters long")
    if any(not character.isprintable() for character in pin):
        problems.append("must hold printable characters only")
    if len(set(pin)) == 1:
        problems.append("must not be one character repeated")
    elif _is_consecutive_run(pin):
        problems.append("must not be a run of consecutive characters")
    if signer_id and signer_id.casefold() in pin.casefold():
        problems.append("must not contain the signer's id")
    return problems


def _is_consecutive_run(pin: str) -> bool:
    steps = {ord(b) - ord(a) for a, b in pairwise(pin)}
    return steps in ({1}, {-1})


def hash_signing_pin(pin: str, salt: bytes, work: ScryptWork = PIN_WORK) -> str:
    """`scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`: the PIN salted and stretched, with the work it took."""
    digest = _scrypt(pin, salt, work)
    return f"scrypt${work.n}${work.r}${work.p}${salt.hex()}${digest.hex()}"


def signing_pin_matches(pin: str, stored: str) -> bool:
    """Whether `pin` is the one `stored` was made from, compared in constant time."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        work = ScryptWork(n=int(n), r=int(r), p=int(p), length=len(expected) // 2)
        if scheme != "scrypt":
            return False
        return hmac.compare_digest(_scrypt(pin, bytes.fromhex(salt), work), bytes.fromhex(expected))
    except ValueError:  # a malformed stored hash matches nothing
        return False


def _scrypt(pin: str, salt: bytes, work: ScryptWork) -> bytes:
    return hashlib.scrypt(
        pin.encode(), salt=salt, n=work.n, r=work.r, p=work.p, dklen=work.length, maxmem=64 * 1024 * 1024
    )


class SigningRefusal(StrEnum):
    NOT_ENROLLED = "not_enrolled"
    BLOCKED = "blocked"
    WRONG_PIN = "wrong_pin"


@dataclass(frozen=True)
class SigningCredential:
    """A signer's stored PIN (None until enrolled, and after a reset) and the wrong tries since the last
    right one."""

    pin_hash: str | None
    wrong_attempts: int = 0
    blocked: bool = False


@dataclass(frozen=True)
class PinCheck:
    """The verdict on one PIN: refused or not (and why), and the credential's counters after it."""

    refusal: SigningRefusal | None
    wrong_attempts: int
    blocked: bool
    detail: str = ""

    @property
    def newly_blocked(self) -> bool:
        return self.blocked and self.refusal is SigningRefusal.WRONG_PIN


def check_signing_pin(credential: SigningCredential | None, pin: str) -> PinCheck:
    """Judge a PIN offered to sign (or to change the PIN). A blocked signer's PIN is not even compared, so
    a guesser learns nothing more; the right PIN clears the count, a wrong one adds to it and the
    MAX_WRONG_SIGNING_PINS-th in a row blocks the signer."""
    if credential is None or credential.pin_hash is None:
        return PinCheck(
            SigningRefusal.NOT_ENROLLED,
            0,
            False,
            "no signing PIN is enrolled for this signer: set one with PUT /qa-signers/me/signing-pin",
        )
    if credential.blocked:
        return PinCheck(
            SigningRefusal.BLOCKED,
            credential.wrong_attempts,
            True,
            f"signing is blocked after {MAX_WRONG_SIGNING_PINS} wrong PINs in a row: a coordinator resets"
            " the enrolment, then the signer sets a new PIN",
        )
    if signing_pin_matches(pin, credential.pin_hash):
        return PinCheck(None, 0, False)
    wrong = credential.wrong_attempts + 1
    blocked = wrong >= MAX_WRONG_SIGNING_PINS
    detail = "wrong signing PIN" + (
        f"; signing is now blocked after {wrong} wrong PINs in a row"
        if blocked
        else f" ({wrong} of {MAX_WRONG_SIGNING_PINS} in a row before signing is blocked)"
    )
    return PinCheck(SigningRefusal.WRONG_PIN, wrong, blocked, detail)


@dataclass(frozen=True)
class PinChange:
    """The verdict on setting a signing PIN: the check of the current PIN (when one is enrolled or the
    signer is blocked), whether that current PIN was left out, and what is wrong with the new one."""

    current: PinCheck | None
    current_missing: bool
    new_pin_problems: list[str]

    @property
    def allowed(self) -> bool:
        current_ok = self.current is None or self.current.refusal is None
        return current_ok and not self.current_missing and not self.new_pin_problems


def judge_pin_change(
    credential: SigningCredential | None, current_pin: str | None, new_pin: str, signer_id: str
) -> PinChange:
    """A signer sets their own PIN: the first one freely; a change only with the current PIN (a stolen
    token alone must not take over the signature), counted like a signature's; a blocked signer not at all."""
    new_pin_problems = signing_pin_problems(new_pin, signer_id)
    if credential is None or (credential.pin_hash is None and not credential.blocked):
        return PinChange(None, False, new_pin_problems)
    if current_pin is None and not credential.blocked:
        return PinChange(None, True, new_pin_problems)
    current = check_signing_pin(credential, current_pin or "")
    if current.refusal is None and new_pin == current_pin:
        new_pin_problems.append("must differ from the current PIN")
    return PinChange(current, False, new_pin_problems)


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


ENTRY_SIGNATURE_CONTEXT = "cgt.ledger.entry.v1"
HEAD_SIGNATURE_CONTEXT = "cgt.ledger.head.v1"
"""What a signature is for, inside the signed bytes: an entry's signature cannot pass for a head's."""


def signed_bytes(context: str, shipment_id: str, sequence: int, entry_sha256: str, key_id: str) -> bytes:
    """What the ledger key signs: the entry's hash already covers its content and its predecessor."""
    document = {
        "context": context,
        "shipment_id": shipment_id,
        "sequence": sequence,
        "entry_sha256": entry_sha256,
        "key_id": key_id,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class LedgerKeyError(ValueError):
    """The ledger keys in the configuration are missing or malformed (the service refuses to start)."""


@dataclass(frozen=True)
class LedgerKeyring:
    """The ledger's Ed25519 keys, held outside the database. The newest private key signs; every public key
    listed (the signing keys' and retired ones') verifies, so entries signed before a rotation still verify."""

    signing_key_id: str | None
    signing_key: Ed25519PrivateKey | None
    public_keys: Mapping[str, Ed25519PublicKey]

    def sign(self, context: str, shipment_id: str, sequence: int, entry_sha256: str) -> tuple[str, str]:
        """(key id, base64 signature) for an entry or head; refuses without a private key."""
        if self.signing_key is None or self.signing_key_id is None:
            raise LedgerKeyError("no ledger signing key configured (LEDGER_SIGNING_KEYS)")
        message = signed_bytes(context, shipment_id, sequence, entry_sha256, self.signing_key_id)
        return self.signing_key_id, base64.b64encode(self.signing_key.sign(message)).decode()

    def problem(
        self, context: str, shipment_id: str, sequence: int, entry_sha256: str, key_id: str, signature: str
    ) -> str | None:
        """Why the signature does not verify, or None."""
        public_key = self.public_keys.get(key_id)
        if public_key is None:
            return f"signed by unknown key {key_id!r}" if key_id else "not signed"
        try:
            public_key.verify(
                base64.b64decode(signature, validate=True),
                signed_bytes(context, shipment_id, sequence, entry_sha256, key_id),
            )
        except (InvalidSignature, ValueError):
            return f"signature does not verify with key {key_id!r}"
        return None


def _key_bytes(key_id: str, encoded: str) -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise LedgerKeyError(f"ledger key {key_id!r} is not 32 bytes of base64")
    return raw


def ledger_keyring(private_keys: Mapping[str, str], public_keys: Mapping[str, str]) -> LedgerKeyring:
    """From the configuration: {key id: base64 Ed25519 private key} (the last listed signs) and
    {key id: base64 Ed25519 public key} of retired keys (verify only). The key material is never echoed."""
    private = {
        key_id: Ed25519PrivateKey.from_private_bytes(_key_bytes(key_id, encoded))
        for key_id, encoded in private_keys.items()
    }
    public = {
        key_id: Ed25519PublicKey.from_public_bytes(_key_bytes(key_id, encoded))
        for key_id, encoded in public_keys.items()
    }
    clashes = sorted(set(private) & set(public))
    if clashes:
        raise LedgerKeyError(f"ledger key ids listed twice: {', '.join(clashes)}")
    public |= {key_id: key.public_key() for key_id, key in private.items()}
    newest = next(reversed(private), None)
    return LedgerKeyring(newest, private.get(newest) if newest else None, public)


@dataclass(frozen=True)
class StoredEntry:
    content: LedgerContent
    previous_sha256: str
    entry_sha256: str
    key_id: str = ""
    signature: str = ""


@dataclass(frozen=True)
class PublishedHead:
    """The last head published outside the database (the ledger topic, or the outbox's copy of it)."""

    shipment_id: str
    sequence: int
    entry_sha256: str
    key_id: str
    signature: str


@dataclass(frozen=True)
class ChainVerification:
    valid: bool
    entries: int
    broken_at_sequence: int | None = None
    """The position (1-based) of the first entry that does not verify."""
    problem: str | None = None


def _entry_problem(entry: StoredEntry, position: int, previous: str, keyring: LedgerKeyring) -> str | None:
    if entry.content.sequence != position:
        return f"entry at position {position} has sequence {entry.content.sequence}: an entry was removed or reordered"
    if entry.previous_sha256 != previous:
        return f"entry {position} does not link to entry {position - 1}"
    if entry_hash(entry.content, entry.previous_sha256) != entry.entry_sha256:
        return f"entry {position} was changed after it was written"
    signature_problem = keyring.problem(
        ENTRY_SIGNATURE_CONTEXT,
        entry.content.shipment_id,
        position,
        entry.entry_sha256,
        entry.key_id,
        entry.signature,
    )
    if signature_problem:
        # The hashes hold but the signature does not: the chain was recomputed by someone without the key.
        return (
            f"entry {position} has a bad signature ({signature_problem}): "
            "it was rewritten, or not written by COI tracking"
        )
    return None


def verify_chain(
    entries: list[StoredEntry],
    head_sha256: str | None = None,
    *,
    keyring: LedgerKeyring,
    published: PublishedHead | None = None,
) -> ChainVerification:
    """Recompute every link and check every signature. A changed entry fails its own hash, or, with its hash
    recomputed, its signature; a removed or reordered one breaks the sequence or the link to its
    predecessor; either way the first bad position is named. `head_sha256`, kept apart from the entries,
    and `published`, kept outside the database, catch entries cut off at the end."""
    previous = GENESIS_SHA256
    for position, entry in enumerate(entries, start=1):
        problem = _entry_problem(entry, position, previous, keyring)
        if problem:
            return ChainVerification(False, len(entries), position, problem)
        previous = entry.entry_sha256
    count = len(entries)
    if head_sha256 is not None and head_sha256 != previous:
        return ChainVerification(
            False, count, count + 1, f"the ledger ends after entry {count}: later entries were removed"
        )
    if published is not None:
        return _against_published(entries, keyring, published)
    return ChainVerification(True, count)


def _against_published(
    entries: list[StoredEntry], keyring: LedgerKeyring, published: PublishedHead
) -> ChainVerification:
    """Entries after the published head are fine (its publication may lag); fewer, or another hash at the
    published position, are not."""
    count = len(entries)
    problem = keyring.problem(
        HEAD_SIGNATURE_CONTEXT,
        published.shipment_id,
        published.sequence,
        published.entry_sha256,
        published.key_id,
        published.signature,
    )
    if problem:
        return ChainVerification(False, count, None, f"the published head has a bad signature ({problem})")
    if published.sequence > count:
        return ChainVerification(
            False,
            count,
            count + 1,
            f"the ledger ends after entry {count} but entry {published.sequence} was published: "
            "later entries were removed",
        )
    if entries[published.sequence - 1].entry_sha256 != published.entry_sha256:
        return ChainVerification(
            False,
            count,
            published.sequence,
            f"entry {published.sequence} differs from the head published for it",
        )
    return ChainVerification(True, count)


# ---------------------------------------------------------------- a failed lot


def closes_on_lot_failure(leg: ShipmentLeg, status: ShipmentStatus, product_released: bool) -> bool:
    """Whether a failed lot closes this shipment: the order's planned return leg, which that lot would have
    travelled on (a new leg is planned for the next lot). An outbound leg carried the cells, not the lot,
    and is left as it is; a return leg already released, moving or closed is not the failed lot's (order
    intake records a failure only before the release) and is left too."""
    return leg is ShipmentLeg.RETURN and status is ShipmentStatus.PLANNED and not product_released
