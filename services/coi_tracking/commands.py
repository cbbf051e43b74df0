"""COI tracking's state changes — scans, logger readings, container declarations, QA dispositions — each
applied inside the caller's transaction with the events it causes (outbox). Shared by the REST routes and
EPCIS capture so that both follow exactly the same rules."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope, new_uuid, utc_now
from cgt_contracts.events import (
    CoiBreak,
    CoiBreakData,
    CustodyTransferred,
    CustodyTransferredData,
    QaDispositionData,
    ScanType,
    ShipmentDelayed,
    ShipmentDelayedData,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentQuarantined,
    ShipmentQuarantinedData,
    ShipmentRejected,
    ShipmentReleased,
    ShipmentScanned,
    ShipmentScannedData,
    TemperatureExcursion,
    TemperatureExcursionData,
)
from sqlmodel import Session, col, func, select

from services.coi_tracking import domain, epcis
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
    repeated: bool = False
    """The same scan was recorded before: this is that scan's outcome, and nothing was stored again."""


class Refused(Exception):
    """A command that does not fit the shipment's state (HTTP 409)."""


def _emit(session: Session, events: list[EventEnvelope]) -> None:
    for event in events:
        enqueue(session, SHIPMENTS, event)


def _envelope(shipment: Shipment, correlation_id: str) -> dict[str, str]:
    return {"source": SOURCE, "subject": shipment.coi, "correlationid": correlation_id}


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
    return [
        ShipmentQuarantined(
            **_envelope(shipment, correlation_id),
            data=ShipmentQuarantinedData(
                shipment_id=shipment.id,
                coi=shipment.coi,
                leg=shipment.leg,
                treatment_center_id=shipment.treatment_center_id,
                reason=reason[:500],
                quarantined_at=now,
            ),
        )
    ]


def _delivered_event(
    shipment: Shipment, correlation_id: str, disposition_id: UUID | None = None
) -> ShipmentDelivered:
    assert shipment.delivered_at is not None
    return ShipmentDelivered(
        **_envelope(shipment, correlation_id),
        data=ShipmentDeliveredData(
            shipment_id=shipment.id,
            coi=shipment.coi,
            leg=shipment.leg,
            treatment_center_id=shipment.treatment_center_id,
            delivered_at=shipment.delivered_at,
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=shipment.max_temperature_celsius
            if shipment.max_temperature_celsius is not None
            else shipment.storage_limit_celsius,
            released_by_disposition_id=disposition_id,
        ),
    )


def scan_content_sha256(shipment_id: UUID, scan: ScanInput, scanned_by: str) -> str:
    """What a scan says — shipment, type, device time, scanner, bags, location, temperature, container,
    seal, hand-off, ETA — as one digest. Two scans that say the same are the same scan sent twice (a
    courier's retry over HTTP, Kafka or EPCIS, under a new event id or none): no device makes two scans
    at the same instant."""
    content = [
        str(shipment_id),
        scan.scan_type.value,
        list(scan.bag_cois),
        scan.location,
        scan.device_time.astimezone(UTC).isoformat(),
        scan.temperature_celsius,
        scan.container_id,
        scan.seal_id,
        scan.handed_to,
        scan.eta_at.astimezone(UTC).isoformat() if scan.eta_at is not None else None,
        scanned_by,
    ]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def _earlier_scan(session: Session, shipment: Shipment, scan: ScanInput, digest: str) -> ScanRecord | None:
    """The same scan, recorded before. Looked up only when the scan is not later than the shipment's
    latest one (a scan sent again never is): a live stream of scans costs no query."""
    latest = shipment.last_scan_device_time
    if latest is None or scan.device_time > latest:
        return None
    write_deferred(session)  # this transaction's own scans count too
    return session.exec(
        select(ScanRecord)
        .where(ScanRecord.shipment_id == shipment.id)
        .where(ScanRecord.content_sha256 == digest)
    ).first()


def _repeated(shipment: Shipment, earlier: ScanRecord) -> ScanOutcome:
    log.info("scan.repeated", shipment_id=str(shipment.id), scan_id=str(earlier.id))
    return ScanOutcome(
        scan_id=earlier.id,
        accepted=earlier.accepted,
        refusal_reason=earlier.refusal_reason,
        coi_verified=earlier.coi_verified,
        shipment_status=shipment.status,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
        quarantine_reason=shipment.quarantine_reason,
        repeated=True,
    )


def record_scan(
    session: Session,
    shipment: Shipment,
    scan: ScanInput,
    actor: Actor,
    correlation_id: str,
    facts: ShipmentFacts,
) -> ScanOutcome:
    """Store the scan, whatever it means, then act on it: custody, dispatch, delay, delivery, quarantine.
    The caller has locked the shipment and looked up its `facts` (`locked_with_facts`, once for all the
    shipments of a group or a captured document). The same scan sent again is answered with the first
    one's outcome and changes nothing."""
    digest = scan_content_sha256(shipment.id, scan, actor.subject)
    earlier = _earlier_scan(session, shipment, scan, digest)
    if earlier is not None:
        return _repeated(shipment, earlier)
    container = facts.container
    state = domain.ShipmentState(
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
        order_cancelled=shipment.order_cancelled_at is not None,
        leg=shipment.leg,
        product_released=shipment.product_released_at is not None,
    )
    received_at = utc_now()
    decision = domain.evaluate_scan(
        state,
        domain.Scan(
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
        ),
    )
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
            "content_sha256": digest,
        },
    )
    if shipment.last_scan_device_time is None or scan.device_time > shipment.last_scan_device_time:
        shipment.last_scan_device_time = scan.device_time
    envelope = _envelope(shipment, correlation_id)
    events: list[EventEnvelope] = []
    if decision.reading is not None:
        _store_readings(session, shipment, [decision.reading], "scan")
    events.append(
        ShipmentScanned(
            **envelope,
            data=ShipmentScannedData(
                shipment_id=shipment.id,
                scan_id=scan_id,
                coi=shipment.coi,
                scan_type=scan.scan_type,
                location=scan.location,
                scanned_at=scan.device_time,
                temperature_celsius=scan.temperature_celsius,
                accepted=decision.accepted,
                refusal_reason=decision.refusal_reason,
            ),
        )
    )
    previous_eta = shipment.eta_at
    if decision.accepted:
        # Set only what changes: each assignment to a table model costs validation and change tracking.
        if shipment.physical_status is not decision.physical_status:
            shipment.physical_status = decision.physical_status
        if shipment.status not in (
            ShipmentStatus.QUARANTINED,
            ShipmentStatus.REJECTED,
            decision.physical_status,
        ):
            shipment.status = decision.physical_status
        if scan.eta_at is not None:
            shipment.eta_at = scan.eta_at
    if decision.custody is not None:
        entry = append_entry(
            session,
            shipment,
            kind=LedgerKind.CUSTODY,
            from_party=decision.custody.from_party,
            to_party=decision.custody.to_party,
            location=scan.location,
            at=scan.device_time,
            signer=actor.printed_name,
            meaning=f"{scan.scan_type.value}: custody handed over",
        )
        shipment.custodian = decision.custody.to_party
        events.append(
            CustodyTransferred(
                **envelope,
                data=CustodyTransferredData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    from_party=entry.content.from_party,
                    to_party=entry.content.to_party,
                    location=entry.content.location,
                    transferred_at=entry.content.at,
                    ledger_sequence=entry.content.sequence,
                    entry_sha256=entry.entry_sha256,
                ),
            )
        )
    if decision.dispatched:
        assert scan.eta_at is not None
        shipment.dispatched_at = scan.device_time
        events.append(
            ShipmentDispatched(
                **envelope,
                data=ShipmentDispatchedData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    leg=shipment.leg,
                    treatment_center_id=shipment.treatment_center_id,
                    dispatched_at=scan.device_time,
                    eta_at=scan.eta_at,
                ),
            )
        )
    if decision.accepted and scan.scan_type is ScanType.DELAY:
        assert scan.eta_at is not None
        events.append(
            ShipmentDelayed(
                **envelope,
                data=ShipmentDelayedData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    leg=shipment.leg,
                    treatment_center_id=shipment.treatment_center_id,
                    previous_eta_at=previous_eta,
                    eta_at=scan.eta_at,
                    location=scan.location,
                ),
            )
        )
    if decision.coi_break:
        events.append(
            CoiBreak(
                **envelope,
                data=CoiBreakData(
                    shipment_id=shipment.id,
                    scan_id=scan_id,
                    expected_coi=shipment.coi,
                    read_cois=list(scan.bag_cois),
                    detected_at=utc_now(),
                ),
            )
        )
    if decision.temperature_excursion and decision.reading is not None:
        events.append(_excursion(shipment, decision.reading.celsius, decision.reading.at, correlation_id))
    if decision.quarantine:
        reason = " | ".join(decision.quarantine_reasons)
        events.extend(
            quarantine(
                session, shipment, reason=reason, location=scan.location, correlation_id=correlation_id
            )
        )
    if decision.accepted and scan.scan_type is ScanType.DELIVERY:
        shipment.delivered_at = scan.device_time
        if decision.delivered_clean:
            events.append(_delivered_event(shipment, correlation_id))
    if shipment not in session:  # a loaded shipment is saved anyway (and add() walks its cascades)
        session.add(shipment)
    _emit(session, events)
    log.info(
        "scan.recorded",
        shipment_id=str(shipment.id),
        scan_type=scan.scan_type.value,
        accepted=decision.accepted,
        coi_verified=not decision.coi_break,
        quarantined=decision.quarantine,
    )
    return ScanOutcome(
        scan_id=scan_id,
        accepted=decision.accepted,
        refusal_reason=decision.refusal_reason,
        coi_verified=not decision.coi_break,
        shipment_status=shipment.status,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
        quarantine_reason=shipment.quarantine_reason,
    )


def _excursion(shipment: Shipment, celsius: float, at: datetime, correlation_id: str) -> TemperatureExcursion:
    return TemperatureExcursion(
        **_envelope(shipment, correlation_id),
        data=TemperatureExcursionData(
            shipment_id=shipment.id,
            coi=shipment.coi,
            reading_celsius=celsius,
            limit_celsius=shipment.storage_limit_celsius,
            read_at=at,
        ),
    )


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
        events.append(_excursion(shipment, worst.celsius, worst.at, correlation_id))
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
    correlation_id: str,
) -> QaDisposition:
    """A QA release or rejection, signed and chained into the ledger. Only a release lets a quarantined
    shipment go on to delivery confirmation: if it is already delivered, the delivery is published now."""
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
    envelope = _envelope(shipment, correlation_id)
    events: list[EventEnvelope] = []
    if decision is Disposition.RELEASE:
        shipment.status = ShipmentStatus.RELEASED
        events.append(ShipmentReleased(**envelope, data=data))
        if shipment.physical_status in (ShipmentStatus.DELIVERED, ShipmentStatus.RECEIVED):
            events.append(_delivered_event(shipment, correlation_id, disposition.id))
    else:
        shipment.status = ShipmentStatus.REJECTED
        events.append(ShipmentRejected(**envelope, data=data))
    session.add(shipment)
    _emit(session, events)
    return disposition


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
    if actor_company is not None and shipment.courier_company != actor_company:
        return f"shipment {shipment.id} is assigned to another courier company"
    return shipment


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
