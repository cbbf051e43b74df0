"""COI tracking's state changes — scans, logger readings, container declarations, QA dispositions — each
applied inside the caller's transaction with the events it causes (outbox). Shared by the REST routes and
EPCIS capture so that both follow exactly the same rules."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope, new_uuid, utc_now
from cgt_contracts.events import (
    QaDispositionDataV2,
    QaReasonCode,
    QuarantineReasonCode,
    ScanType,
    ShipmentLeg,
    ShipmentRejectedV2,
    ShipmentReleasedV2,
)
from sqlmodel import Session, col, func, select

from services.coi_tracking import domain, epcis, translate
from services.coi_tracking.domain import (
    Disposition,
    LedgerKind,
    Reading,
    ShipmentStatus,
    SignatureMeaning,
    TemperatureEvidence,
    TemperaturePolicy,
)
from services.coi_tracking.ledger import append_entry
from services.coi_tracking.models import (
    Bag,
    Container,
    Courier,
    EpcisEventRecord,
    QaDisposition,
    QaSigner,
    ReadingRow,
    ScanRecord,
    ScanRow,
    Shipment,
    TemperatureReading,
)
from services.common.db import locked
from services.common.outbox import enqueue
from services.common.paging import FIRST_PAGE, PageRequest, page_of
from services.common.topics import COI_TRACKING_SOURCE, SHIPMENTS
from services.common.unit_of_work import transaction_cache, unit_of_work

SOURCE = COI_TRACKING_SOURCE
log = structlog.get_logger()


"""The most rows a list answers with."""


@dataclass(frozen=True)
class ShipmentFilter:
    """What `GET /shipments` narrows the list to; every filter given is applied."""

    coi: str | None = None
    treatment_center_id: str | None = None
    courier_company: str | None = None
    leg: ShipmentLeg | None = None
    status: ShipmentStatus | None = None


def close_failed_lot_legs(session: Session, order_id: UUID, failed_at: datetime) -> list[Shipment]:
    """The order's lot failed in manufacturing: the shipments it closes (`domain.closes_on_lot_failure`,
    the planned return leg) are marked so, take no scan from now on, and show as cancelled; returned, so
    that the next lot's leg can be planned like them. Locked, so that a scan being judged now is judged
    before the failure or after it, whole. Redelivered, it closes nothing more."""
    shipments = session.exec(locked(session, select(Shipment).where(Shipment.order_id == order_id))).all()
    closed = [
        shipment
        for shipment in shipments
        if domain.closes_on_lot_failure(
            shipment.leg, shipment.status, shipment.product_released_at is not None
        )
    ]
    for shipment in closed:
        shipment.lot_failed_at = failed_at
        shipment.status = ShipmentStatus.CANCELLED
        session.add(shipment)
    log.info("shipments.lot_failed", order_id=str(order_id), closed=len(closed))
    return closed


def visible_shipment(
    session: Session, shipment_id: UUID, site_scope: str | None, company_scope: str | None
) -> Shipment | None:
    """The shipment, if it exists and the caller may read it; else None, the same for both."""
    shipment = session.get(Shipment, shipment_id)
    if shipment is None or not domain.shipment_visible_to(
        site_scope, company_scope, shipment.treatment_center_id, shipment.courier_company
    ):
        return None
    return shipment


def find_shipments(
    session: Session,
    site_scope: str | None,
    company_scope: str | None,
    wanted: ShipmentFilter,
    page: PageRequest = FIRST_PAGE,
) -> tuple[list[Shipment], str | None]:
    """One page of shipments, oldest first, within the caller's scope and every filter given, and the next
    page's cursor: a scoped caller filtering on another site or company gets none, as if it had none."""
    query = select(Shipment)
    if site_scope is not None:
        query = query.where(Shipment.treatment_center_id == site_scope)
    if company_scope is not None:
        query = query.where(Shipment.courier_company == company_scope)
    for column, value in (
        (Shipment.coi, wanted.coi),
        (Shipment.treatment_center_id, wanted.treatment_center_id),
        (Shipment.courier_company, wanted.courier_company),
        (Shipment.leg, wanted.leg),
        (Shipment.status, wanted.status),
    ):
        if value is not None:
            query = query.where(column == value)
    return page_of(session, query, Shipment, page)


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
    epcis_event_hash: str | None = None


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
    """The courier registry's company for `party`, or None. Asked once per party and transaction: a batch
    of scans by one unknown party would otherwise query (and autoflush) for every scan."""
    companies: dict[str, str | None] = transaction_cache(session, "courier_companies")
    if party not in companies:
        courier = session.get(Courier, party)
        companies[party] = courier.company if courier is not None else None
    return companies[party]


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
    session: Session,
    shipment: Shipment,
    *,
    reason: str,
    codes: Sequence[QuarantineReasonCode],
    location: str,
    correlation_id: str,
) -> list[EventEnvelope]:
    """Quarantine at once: the status, a ledger entry, and the event that tells everyone (I1, I2). The
    reason's sentences stay with the shipment; the event carries their codes (I6)."""
    at = enter_quarantine(session, shipment, reason=reason, location=location)
    return [translate.shipment_quarantined(shipment, codes, at, correlation_id)]


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
    unit_of_work(session).write()  # this transaction's own scans count too
    return session.exec(
        select(ScanRecord)
        .where(ScanRecord.shipment_id == shipment.id)
        .where(ScanRecord.content_sha256 == digest)
    ).first()


def _repeated(shipment: Shipment, earlier: ScanRecord) -> ScanOutcome:
    log.info("scan.repeated", shipment_id=str(shipment.id), scan_id=str(earlier.id))
    return _outcome(
        shipment, earlier.id, earlier.accepted, earlier.refusal_reason, earlier.coi_verified, repeated=True
    )


def _outcome(
    shipment: Shipment,
    scan_id: UUID,
    accepted: bool,
    refusal_reason: str | None,
    coi_verified: bool,
    *,
    repeated: bool = False,
) -> ScanOutcome:
    """What the sender of a scan is told: the scan's verdict and the shipment as it now is."""
    return ScanOutcome(
        scan_id=scan_id,
        accepted=accepted,
        refusal_reason=refusal_reason,
        coi_verified=coi_verified,
        shipment_status=shipment.status,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
        quarantine_reason=shipment.quarantine_reason,
        repeated=repeated,
    )


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
        order_cancelled=shipment.order_cancelled_at is not None,
        lot_failed=shipment.lot_failed_at is not None,
        leg=shipment.leg,
        product_released=shipment.product_released_at is not None,
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
    looked up its `facts` (`locked_with_facts`, once for all the shipments of a group or a document). The
    same scan sent again is answered with the first one's outcome and changes nothing."""
    digest = scan_content_sha256(shipment.id, scan, actor.subject)
    earlier = _earlier_scan(session, shipment, scan, digest)
    if earlier is not None:
        return _repeated(shipment, earlier)
    received_at = utc_now()
    decision = domain.evaluate_scan(
        scan_state(session, shipment, facts), judged_scan(session, shipment, scan, actor, received_at)
    )
    recorded = store_scan(session, shipment, scan, actor, decision, received_at, digest)
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
    return _outcome(
        shipment, recorded.scan_id, decision.accepted, decision.refusal_reason, not decision.coi_break
    )


def store_scan(
    session: Session,
    shipment: Shipment,
    scan: ScanInput,
    actor: Actor,
    decision: domain.ScanDecision,
    received_at: datetime,
    digest: str,
) -> translate.ScanRecorded:
    """The scan's row in the scan ledger, accepted or refused, written with the transaction."""
    scan_id = new_uuid()
    unit_of_work(session).append(
        ScanRow(
            id=scan_id,
            shipment_id=shipment.id,
            scan_type=scan.scan_type,
            bag_cois=json.dumps(list(scan.bag_cois)),
            container_id=scan.container_id,
            seal_id=scan.seal_id,
            location=scan.location,
            scanned_by=actor.subject,
            handed_to=scan.handed_to,
            device_time=scan.device_time,
            received_at=received_at,
            temperature_celsius=scan.temperature_celsius,
            accepted=decision.accepted,
            refusal_reason=decision.refusal_reason,
            coi_verified=not decision.coi_break,
            epcis_event_id=scan.epcis_event_id,
            epcis_event_hash=scan.epcis_event_hash,
            content_sha256=digest,
        )
    )
    if shipment.last_scan_device_time is None or scan.device_time > shipment.last_scan_device_time:
        shipment.last_scan_device_time = scan.device_time
    return translate.ScanRecorded(
        scan_id=scan_id,
        scan_type=scan.scan_type,
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
    uow = unit_of_work(session)
    for reading in readings:
        uow.append(
            ReadingRow(shipment_id=shipment.id, read_at=reading.at, celsius=reading.celsius, source=source)
        )
        if shipment.max_temperature_celsius is None or reading.celsius > shipment.max_temperature_celsius:
            shipment.max_temperature_celsius = reading.celsius


@dataclass(frozen=True)
class ReadingsOutcome:
    stored: int
    excursions: list[str]
    quarantined: bool


def record_readings(
    session: Session,
    shipment: Shipment,
    readings: Sequence[Reading | TemperatureEvidence],
    source: str,
    correlation_id: str,
    *,
    location: str = "data logger",
    after_stored: bool = True,
) -> ReadingsOutcome:
    """Store temperature readings, each at its own time, and quarantine on any problem the domain finds:
    out of range, a gap, past hold or transit time, a sensor alarm, a reading that cannot be proven cold.
    `after_stored`: the gap check starts from the shipment's last stored logger reading (a logger batch);
    EPCIS sensor reports are judged on their own (they are not the logger's complete record)."""
    previous = None
    if after_stored:
        unit_of_work(session).write()  # an earlier batch of this transaction counts for the gap check
        previous = session.exec(
            select(TemperatureReading.read_at)
            .where(TemperatureReading.shipment_id == shipment.id)
            .where(TemperatureReading.source != "scan")
            .order_by(col(TemperatureReading.read_at).desc())
        ).first()
    evidence = [
        r if isinstance(r, TemperatureEvidence) else TemperatureEvidence(r.at, value=r.celsius)
        for r in readings
    ]
    judged = domain.judge_evidence(
        policy_of(session, shipment), evidence, received_at=utc_now(), previous_reading_at=previous
    )
    _store_readings(session, shipment, judged.readings, source)
    events: list[EventEnvelope] = []
    if judged.problems:
        if judged.readings:
            worst = max(judged.readings, key=lambda r: r.celsius)
            events.append(translate.temperature_excursion(shipment, worst, correlation_id))
        problems = judged.problems
        reason = (
            "temperature excursion: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
        events.extend(
            quarantine(
                session,
                shipment,
                reason=reason,
                codes=domain.codes_of(problems),
                location=location,
                correlation_id=correlation_id,
            )
        )
    session.add(shipment)
    _emit(session, events)
    return ReadingsOutcome(
        stored=len(judged.readings),
        excursions=judged.problems,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
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


class InvalidField(Exception):
    """A request field the rules refuse (HTTP 422 naming the field), such as a reason its decision cannot
    give; the detail never repeats the value."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


def record_disposition(
    session: Session,
    shipment: Shipment,
    *,
    decision: Disposition,
    reason_code: QaReasonCode,
    note: str | None,
    meaning: SignatureMeaning,
    signer: Actor,
    signing_pin: str,
    correlation_id: str,
) -> QaDisposition:
    """A QA release or rejection, signed with the signer's PIN (SigningRefused, counted, when it is not
    theirs) and chained into the ledger. Only a release lets a quarantined shipment go on to delivery
    confirmation: if it is already delivered, the delivery is published now. The PIN goes nowhere else;
    the note stays with the disposition and its ledger entry, the events carry the code (I6). A reason
    the decision cannot give is `InvalidField`, before the PIN is tried."""
    problem = domain.disposition_reason_problem(decision, reason_code)
    if problem is not None:
        raise InvalidField("reason_code", problem)
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
        reason=domain.qa_ledger_reason(reason_code, note),
    )
    disposition = QaDisposition(
        shipment_id=shipment.id,
        decision=decision.value,
        reason_code=reason_code.value,
        reason=note or "",
        meaning=meaning.value,
        signer_id=signer.subject,
        signer_printed_name=signer.printed_name,
        signed_at=signed_at,
        ledger_sequence=entry.content.sequence,
    )
    session.add(disposition)
    data = QaDispositionDataV2(
        shipment_id=shipment.id,
        coi=shipment.coi,
        leg=shipment.leg,
        treatment_center_id=shipment.treatment_center_id,
        disposition_id=disposition.id,
        signer_id=signer.subject,
        signer_printed_name=signer.printed_name,
        signed_at=signed_at,
        meaning=meaning.value,
        reason_code=reason_code,
        ledger_sequence=entry.content.sequence,
    )
    envelope = translate.envelope(shipment, correlation_id)
    events: list[EventEnvelope] = []
    if decision is Disposition.RELEASE:
        shipment.status = ShipmentStatus.RELEASED
        events.append(ShipmentReleasedV2(**envelope, data=data))
        if shipment.physical_status in (ShipmentStatus.DELIVERED, ShipmentStatus.RECEIVED):
            events.append(translate.shipment_delivered(shipment, correlation_id, disposition.id))
    else:
        shipment.status = ShipmentStatus.REJECTED
        events.append(ShipmentRejectedV2(**envelope, data=data))
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
    """applied, duplicate, refused or not_applied"""
    reason: str | None = None
    shipment_id: UUID | None = None
    scan: ScanOutcome | None = None


@dataclass(frozen=True)
class StoredEvent:
    """An EPCIS event captured before: as a scan (`scan_id`) or as another kind of event."""

    event_hash: str | None
    shipment_id: UUID
    scan_id: UUID | None
    retracted: bool


@dataclass
class CaptureContext:
    """What the events of one capture share while they are applied in order."""

    actor: Actor
    actor_company: str | None
    correlation_id: str
    shipments: dict[UUID, Shipment]
    facts: dict[UUID, ShipmentFacts]
    stored: dict[str, StoredEvent]
    """By eventID: captured before, or earlier in this document."""
    apply_scans: bool = True
    """False: a rolled-back document, of which only temperatures and conflicts are still judged."""


def capture(
    session: Session,
    outcomes: list[epcis.Outcome],
    actor: Actor,
    actor_company: str | None,
    *,
    rollback_on_error: bool,
    correlation_id: str,
) -> list[CaptureResult]:
    """Apply captured EPCIS events in `eventTime` order (ties in document order), each judged on the
    shipments as the events before it left them. With rollback (the standard's default), one refused event
    means no event is applied — but every temperature is still judged and every conflict still put before
    QA (I2: nothing warm is lost); with proceed, the others are applied. The session's transaction is rolled
    back for that, so the caller passes a session with nothing else pending."""
    ordered = sorted(outcomes, key=lambda o: (isinstance(o, epcis.CapturedEvent), _time_of(o)))
    context = _capture_context(session, ordered, actor, actor_company, correlation_id)
    results = [_apply_event(session, outcome, context) for outcome in ordered]
    if rollback_on_error and any(r.outcome == "refused" for r in results):
        session.rollback()
        context = _capture_context(session, ordered, actor, actor_company, correlation_id)
        context.apply_scans = False
        kept = {r.event_index: r for r in results}
        results = [_rolled_back(kept[o.event_index], _apply_event(session, o, context)) for o in ordered]
    return sorted(results, key=lambda r: r.event_index)


def _time_of(outcome: epcis.Outcome) -> datetime:
    return (
        outcome.event_time if isinstance(outcome, epcis.CapturedEvent) else datetime.min.replace(tzinfo=UTC)
    )


def _rolled_back(first: CaptureResult, safety: CaptureResult) -> CaptureResult:
    if first.outcome in ("refused", "duplicate"):
        return first
    judged = "; its temperatures were judged all the same" if safety.reason == READINGS_JUDGED else ""
    reason = f"another event of the document was refused (rollback){judged}"
    return CaptureResult(first.event_index, first.event_id, "not_applied", reason, first.shipment_id)


def _capture_context(
    session: Session,
    events: list[epcis.Outcome],
    actor: Actor,
    actor_company: str | None,
    correlation_id: str,
) -> CaptureContext:
    """Every shipment the document could touch, locked at once in id order (`locked_with_facts`), and the
    events of it captured before."""
    captured = [e for e in events if isinstance(e, epcis.CapturedEvent)]
    stored = _stored_events(session, {e.event_id for e in captured if e.event_id})
    ids = {s.shipment_id for s in stored.values()} | _named_shipments(session, captured)
    shipments, facts = locked_with_facts(session, ids)
    return CaptureContext(actor, actor_company, correlation_id, shipments, facts, stored)


def _stored_events(session: Session, event_ids: set[str]) -> dict[str, StoredEvent]:
    if not event_ids:
        return {}
    found: dict[str, StoredEvent] = {}
    scans = select(ScanRecord).where(col(ScanRecord.epcis_event_id).in_(event_ids))
    for scan in session.exec(scans):
        assert scan.epcis_event_id is not None
        found[scan.epcis_event_id] = StoredEvent(
            scan.epcis_event_hash, scan.shipment_id, scan.id, scan.retracted_at is not None
        )
    others = select(EpcisEventRecord).where(col(EpcisEventRecord.event_id).in_(event_ids))
    for row in session.exec(others):
        found[row.event_id] = StoredEvent(row.event_hash, row.shipment_id, None, row.retracted_at is not None)
    return found


def _named_shipments(session: Session, events: list[epcis.CapturedEvent]) -> set[UUID]:
    """The shipments the events name: by id, by their bags' COI, by their container."""
    ids = {UUID(e.shipment_ref) for e in events if e.shipment_ref}
    cois = {coi for e in events for coi in e.cois}
    containers = {e.container_id for e in events if e.container_id}
    if cois:
        ids |= set(session.exec(select(Shipment.id).where(col(Shipment.coi).in_(cois))).all())
    if containers:
        query = select(Container.shipment_id).where(col(Container.id).in_(containers))
        ids |= set(session.exec(query).all())
    return ids


READINGS_JUDGED = "temperatures judged"
_OPEN = (
    ShipmentStatus.PLANNED,
    ShipmentStatus.DISPATCHED,
    ShipmentStatus.IN_TRANSIT,
    ShipmentStatus.DELIVERED,
)
_MOVING = (ShipmentStatus.DISPATCHED, ShipmentStatus.IN_TRANSIT)


def _target(
    event: epcis.CapturedEvent, context: CaptureContext, scan_type: ScanType | None
) -> Shipment | str:
    """The shipment an event is about, as the events before it left them, or why it cannot be told: the
    one it names by id, else the one its bags identify (for a scan: the one that can take it now; for
    readings: the one open, preferring the one moving), else the one its parentID is the container of."""
    if event.shipment_ref is not None:
        shipment = context.shipments.get(UUID(event.shipment_ref))
        if shipment is None:
            return f"bizTransaction names shipment {event.shipment_ref}, which does not exist"
        return _assigned(shipment, context)
    if event.cois:
        named = [s for s in context.shipments.values() if s.coi in event.cois]
        what = f"COI {', '.join(sorted(set(event.cois)))}"
    else:
        named = [
            s
            for s in context.shipments.values()
            if (found := context.facts[s.id].container) is not None and found.id == event.container_id
        ]
        what = f"container {event.container_id}"
    if scan_type is not None:
        candidates = [s for s in named if s.physical_status in domain.ALLOWED_FROM[scan_type]]
        wanted = f"can take a {scan_type} scan now"
    else:
        candidates = [s for s in named if s.physical_status in _OPEN]
        moving = [s for s in candidates if s.physical_status in _MOVING]
        candidates = moving if len(moving) == 1 else candidates
        wanted = "is on its way"
    if len(candidates) != 1:
        found_count = "no shipment" if not candidates else f"{len(candidates)} shipments"
        return (
            f"{found_count} with {what} {wanted}: name the shipment as bizTransaction urn:uuid:<shipment id>"
        )
    return _assigned(candidates[0], context)


def _assigned(shipment: Shipment, context: CaptureContext) -> Shipment | str:
    refusal = domain.other_company_refusal(shipment.courier_company, context.actor_company)
    if refusal is not None:
        return refusal
    return shipment


def _apply_event(session: Session, event: epcis.Outcome, context: CaptureContext) -> CaptureResult:
    """One event: refused, a duplicate, a conflict, a retraction, or its readings then what it is."""
    if isinstance(event, epcis.RefusedEvent):
        return CaptureResult(event.event_index, event.event_id, "refused", event.reason)
    if event.kind is epcis.EventKind.RETRACTION:
        return _retract(session, event, context)
    stored = context.stored.get(event.event_id) if event.event_id else None
    replay = domain.replay_of(stored.event_hash if stored else None, stored is not None, event.event_hash)
    if replay is domain.Replay.DUPLICATE:
        return CaptureResult(
            event.event_index, event.event_id, "duplicate", "this eventID was captured before"
        )
    if replay is domain.Replay.CONFLICT:
        assert stored is not None
        _judge_temperatures(session, event, _target(event, context, None), context)
        return _conflict(session, event, stored, context)
    scan_type = event.scan_type if context.apply_scans and event.refusal is None else None
    target = _target(event, context, scan_type)
    if isinstance(target, str) and scan_type is not None:
        judged = _target(event, context, None)  # the scan cannot be placed; its readings still can
        _judge_temperatures(session, event, judged, context)
        return CaptureResult(event.event_index, event.event_id, "refused", target)
    judged_any = _judge_temperatures(session, event, target, context)
    if event.refusal is not None:
        reason = event.refusal + ("; its temperatures were judged" if judged_any else "")
        named = target.id if not isinstance(target, str) else None
        return CaptureResult(event.event_index, event.event_id, "refused", reason, named)
    if isinstance(target, str):
        return CaptureResult(event.event_index, event.event_id, "refused", target)
    if not context.apply_scans:
        note = READINGS_JUDGED if judged_any else None
        return CaptureResult(event.event_index, event.event_id, "applied", note, target.id)
    if event.kind is epcis.EventKind.SCAN:
        return _apply_scan(session, event, target, context)
    return _apply_other(session, event, target, context, judged_any)


def _judge_temperatures(
    session: Session, event: epcis.CapturedEvent, target: Shipment | str, context: CaptureContext
) -> bool:
    if isinstance(target, str) or not event.temperatures:
        return False
    record_readings(
        session,
        target,
        list(event.temperatures),
        "epcis",
        context.correlation_id,
        location=event.location or "EPCIS sensor report",
        after_stored=False,
    )
    return True


def _apply_scan(
    session: Session, event: epcis.CapturedEvent, shipment: Shipment, context: CaptureContext
) -> CaptureResult:
    assert event.scan_type is not None and event.location is not None
    scan = ScanInput(
        scan_type=event.scan_type,
        bag_cois=event.cois,
        location=event.location,
        device_time=event.event_time,
        eta_at=event.event_time + EPCIS_PLANNED_TRANSIT
        if event.scan_type in (ScanType.PICK_UP, ScanType.DELAY)
        else None,
        epcis_event_id=event.event_id,
        epcis_event_hash=event.event_hash,
    )
    applied = record_scan(
        session, shipment, scan, context.actor, context.correlation_id, context.facts[shipment.id]
    )
    if event.event_id:
        context.stored[event.event_id] = StoredEvent(event.event_hash, shipment.id, applied.scan_id, False)
    if applied.repeated:  # the same scan under a new eventID (a courier system's retry): stored once
        return CaptureResult(
            event.event_index,
            event.event_id,
            "duplicate",
            f"the same scan was recorded before (scan {applied.scan_id})",
            shipment.id,
            applied,
        )
    return CaptureResult(
        event.event_index, event.event_id, "applied", applied.refusal_reason, shipment.id, applied
    )


def _apply_other(
    session: Session, event: epcis.CapturedEvent, shipment: Shipment, context: CaptureContext, judged: bool
) -> CaptureResult:
    """Readings (already judged) and an aggregation: bags packed into another container than the declared
    one is a COI break (domain.packing_problems)."""
    count = len(event.temperatures)
    notes = [f"{count} temperature report{'' if count == 1 else 's'} judged" if judged else "no temperatures"]
    if event.kind is epcis.EventKind.AGGREGATION and event.action == "ADD":
        container = context.facts[shipment.id].container
        declared = container.id if container is not None and container.charged_at is not None else None
        problems = domain.packing_problems(declared, event.container_id)
        notes.append(f"bags packed into {event.container_id}")
        if problems:
            reason = "COI break: " + "; ".join(problems)
            _to_qa(session, shipment, reason, domain.codes_of(problems), event.location, context)
    if event.event_id:
        session.add(
            EpcisEventRecord(
                event_id=event.event_id,
                event_hash=event.event_hash,
                kind=event.kind.value,
                shipment_id=shipment.id,
            )
        )
        context.stored[event.event_id] = StoredEvent(event.event_hash, shipment.id, None, False)
    return CaptureResult(
        event.event_index, event.event_id, "applied", f"{event.kind.value}: " + "; ".join(notes), shipment.id
    )


def _conflict(
    session: Session, event: epcis.CapturedEvent, stored: StoredEvent, context: CaptureContext
) -> CaptureResult:
    """The same eventID with other content: refused, and the shipment of the first one put before QA."""
    assert event.event_id is not None
    reason = domain.conflict_reason(event.event_id)
    shipment = context.shipments.get(stored.shipment_id)
    if shipment is not None:
        _to_qa(session, shipment, reason, domain.codes_of([reason]), event.location, context)
    return CaptureResult(event.event_index, event.event_id, "refused", reason, stored.shipment_id)


def _retract(session: Session, event: epcis.CapturedEvent, context: CaptureContext) -> CaptureResult:
    """An error declaration: the event it declares (its own eventID, §7.4.1.4; else the same event hash)
    is marked retracted, and its shipment goes to QA review. Neither applied silently nor ignored."""
    stored = context.stored.get(event.event_id) if event.event_id else None
    named = event.event_id or event.event_hash
    if stored is None and event.event_id is None:
        stored = _stored_by_hash(session, event.event_hash)
    if stored is None:
        reason = f"the errorDeclaration names event {named}, which was never captured"
        return CaptureResult(event.event_index, event.event_id, "refused", reason)
    if stored.retracted:
        return CaptureResult(
            event.event_index, event.event_id, "duplicate", "that event is retracted already"
        )
    if not context.apply_scans:
        return CaptureResult(event.event_index, event.event_id, "applied", None, stored.shipment_id)
    reason = domain.retraction_reason(named, event.declared_reason)
    unit_of_work(session).write()  # the declared scan may be of this very document
    row: ScanRecord | EpcisEventRecord | None = (
        session.get(ScanRecord, stored.scan_id) if stored.scan_id else session.get(EpcisEventRecord, named)
    )
    if row is not None:
        row.retracted_at = utc_now()
        if isinstance(row, ScanRecord):
            row.retraction_reason = reason
        session.add(row)
    shipment = context.shipments.get(stored.shipment_id)
    if shipment is not None:
        _to_qa(session, shipment, reason, domain.codes_of([reason]), event.location, context)
    if event.event_id:
        context.stored[event.event_id] = replace(stored, retracted=True)
    return CaptureResult(event.event_index, event.event_id, "applied", reason, stored.shipment_id)


def _stored_by_hash(session: Session, event_hash: str) -> StoredEvent | None:
    scan = session.exec(select(ScanRecord).where(ScanRecord.epcis_event_hash == event_hash)).first()
    if scan is not None:
        return StoredEvent(event_hash, scan.shipment_id, scan.id, scan.retracted_at is not None)
    other = session.exec(select(EpcisEventRecord).where(EpcisEventRecord.event_hash == event_hash)).first()
    if other is not None:
        return StoredEvent(event_hash, other.shipment_id, None, other.retracted_at is not None)
    return None


def _to_qa(
    session: Session,
    shipment: Shipment,
    reason: str,
    codes: Sequence[QuarantineReasonCode],
    location: str | None,
    context: CaptureContext,
) -> None:
    """Quarantine with the reason (QA reviews it); a shipment QA rejected stays rejected."""
    if shipment.status is ShipmentStatus.REJECTED:
        return
    events = quarantine(
        session,
        shipment,
        reason=reason,
        codes=codes,
        location=location or "EPCIS capture",
        correlation_id=context.correlation_id,
    )
    session.add(shipment)
    _emit(session, events)
