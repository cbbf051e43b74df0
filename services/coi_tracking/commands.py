"""COI tracking's state changes — scans, logger readings, container declarations, QA dispositions — each
applied inside the caller's transaction with the events it causes (outbox). Shared by the REST routes and
EPCIS capture so that both follow exactly the same rules."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope, new_uuid, utc_now
from cgt_contracts.events import (
    QaDispositionData,
    ScanType,
    ShipmentRejected,
    ShipmentReleased,
)
from sqlmodel import Session, col, func, select

from services.coi_tracking import domain, epcis, translate
from services.coi_tracking.domain import (
    Disposition,
    LedgerKind,
    Reading,
    ShipmentStatus,
    SignatureMeaning,
    TemperaturePolicy,
)
from services.coi_tracking.ledger import append_entry
from services.coi_tracking.models import (
    Bag,
    Container,
    Courier,
    QaDisposition,
    QaSigner,
    ScanRecord,
    Shipment,
    TemperatureReading,
)
from services.common.db import insert_later, locked, tables_of, write_deferred
from services.common.outbox import enqueue
from services.common.topics import SHIPMENTS

SOURCE = "cgt/coi-tracking"
SCAN_TABLE, READING_TABLE = tables_of(ScanRecord, TemperatureReading)
log = structlog.get_logger()


@dataclass(frozen=True)
class Actor:
    subject: str
    printed_name: str


@dataclass(frozen=True)
class ScanInput:
    scan_type: ScanType
    bag_cois: tuple[str, ...]
    location: str
    device_time: datetime
    temperature_celsius: float | None = None
    container_id: str | None = None
    seal_id: str | None = None
    handed_to: str | None = None
    eta_at: datetime | None = None
    epcis_event_id: str | None = None


@dataclass(frozen=True)
class ScanOutcome:
    scan_id: UUID
    accepted: bool
    refusal_reason: str | None
    coi_verified: bool
    shipment_status: ShipmentStatus
    quarantined: bool
    quarantine_reason: str | None


class Refused(Exception):
    """A command that does not fit the shipment's state (HTTP 409)."""


def _emit(session: Session, events: list[EventEnvelope]) -> None:
    for event in events:
        enqueue(session, SHIPMENTS, event)


def container_of(session: Session, shipment: Shipment) -> Container | None:
    return session.exec(select(Container).where(Container.shipment_id == shipment.id)).first()


@dataclass(frozen=True)
class ShipmentFacts:
    """What a scan is judged against besides the shipment row: its container and how many bags it holds."""

    container: Container | None
    bag_count: int


def locked_with_facts(
    session: Session, shipment_ids: Collection[UUID]
) -> tuple[dict[UUID, Shipment], dict[UUID, ShipmentFacts]]:
    """Shipments locked (`locked`: FOR UPDATE OF shipment; SQLite: the write locks) in id order, so two
    groups never wait on each other in a cycle, read as they are now, with their facts — in one query,
    one round trip for a group of scans."""
    bag_count = (
        select(func.count())
        .select_from(Bag)
        .where(col(Bag.shipment_id) == col(Shipment.id))
        .correlate(Shipment)
        .scalar_subquery()
    )
    query = (
        select(Shipment, Container, bag_count)
        .outerjoin(Container, col(Container.shipment_id) == col(Shipment.id))
        .where(col(Shipment.id).in_(set(shipment_ids)))
        .order_by(col(Shipment.id))
    )
    query = locked(session, query, of=Shipment)
    shipments: dict[UUID, Shipment] = {}
    facts: dict[UUID, ShipmentFacts] = {}
    for shipment, container, bags in session.exec(query):
        shipments[shipment.id] = shipment
        facts[shipment.id] = ShipmentFacts(container=container, bag_count=bags)
    return shipments, facts


def company_of(session: Session, party: str) -> str | None:
    """The courier registry's company for `party`, or None. Looked up by key: within a batch's session the
    identity map answers repeats without a query."""
    courier = session.get(Courier, party)
    return courier.company if courier is not None else None


def policy_of(session: Session, shipment: Shipment, container: Container | None = None) -> TemperaturePolicy:
    container = container or container_of(session, shipment)
    hold_until = None
    if (
        container is not None
        and container.charged_at is not None
        and container.validated_hold_hours is not None
    ):
        hold_until = container.charged_at + timedelta(hours=container.validated_hold_hours)
    transit_deadline = None
    if shipment.max_transit_hours is not None and shipment.dispatched_at is not None:
        transit_deadline = shipment.dispatched_at + timedelta(hours=shipment.max_transit_hours)
    return TemperaturePolicy(
        max_celsius=shipment.storage_limit_celsius,
        min_celsius=shipment.min_celsius,
        logger_interval_minutes=shipment.logger_interval_minutes,
        hold_until=hold_until,
        transit_deadline=transit_deadline,
    )


def quarantine(
    session: Session, shipment: Shipment, *, reason: str, location: str, correlation_id: str
) -> list[EventEnvelope]:
    """Quarantine at once: the status, a ledger entry, and the event that tells everyone (I1, I2)."""
    at = enter_quarantine(session, shipment, reason=reason, location=location)
    return [translate.shipment_quarantined(shipment, reason, at, correlation_id)]


def enter_quarantine(session: Session, shipment: Shipment, *, reason: str, location: str) -> datetime:
    """The quarantine itself: the status, the reason added to any earlier one, a ledger entry. Returns
    when it was entered."""
    already = shipment.status is ShipmentStatus.QUARANTINED
    shipment.status = ShipmentStatus.QUARANTINED
    shipment.quarantine_reason = reason if not already else f"{shipment.quarantine_reason} | {reason}"
    now = utc_now()
    append_entry(
        session,
        shipment,
        kind=LedgerKind.QUARANTINE,
        from_party=shipment.custodian,
        to_party=shipment.custodian,
        location=location,
        at=now,
        signer="system:coi-tracking",
        meaning="quarantine",
        reason=reason,
    )
    return now


def scan_state(session: Session, shipment: Shipment, facts: ShipmentFacts) -> domain.ShipmentState:
    """The shipment as the domain judges a scan against it."""
    container = facts.container
    return domain.ShipmentState(
        status=shipment.status,
        physical_status=shipment.physical_status,
        expected_coi=shipment.coi,
        bag_count=facts.bag_count,
        policy=policy_of(session, shipment, container),
        custodian=shipment.custodian,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
        container_id=container.id if container and container.charged_at else None,
        seal_id=container.seal_id if container else None,
        planned_at=shipment.created_at,
        courier_company=shipment.courier_company,
    )


def judged_scan(
    session: Session, shipment: Shipment, scan: ScanInput, actor: Actor, received_at: datetime
) -> domain.Scan:
    """The scan as the domain sees it: with the courier registry's companies of the parties it names."""
    return domain.Scan(
        scan_type=scan.scan_type,
        bag_cois=scan.bag_cois,
        temperature_celsius=scan.temperature_celsius,
        scanned_by=actor.subject,
        handed_to=scan.handed_to,
        treatment_center_id=shipment.treatment_center_id,
        at=scan.device_time,
        received_at=received_at,
        container_id=scan.container_id,
        seal_id=scan.seal_id,
        eta_at=scan.eta_at,
        scanned_by_company=company_of(session, actor.subject),
        handed_to_company=company_of(session, scan.handed_to) if scan.handed_to else None,
    )


def record_scan(
    session: Session,
    shipment: Shipment,
    scan: ScanInput,
    actor: Actor,
    correlation_id: str,
    facts: ShipmentFacts,
) -> ScanOutcome:
    """Store the scan, whatever it means, then act on it: the domain decides what it means (the facts),
    `apply_scan_facts` applies them, `translate` publishes them. The caller has locked the shipment and
    looked up its `facts` (`locked_with_facts`, once for all the shipments of a group or a document)."""
    received_at = utc_now()
    decision = domain.evaluate_scan(
        scan_state(session, shipment, facts), judged_scan(session, shipment, scan, actor, received_at)
    )
    recorded = store_scan(session, shipment, scan, actor, decision, received_at)
    if decision.reading is not None:
        _store_readings(session, shipment, [decision.reading], "scan")
    applied = apply_scan_facts(session, shipment, decision, scan, actor)
    if shipment not in session:  # a loaded shipment is saved anyway (and add() walks its cascades)
        session.add(shipment)
    _emit(session, translate.scan_events(shipment, decision, recorded, applied, correlation_id))
    log.info(
        "scan.recorded",
        shipment_id=str(shipment.id),
        scan_type=scan.scan_type.value,
        accepted=decision.accepted,
        coi_verified=not decision.coi_break,
        quarantined=decision.quarantine,
    )
    return ScanOutcome(
        scan_id=recorded.scan_id,
        accepted=decision.accepted,
        refusal_reason=decision.refusal_reason,
        coi_verified=not decision.coi_break,
        shipment_status=shipment.status,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
        quarantine_reason=shipment.quarantine_reason,
    )


def store_scan(
    session: Session,
    shipment: Shipment,
    scan: ScanInput,
    actor: Actor,
    decision: domain.ScanDecision,
    received_at: datetime,
) -> translate.ScanRecorded:
    """The scan's row in the scan ledger, accepted or refused, written with the transaction."""
    scan_id = new_uuid()
    insert_later(
        session,
        SCAN_TABLE,
        {
            "id": scan_id,
            "shipment_id": shipment.id,
            "scan_type": scan.scan_type,
            "bag_cois": json.dumps(list(scan.bag_cois)),
            "container_id": scan.container_id,
            "seal_id": scan.seal_id,
            "location": scan.location,
            "scanned_by": actor.subject,
            "handed_to": scan.handed_to,
            "device_time": scan.device_time,
            "received_at": received_at,
            "temperature_celsius": scan.temperature_celsius,
            "accepted": decision.accepted,
            "refusal_reason": decision.refusal_reason,
            "coi_verified": not decision.coi_break,
            "epcis_event_id": scan.epcis_event_id,
        },
    )
    return translate.ScanRecorded(
        scan_id=scan_id,
        scan_type=scan.scan_type,
        location=scan.location,
        scanned_at=scan.device_time,
        temperature_celsius=scan.temperature_celsius,
        detected_at=received_at,
    )


def apply_scan_facts(
    session: Session, shipment: Shipment, decision: domain.ScanDecision, scan: ScanInput, actor: Actor
) -> translate.Applied:
    """Apply each fact the domain found to the shipment's rows; nothing here decides anything."""
    previous_eta_at = shipment.eta_at
    custody_entry = None
    quarantined_at = None
    for fact in decision.facts:
        match fact:
            case domain.Moved(physical_status=moved_to, eta_at=eta_at):
                # Set only what changes: each assignment to a table model costs validation and tracking.
                if shipment.physical_status is not moved_to:
                    shipment.physical_status = moved_to
                if shipment.status not in (ShipmentStatus.QUARANTINED, ShipmentStatus.REJECTED, moved_to):
                    shipment.status = moved_to
                if eta_at is not None:
                    shipment.eta_at = eta_at
            case domain.CustodyChange(from_party=from_party, to_party=to_party):
                custody_entry = append_entry(
                    session,
                    shipment,
                    kind=LedgerKind.CUSTODY,
                    from_party=from_party,
                    to_party=to_party,
                    location=scan.location,
                    at=scan.device_time,
                    signer=actor.printed_name,
                    meaning=f"{scan.scan_type.value}: custody handed over",
                )
                shipment.custodian = to_party
            case domain.Dispatched(at=at):
                shipment.dispatched_at = at
            case domain.Quarantined(reason=reason):
                quarantined_at = enter_quarantine(session, shipment, reason=reason, location=scan.location)
            case domain.Delivered(at=at):
                shipment.delivered_at = at
    return translate.Applied(previous_eta_at, custody_entry, quarantined_at)


def _store_readings(session: Session, shipment: Shipment, readings: list[Reading], source: str) -> None:
    for reading in readings:
        insert_later(
            session,
            READING_TABLE,
            {"shipment_id": shipment.id, "read_at": reading.at, "celsius": reading.celsius, "source": source},
        )
        if shipment.max_temperature_celsius is None or reading.celsius > shipment.max_temperature_celsius:
            shipment.max_temperature_celsius = reading.celsius


@dataclass(frozen=True)
class ReadingsOutcome:
    stored: int
    excursions: list[str]
    quarantined: bool


def record_readings(
    session: Session, shipment: Shipment, readings: list[Reading], source: str, correlation_id: str
) -> ReadingsOutcome:
    """Store a logger batch and quarantine on any excursion: out of range, a gap, past hold or transit time."""
    write_deferred(session)  # an earlier batch of this transaction counts for the gap check
    previous = session.exec(
        select(TemperatureReading.read_at)
        .where(TemperatureReading.shipment_id == shipment.id)
        .where(TemperatureReading.source != "scan")
        .order_by(col(TemperatureReading.read_at).desc())
    ).first()
    problems = domain.temperature_problems(policy_of(session, shipment), readings, previous)
    _store_readings(session, shipment, readings, source)
    events: list[EventEnvelope] = []
    if problems:
        worst = max(readings, key=lambda r: r.celsius)
        events.append(translate.temperature_excursion(shipment, worst, correlation_id))
        reason = (
            "temperature excursion: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
        events.extend(
            quarantine(
                session, shipment, reason=reason, location="data logger", correlation_id=correlation_id
            )
        )
    session.add(shipment)
    _emit(session, events)
    return ReadingsOutcome(
        stored=len(readings), excursions=problems, quarantined=shipment.status is ShipmentStatus.QUARANTINED
    )


def declare_container(
    session: Session,
    shipment: Shipment,
    *,
    container_id: str,
    charged_at: datetime,
    validated_hold_hours: float,
    seal_id: str | None,
    logger_interval_minutes: float | None,
) -> Container:
    """Record the dry shipper actually packed (before pick-up): its id, charge time, hold time and seal."""
    if shipment.physical_status is not ShipmentStatus.PLANNED:
        raise Refused(
            f"the container is declared before pick-up; this shipment is {shipment.physical_status}"
        )
    container = container_of(session, shipment)
    if container is None:
        raise Refused("this shipment has no container record")
    if container.id != container_id:
        if session.get(Container, container_id) is not None:
            raise Refused("this container id is already declared for another shipment")
        session.delete(container)
        session.flush()
        container = Container(id=container_id, shipment_id=shipment.id)
    container.charged_at = charged_at
    container.validated_hold_hours = validated_hold_hours
    container.seal_id = seal_id
    shipment.logger_interval_minutes = logger_interval_minutes
    session.add(container)
    session.add(shipment)
    return container


def record_disposition(
    session: Session,
    shipment: Shipment,
    *,
    decision: Disposition,
    reason: str,
    meaning: SignatureMeaning,
    signer: Actor,
    signing_pin: str,
    correlation_id: str,
) -> QaDisposition:
    """A QA release or rejection, signed with the signer's PIN (SigningRefused, counted, when it is not
    theirs) and chained into the ledger. Only a release lets a quarantined shipment go on to delivery
    confirmation: if it is already delivered, the delivery is published now. The PIN goes nowhere else."""
    verify_signing_pin(session, signer, signing_pin, shipment.id)
    refusal = domain.disposition_refusal(shipment.status, decision, meaning)
    if refusal is not None:
        raise Refused(refusal)
    signed_at = utc_now()
    entry = append_entry(
        session,
        shipment,
        kind=LedgerKind.RELEASE if decision is Disposition.RELEASE else LedgerKind.REJECT,
        from_party=shipment.custodian,
        to_party=shipment.custodian,
        location="QA",
        at=signed_at,
        signer=f"{signer.printed_name} ({signer.subject})",
        meaning=meaning.value,
        reason=reason,
    )
    disposition = QaDisposition(
        shipment_id=shipment.id,
        decision=decision.value,
        reason=reason,
        meaning=meaning.value,
        signer_id=signer.subject,
        signer_printed_name=signer.printed_name,
        signed_at=signed_at,
        ledger_sequence=entry.content.sequence,
    )
    session.add(disposition)
    data = QaDispositionData(
        shipment_id=shipment.id,
        coi=shipment.coi,
        leg=shipment.leg,
        treatment_center_id=shipment.treatment_center_id,
        disposition_id=disposition.id,
        signer_id=signer.subject,
        signer_printed_name=signer.printed_name,
        signed_at=signed_at,
        meaning=meaning.value,
        reason=reason[:500],
        ledger_sequence=entry.content.sequence,
    )
    envelope = translate.envelope(shipment, correlation_id)
    events: list[EventEnvelope] = []
    if decision is Disposition.RELEASE:
        shipment.status = ShipmentStatus.RELEASED
        events.append(ShipmentReleased(**envelope, data=data))
        if shipment.physical_status in (ShipmentStatus.DELIVERED, ShipmentStatus.RECEIVED):
            events.append(translate.shipment_delivered(shipment, correlation_id, disposition.id))
    else:
        shipment.status = ShipmentStatus.REJECTED
        events.append(ShipmentRejected(**envelope, data=data))
    session.add(shipment)
    _emit(session, events)
    return disposition


# ---------------------------------------------------------------- QA signing PIN (21 CFR Part 11 §11.200)


class SigningRefused(Exception):
    """A signature, or a PIN change, whose signing PIN is wrong, not enrolled or blocked (HTTP 403)."""

    def __init__(self, check: domain.PinCheck) -> None:
        super().__init__(check.detail)
        self.check = check


class SigningPinInvalid(Exception):
    """A PIN change that leaves out the current PIN or sets a weak one: the field and what is wrong (422)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


def _signer_for_update(session: Session, signer_id: str) -> QaSigner | None:
    return session.exec(locked(session, select(QaSigner).where(QaSigner.signer_id == signer_id))).first()


def _credential(row: QaSigner | None) -> domain.SigningCredential | None:
    if row is None:
        return None
    return domain.SigningCredential(row.pin_hash, row.wrong_attempts, row.blocked_at is not None)


def _count_attempt(
    session: Session, row: QaSigner | None, check: domain.PinCheck, signer_id: str, **context: str
) -> None:
    """Store the counters a PIN check left, and report a refusal (§11.300(d)); the caller commits them even
    though it refuses the request, or a guesser would get unlimited tries."""
    if row is not None:
        row.wrong_attempts = check.wrong_attempts
        if check.blocked and row.blocked_at is None:
            row.blocked_at = utc_now()
        session.add(row)
    if check.refusal is None:
        return
    # Never the PIN: who, what, why and how many in a row.
    log.warning(
        "qa.signature_refused",
        signer_id=signer_id,
        refusal=check.refusal.value,
        wrong_attempts=check.wrong_attempts,
        **context,
    )
    if check.newly_blocked:
        log.warning("qa.signer_blocked", signer_id=signer_id, wrong_attempts=check.wrong_attempts, **context)


def verify_signing_pin(session: Session, signer: Actor, signing_pin: str, shipment_id: UUID) -> None:
    """The second identification component, checked at this signature: SigningRefused unless it is the
    signer's enrolled PIN and the signer is not blocked."""
    row = _signer_for_update(session, signer.subject)
    check = domain.check_signing_pin(_credential(row), signing_pin)
    _count_attempt(session, row, check, signer.subject, shipment_id=str(shipment_id))
    if check.refusal is not None:
        raise SigningRefused(check)


def set_signing_pin(session: Session, signer: Actor, current_pin: str | None, new_pin: str) -> QaSigner:
    """A QA signer enrols their signing PIN, or changes it with the current one (domain.judge_pin_change).
    Only a salted scrypt hash is stored, with a salt of its own per signer and per PIN."""
    row = _signer_for_update(session, signer.subject)
    change = domain.judge_pin_change(_credential(row), current_pin, new_pin, signer.subject)
    if change.current is not None:
        _count_attempt(session, row, change.current, signer.subject, action="change_pin")
        if change.current.refusal is not None:
            raise SigningRefused(change.current)
    if change.current_missing:
        raise SigningPinInvalid("current_signing_pin", "is required to change an enrolled signing PIN")
    if change.new_pin_problems:
        raise SigningPinInvalid("signing_pin", "; ".join(change.new_pin_problems))
    first = row is None or row.pin_hash is None
    row = row or QaSigner(signer_id=signer.subject)
    row.pin_hash = domain.hash_signing_pin(new_pin, secrets.token_bytes(domain.PIN_SALT_BYTES))
    row.wrong_attempts, row.blocked_at, row.pin_set_at = 0, None, utc_now()
    session.add(row)
    log.info("qa.signing_pin_set", signer_id=signer.subject, enrolment="first" if first else "change")
    return row


def reset_signing_pin(session: Session, signer_id: str, by: Actor) -> bool:
    """A coordinator withdraws a signer's PIN (forgotten, or blocked after wrong PINs): the signer then
    enrols a new one as at first. False when the signer has nothing to reset."""
    row = _signer_for_update(session, signer_id)
    if row is None or (row.pin_hash is None and row.blocked_at is None):
        return False
    was_blocked = row.blocked_at is not None
    row.pin_hash, row.wrong_attempts, row.blocked_at, row.pin_set_at = None, 0, None, None
    session.add(row)
    log.warning("qa.signing_pin_reset", signer_id=signer_id, reset_by=by.subject, was_blocked=was_blocked)
    return True


EPCIS_PLANNED_TRANSIT = timedelta(hours=48)
"""EPCIS carries no ETA: a captured pick-up is planned at event time + 48 h until a delay scan says more."""


@dataclass(frozen=True)
class CaptureResult:
    event_index: int
    event_id: str | None
    outcome: str
    """applied, duplicate or refused"""
    reason: str | None = None
    shipment_id: UUID | None = None
    scan: ScanOutcome | None = None


def _capture_target(session: Session, scan: epcis.CapturedScan, actor_company: str | None) -> Shipment | str:
    """The shipment an EPCIS event is about, or why it cannot be told."""
    if scan.shipment_ref is not None:
        shipment = session.get(Shipment, UUID(scan.shipment_ref))
        if shipment is None:
            return f"bizTransaction names shipment {scan.shipment_ref}, which does not exist"
    else:
        candidates = [
            s
            for s in session.exec(select(Shipment).where(col(Shipment.coi).in_(set(scan.cois)))).all()
            if s.physical_status in domain.ALLOWED_FROM[scan.scan_type]
        ]
        if len(candidates) != 1:
            found = "no shipment" if not candidates else f"{len(candidates)} shipments"
            return (
                f"{found} with COI {', '.join(sorted(set(scan.cois)))} can take a {scan.scan_type} scan now: "
                "name the shipment as bizTransaction urn:uuid:<shipment id>"
            )
        shipment = candidates[0]
    return domain.other_company_refusal(shipment.courier_company, actor_company) or shipment


def capture(
    session: Session,
    outcomes: list[epcis.Outcome],
    actor: Actor,
    actor_company: str | None,
    *,
    rollback_on_error: bool,
    correlation_id: str,
) -> list[CaptureResult]:
    """Apply captured EPCIS events as scans. With rollback (the standard's default), one refused event
    means none is applied; with proceed, the good ones are."""
    results: list[CaptureResult] = []
    planned: list[tuple[epcis.CapturedScan, Shipment]] = []
    event_ids: set[str] = set()
    for outcome in outcomes:
        if isinstance(outcome, epcis.RefusedEvent):
            results.append(CaptureResult(outcome.event_index, outcome.event_id, "refused", outcome.reason))
            continue
        if outcome.event_id and (
            outcome.event_id in event_ids
            or session.exec(
                select(ScanRecord.id).where(ScanRecord.epcis_event_id == outcome.event_id)
            ).first()
        ):
            results.append(
                CaptureResult(
                    outcome.event_index, outcome.event_id, "duplicate", "this eventID was captured before"
                )
            )
            continue
        target = _capture_target(session, outcome, actor_company)
        if isinstance(target, str):
            results.append(CaptureResult(outcome.event_index, outcome.event_id, "refused", target))
            continue
        planned.append((outcome, target))
        if outcome.event_id:
            event_ids.add(outcome.event_id)
    if rollback_on_error and any(r.outcome == "refused" for r in results):
        return sorted(
            results
            + [
                CaptureResult(
                    o.event_index,
                    o.event_id,
                    "not_applied",
                    "another event of the document was refused (rollback)",
                    s.id,
                )
                for o, s in planned
            ],
            key=lambda r: r.event_index,
        )
    # Every shipment of the document locked at once: each scan is judged on the shipment as it is now.
    _, facts = locked_with_facts(session, {shipment.id for _, shipment in planned})
    for outcome, shipment in planned:
        scan = ScanInput(
            scan_type=outcome.scan_type,
            bag_cois=outcome.cois,
            location=outcome.location,
            device_time=outcome.event_time,
            temperature_celsius=outcome.worst_celsius,
            eta_at=outcome.event_time + EPCIS_PLANNED_TRANSIT
            if outcome.scan_type in (ScanType.PICK_UP, ScanType.DELAY)
            else None,
            epcis_event_id=outcome.event_id,
        )
        applied = record_scan(session, shipment, scan, actor, correlation_id, facts[shipment.id])
        results.append(
            CaptureResult(
                outcome.event_index, outcome.event_id, "applied", applied.refusal_reason, shipment.id, applied
            )
        )
    return sorted(results, key=lambda r: r.event_index)
