"""Order intake's use cases — placing an order, cancelling it, recording its collections, its steps and
its product's release, following the shipment and scheduling events — each inside the caller's
transaction with the events it causes (outbox). The one path of the HTTP routes and the Kafka
subscribers: load, ask the domain, apply, enqueue. The caller commits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from uuid import UUID, uuid4

import structlog
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import (
    CancellationReasonCode,
    CollectionRecorded,
    CollectionRecordedData,
    ManufacturingDelayCode,
    ManufacturingDelayed,
    ManufacturingDelayedData,
    ManufacturingFailed,
    ManufacturingFailedData,
    ManufacturingFailureCode,
    ManufacturingStarted,
    ManufacturingStartedData,
    OosDocument,
    OosFileCompleted,
    OosFileCompletedData,
    OrderAcceptedDataV2,
    OrderAcceptedV2,
    OrderCancelledDataV2,
    OrderCancelledV2,
    OrderRejectedDataV2,
    OrderRejectedV2,
    OutOfSpecificationCode,
    PayerAuthorizationRenewed,
    PayerAuthorizationRenewedData,
    ProductReleasedForShipmentDataV2,
    ProductReleasedForShipmentV2,
    QualificationWindow,
    RejectionReason,
    SiteQualificationChanged,
    SiteQualificationChangedData,
)
from cryptography.fernet import MultiFernet
from sqlalchemy import or_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.common.db import lock_for_writing, locked
from services.common.identifiers import coi_identifier, din
from services.common.outbox import enqueue
from services.common.paging import FIRST_PAGE, PageRequest, page_of
from services.common.topics import ORDER_INTAKE_SOURCE, ORDERS
from services.order_intake import domain
from services.order_intake.domain import OrderStatus, Way
from services.order_intake.models import (
    ONE_ACTIVE_ORDER_PER_PATIENT_AND_THERAPY,
    CoiSequence,
    Collection,
    DinCounter,
    ManufacturingDelay,
    ManufacturingFailure,
    OosFile,
    Order,
    OrderTransition,
    PatientRecord,
    Prescriber,
    PrescriberSite,
    SiteCertification,
    Therapy,
    TreatmentCenter,
)

SOURCE = ORDER_INTAKE_SOURCE
log = structlog.get_logger()


class OrderNotFound(Exception):
    """No such order — or one the caller may not see, which must look exactly the same (HTTP 404)."""

    def __init__(self) -> None:
        super().__init__("no such order")


class NotPermitted(Exception):
    """The caller may not act for the site it names (HTTP 403)."""


class Refused(Exception):
    """A command the order's state or its rules refuse (HTTP 409), with the reason."""


class InvalidField(Exception):
    """A field whose value a rule refuses (HTTP 422 naming it): `field` is its path in the order, e.g.
    `patient/date_of_birth`; the message never repeats the value."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


@dataclass(frozen=True)
class Caller:
    """Who acts: recorded as the actor; `site_scope` is a treatment center's own site (None: every site)."""

    subject: str
    site_scope: str | None = None


@dataclass(frozen=True)
class Issuer:
    """The service's own identity for identifiers, and the key of the patients' identities."""

    fin: str
    """ISBT 128 facility number: COI identifiers, and the DINs of a site without a FIN of its own."""
    phi_keys: MultiFernet = field(repr=False)
    """The PHI key ring: the newest key encrypts a patient's identity, every key decrypts (rotation)."""
    patient_match_key: bytes = field(repr=False)
    """HMAC key of `domain.patient_match`: the same patient found under any `patient_ref`."""


@dataclass(frozen=True)
class PatientIdentity:
    """Identifying data: stored encrypted in order intake only, never published or logged."""

    name: str
    date_of_birth: date
    medical_record_number: str

    def as_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "date_of_birth": self.date_of_birth.isoformat(),
                "medical_record_number": self.medical_record_number,
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class NewOrder:
    """A therapy order as placed; missing consent, authorization or attestation reject it (with reasons)."""

    patient_ref: str
    patient: PatientIdentity
    therapy_code: str
    treatment_center_id: str
    prescriber_npi: str
    consent_signed_on: date | None = None
    consent_form_version: str | None = None
    payer_authorization_reference: str | None = None
    payer_authorization_expires_on: date | None = None
    eligibility_attested: bool = False
    stated_ordered_on: date | None = None
    """The clinical order date the caller states: recorded, never used by a check (the server's is)."""


@dataclass(frozen=True)
class OrderFilter:
    """What a list of orders is narrowed to; every filter given is applied (None: not filtered)."""

    coi: str | None = None
    treatment_center_id: str | None = None
    status: OrderStatus | None = None
    patient_ref: str | None = None


@dataclass(frozen=True)
class RecordedCollection:
    collection: Collection
    coi: str
    """The order's chain-of-identity identifier, which the collection's DIN is linked to."""


# ---------------------------------------------------------------- reading orders, scoped


def visible_order(session: Session, order_id: UUID, scope: str | None) -> Order:
    """The order, if it exists and the caller's scope covers its site; else `OrderNotFound`, the same
    for both, so a site-scoped caller learns nothing of another site's orders."""
    order = session.get(Order, order_id)
    if order is None or not domain.visible_to(scope, order.treatment_center_id):
        raise OrderNotFound
    return order


def find_orders(
    session: Session, scope: str | None, wanted: OrderFilter, page: PageRequest = FIRST_PAGE
) -> tuple[list[Order], str | None]:
    """One page of orders, oldest first, within the caller's scope and every filter given, and the next
    page's cursor: a scoped caller filtering on another site gets no orders, as if that site had none."""
    query = select(Order)
    if scope is not None:
        query = query.where(Order.treatment_center_id == scope)
    if wanted.treatment_center_id is not None:
        query = query.where(Order.treatment_center_id == wanted.treatment_center_id)
    if wanted.coi is not None:
        query = query.where(Order.coi == wanted.coi)
    if wanted.status is not None:
        query = query.where(Order.status == wanted.status)
    if wanted.patient_ref is not None:
        query = query.where(Order.patient_ref == wanted.patient_ref)
    return page_of(session, query, Order, page)


def history_of(session: Session, order: Order) -> list[OrderTransition]:
    return list(
        session.exec(
            select(OrderTransition)
            .where(OrderTransition.order_id == order.id)
            .order_by(col(OrderTransition.id))
        )
    )


def collections_of(session: Session, order: Order) -> list[Collection]:
    return list(
        session.exec(
            select(Collection).where(Collection.order_id == order.id).order_by(col(Collection.number))
        )
    )


# ---------------------------------------------------------------- the state machine, applied


def lock_order(session: Session, order: Order) -> None:
    """Lock a stored order's row and read it again (`locked`), so that a change is judged on the order as
    it is now: a coordinator's cancellation and a delivery event arriving at the same moment are applied
    one after the other, never both from the same stale status."""
    if order in session.new:  # not stored yet: nobody else can change it
        return
    session.flush()  # this transaction's own changes first: the order is read back below
    session.exec(locked(session, select(Order).where(col(Order.id) == order.id))).one()


def record_transition(
    session: Session,
    order: Order,
    target: OrderStatus,
    way: Way,
    actor: str,
    cause_event_id: str | None = None,
) -> None:
    """Move the order the way given, refusing what the state machine forbids, and keep the history."""
    lock_order(session, order)
    domain.check_transition(order.status, target, way)
    session.add(
        OrderTransition(
            order_id=order.id,
            from_status=order.status,
            to_status=target,
            actor=actor,
            cause_event_id=cause_event_id,
        )
    )
    order.status = target
    session.add(order)


def _move(session: Session, order: Order, target: OrderStatus, way: Way, actor: str) -> None:
    """`record_transition` for a person's command: a refusal is the command's (409)."""
    try:
        record_transition(session, order, target, way, actor)
    except domain.TransitionRefused as refused:
        raise Refused(str(refused)) from refused


def _locked_order(session: Session, order_id: UUID, scope: str | None) -> Order:
    """The order the caller may see, locked and read as it is now (a cancellation may have just
    committed)."""
    order = visible_order(session, order_id, scope)
    lock_order(session, order)
    return order


# ---------------------------------------------------------------- placing an order


def _gather_facts(session: Session, new: NewOrder, ordered_on: date) -> domain.OrderFacts:
    therapy = session.get(Therapy, new.therapy_code)
    site = session.get(TreatmentCenter, new.treatment_center_id)
    certifications = qualifications_of(session, new.treatment_center_id, new.therapy_code)
    prescriber_site = session.get(PrescriberSite, (new.prescriber_npi, new.treatment_center_id))
    return domain.OrderFacts(
        order_date=ordered_on,
        therapy_known=therapy is not None,
        site_known=site is not None,
        certifications=tuple((w.effective_on, w.expires_on) for w in certifications),
        prescriber_npi=new.prescriber_npi,
        prescriber_known=session.get(Prescriber, new.prescriber_npi) is not None,
        prescriber_may_order_for_site=prescriber_site is not None,
        consent_signed_on=new.consent_signed_on,
        consent_form_version=new.consent_form_version,
        payer_authorization_expires_on=new.payer_authorization_expires_on,
        eligibility_attested=new.eligibility_attested,
    )


def _refuse_a_second_active_order(session: Session, new: NewOrder, match: str) -> None:
    """`Refused` if the patient (by `patient_ref` or by the keyed match of their identity) already has an
    active order for the therapy. Two placed at the same moment both pass here: the unique index on the
    match of active orders refuses the second insert (`_submitted`). SQLite: the write lock first, so
    that the second placement reads the first one committed."""
    lock_for_writing(session)
    active = session.exec(
        select(Order.id)
        .where(or_(col(Order.patient_ref) == new.patient_ref, col(Order.patient_match) == match))
        .where(Order.therapy_code == new.therapy_code)
        .where(col(Order.status).in_(list(domain.ACTIVE)))
    ).first()
    if active is not None:
        raise Refused(domain.DUPLICATE_ACTIVE_ORDER)


def _is_second_active_order(error: IntegrityError) -> bool:
    message = str(error.orig)
    return ONE_ACTIVE_ORDER_PER_PATIENT_AND_THERAPY in message or "therapy_order.patient_match" in message


def _submitted(
    session: Session, new: NewOrder, ordered_on: date, match: str, actor: str, issuer: Issuer
) -> Order:
    """The order as submitted, its first history row and the patient's encrypted identity."""
    order = Order(
        patient_ref=new.patient_ref,
        therapy_code=new.therapy_code,
        treatment_center_id=new.treatment_center_id,
        prescriber_npi=new.prescriber_npi,
        consent_signed_on=new.consent_signed_on,
        consent_form_version=new.consent_form_version,
        payer_authorization_reference=new.payer_authorization_reference,
        payer_authorization_expires_on=new.payer_authorization_expires_on,
        eligibility_attested_by=actor if new.eligibility_attested else None,
        ordered_on=ordered_on,
        stated_ordered_on=new.stated_ordered_on,
        patient_match=match,
        created_by=actor,
    )
    try:
        with session.begin_nested():  # a refused insert leaves the caller's transaction usable
            session.add(order)
            session.flush()  # the order row first: its history and patient record refer to it
    except IntegrityError as error:
        if _is_second_active_order(error):
            raise Refused(domain.DUPLICATE_ACTIVE_ORDER) from None  # the error quotes the match
        raise
    session.add(
        OrderTransition(order_id=order.id, from_status=None, to_status=OrderStatus.SUBMITTED, actor=actor)
    )
    encrypted = issuer.phi_keys.encrypt(new.patient.as_json().encode()).decode()
    session.add(PatientRecord(order_id=order.id, encrypted_identity=encrypted))
    return order


def place_order(
    session: Session, new: NewOrder, caller: Caller, issuer: Issuer, correlation_id: str
) -> Order:
    """Check the order and record it accepted (with its COI identifier, `order.accepted.v2`) or rejected
    with every failed check (`order.rejected.v1`). A site-scoped caller orders only for its own site.
    Refused before anything is written: an impossible date of birth (`InvalidField`), a second active
    order for the same patient and therapy however their `patient_ref` is spelled (`Refused`)."""
    if not domain.visible_to(caller.site_scope, new.treatment_center_id):
        raise NotPermitted("a treatment center may order only for its own site")
    ordered_on = utc_now().date()  # the server's: a date the caller states never passes a check
    dob_refusal = domain.date_of_birth_refusal(new.patient.date_of_birth, ordered_on)
    if dob_refusal is not None:
        raise InvalidField("patient/date_of_birth", dob_refusal)
    match = domain.patient_match(
        issuer.patient_match_key,
        new.patient.name,
        new.patient.date_of_birth,
        new.patient.medical_record_number,
    )
    _refuse_a_second_active_order(session, new, match)
    failures = domain.acceptance_failures(_gather_facts(session, new, ordered_on))
    order = _submitted(session, new, ordered_on, match, caller.subject, issuer)
    if failures:
        _reject(session, order, failures, caller.subject, correlation_id)
    else:
        _accept(session, order, issuer.fin, caller.subject, correlation_id)
    log.info("order.placed", order_id=str(order.id), status=order.status, coi=order.coi)
    return order


def _reject(
    session: Session, order: Order, failures: list[domain.Failure], actor: str, correlation_id: str
) -> None:
    """Rejected with every failed check: codes and messages with the order, the codes alone published."""
    reasons = [RejectionReason(code=f.code.value, message=f.message) for f in failures]
    order.rejection_reasons = json.dumps([reason.model_dump() for reason in reasons])
    record_transition(session, order, OrderStatus.REJECTED, Way.PLACEMENT, actor)
    data = OrderRejectedDataV2(
        order_id=order.id,
        patient_ref=order.patient_ref,
        therapy_code=order.therapy_code,
        treatment_center_id=order.treatment_center_id,
        reason_codes=[f.code for f in failures],
    )
    _publish(session, OrderRejectedV2(**_envelope(order_subject(order.id), correlation_id), data=data))


def _accept(session: Session, order: Order, fin: str, actor: str, correlation_id: str) -> None:
    therapy = session.get(Therapy, order.therapy_code)
    assert therapy is not None  # the acceptance checks found it
    sequence = CoiSequence(order_id=order.id)
    session.add(sequence)
    session.flush()
    assert sequence.id is not None
    order.coi = coi_identifier(fin, order.ordered_on.year, sequence.id)
    record_transition(session, order, OrderStatus.ACCEPTED, Way.PLACEMENT, actor)
    assert order.payer_authorization_expires_on is not None  # the acceptance checks found it
    data = OrderAcceptedDataV2(
        order_id=order.id,
        coi=order.coi,
        patient_ref=order.patient_ref,
        therapy_code=order.therapy_code,
        treatment_center_id=order.treatment_center_id,
        storage_limit_celsius=therapy.storage_limit_celsius,
        conditioning_days=therapy.conditioning_days,
        accepted_at=utc_now(),
        long_term_follow_up=therapy.long_term_follow_up,
        site_qualifications=qualifications_of(session, order.treatment_center_id, order.therapy_code),
        payer_authorization_expires_on=order.payer_authorization_expires_on,
    )
    _publish(session, OrderAcceptedV2(**_envelope(order.coi, correlation_id), data=data))


def qualifications_of(session: Session, site_id: str, therapy_code: str) -> list[QualificationWindow]:
    """The site's qualification windows for the therapy, earliest first: what scheduling checks again."""
    rows = session.exec(
        select(SiteCertification)
        .where(SiteCertification.treatment_center_id == site_id)
        .where(SiteCertification.therapy_code == therapy_code)
        .order_by(col(SiteCertification.effective_on), col(SiteCertification.id))
    ).all()
    return [QualificationWindow(effective_on=r.effective_on, expires_on=r.expires_on) for r in rows]


def qualifications_changed(session: Session, site_id: str, therapy_code: str, correlation_id: str) -> int:
    """The site's windows for the therapy changed (the caller wrote them in this transaction): every
    order there whose chain still runs (`domain.RENEWABLE`) is told the whole new list, one
    `site.qualification_changed.v1` per order keyed by its COI (after its `order.accepted`). Returns how
    many were told."""
    session.flush()
    windows = qualifications_of(session, site_id, therapy_code)
    orders = session.exec(
        select(Order)
        .where(Order.treatment_center_id == site_id)
        .where(Order.therapy_code == therapy_code)
        .where(col(Order.coi).is_not(None))
        .where(col(Order.status).in_(sorted(domain.RENEWABLE)))
        .order_by(col(Order.created_at))
    ).all()
    changed_at = utc_now()
    for order in orders:
        assert order.coi is not None
        data = SiteQualificationChangedData(
            order_id=order.id,
            coi=order.coi,
            treatment_center_id=site_id,
            therapy_code=therapy_code,
            site_qualifications=windows,
            changed_at=changed_at,
        )
        _publish(session, SiteQualificationChanged(**_envelope(order.coi, correlation_id), data=data))
    log.info("registry.qualifications_changed", treatment_center_id=site_id, orders_told=len(orders))
    return len(orders)


def replace_qualifications(
    session: Session,
    site_id: str,
    therapy_code: str,
    windows: list[QualificationWindow],
    correlation_id: str,
) -> None:
    """The site's qualification windows for the therapy, replaced whole (none: withdrawn); the orders
    there are told (`qualifications_changed`). The caller checked the site and the therapy exist."""
    for row in session.exec(
        select(SiteCertification)
        .where(SiteCertification.treatment_center_id == site_id)
        .where(SiteCertification.therapy_code == therapy_code)
    ).all():
        session.delete(row)
    session.flush()
    for window in windows:
        session.add(
            SiteCertification(
                treatment_center_id=site_id,
                therapy_code=therapy_code,
                effective_on=window.effective_on,
                expires_on=window.expires_on,
            )
        )
    qualifications_changed(session, site_id, therapy_code, correlation_id)


def renew_payer_authorization(
    session: Session,
    order_id: UUID,
    reference: str,
    expires_on: date,
    caller: Caller,
    correlation_id: str,
) -> Order:
    """A renewed payer authorization for the order (`domain.payer_authorization_renewal_refusal`): its
    reference and last day replace the ones on file; `order.payer_authorization_renewed.v1` carries the
    date only (the reference stays here), so that scheduling lets a chain held for it go on."""
    order = _locked_order(session, order_id, caller.site_scope)
    refusal = domain.payer_authorization_renewal_refusal(order.status, expires_on, utc_now().date())
    if refusal is not None:
        if refusal.field is not None:
            raise InvalidField(refusal.field, refusal.detail)
        raise Refused(refusal.detail)
    assert order.coi is not None  # an accepted order has its COI
    order.payer_authorization_reference = reference
    order.payer_authorization_expires_on = expires_on
    session.add(order)
    data = PayerAuthorizationRenewedData(
        order_id=order.id,
        coi=order.coi,
        expires_on=expires_on,
        renewed_at=utc_now(),
        renewed_by=caller.subject,
    )
    _publish(session, PayerAuthorizationRenewed(**_envelope(order.coi, correlation_id), data=data))
    log.info("order.payer_authorization_renewed", order_id=str(order.id))
    return order


def order_subject(order_id: UUID) -> str:
    """Rejected orders have no COI: their events are keyed by the order id (hex, upper case)."""
    return order_id.hex.upper()


def _envelope(subject: str, correlation_id: str) -> dict[str, str]:
    return {"source": SOURCE, "subject": subject, "correlationid": correlation_id}


def _publish(session: Session, event: EventEnvelope) -> None:
    enqueue(session, ORDERS, event)


# ---------------------------------------------------------------- a person's steps


def cancel_order(
    session: Session,
    order_id: UUID,
    reason_code: CancellationReasonCode,
    note: str | None,
    caller: Caller,
    correlation_id: str,
) -> Order:
    """Cancel before infusion, with the reason's code, an optional note, who and when;
    `order.cancelled.v2` for an order with a COI (scheduling cancels the appointment and tells the site).
    The note stays with the order (I6): the event carries the code, and the order id to find the rest."""
    order = visible_order(session, order_id, caller.site_scope)
    _move(session, order, OrderStatus.CANCELLED, Way.CANCELLATION, caller.subject)
    order.cancelled_reason_code = reason_code.value
    order.cancelled_reason = note
    order.cancelled_by = caller.subject
    order.cancelled_at = utc_now()
    if order.coi:
        data = OrderCancelledDataV2(
            order_id=order.id,
            coi=order.coi,
            reason_code=reason_code,
            cancelled_by=caller.subject,
            cancelled_at=order.cancelled_at,
        )
        _publish(session, OrderCancelledV2(**_envelope(order.coi, correlation_id), data=data))
    log.info("order.cancelled", order_id=str(order.id), reason_code=reason_code.value)
    return order


def record_step(
    session: Session,
    order_id: UUID,
    target: OrderStatus,
    caller: Caller,
    correlation_id: str | None = None,
) -> Order:
    """A step that happened outside the system, recorded by a coordinator; the state machine says which
    steps may be recorded so (`Way.STEP`) and in which order. Manufacturing's start is published
    (`manufacturing.started.v1`): scheduling marks the plan's manufacturing leg started."""
    order = visible_order(session, order_id, caller.site_scope)
    _move(session, order, target, Way.STEP, caller.subject)
    if target is OrderStatus.IN_MANUFACTURING:
        assert order.coi is not None  # an order past acceptance has its COI
        data = ManufacturingStartedData(
            order_id=order.id,
            coi=order.coi,
            collection_number=_collection_count(session, order) or None,
            started_at=utc_now(),
        )
        envelope = _envelope(order.coi, correlation_id or str(uuid4()))
        _publish(session, ManufacturingStarted(**envelope, data=data))
    return order


def next_din(session: Session, fin: str, year: int) -> str:
    """Issue the next DIN of a facility and year. The counter's row is created if missing without ever
    failing (INSERT … ON CONFLICT DO NOTHING: two first collections at once both get their row), then
    locked (FOR UPDATE), so that concurrent issuers take the sequence one after the other."""
    dialect_insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.exec(dialect_insert(DinCounter).values(fin=fin, year=year, last=0).on_conflict_do_nothing())
    counter = session.exec(
        locked(session, select(DinCounter).where(DinCounter.fin == fin).where(DinCounter.year == year))
    ).one()
    counter.last += 1
    session.add(counter)
    session.flush()
    return din(fin, year, counter.last)


def record_collection(
    session: Session,
    order_id: UUID,
    collected_at: datetime,
    caller: Caller,
    issuer: Issuer,
    correlation_id: str,
) -> RecordedCollection:
    """One apheresis collection with its own DIN under the order's COI; the first moves the order to
    cells_collected. `collection.recorded.v1`: the fresh shipment to manufacturing is planned."""
    order = _locked_order(session, order_id, caller.site_scope)
    taken = _collection_count(session, order)
    refusal = domain.collection_refusal(order.status, order.coi is not None, taken)
    if refusal is not None:
        raise Refused(refusal)
    assert order.coi is not None
    site = session.get(TreatmentCenter, order.treatment_center_id)
    fin = (site.fin if site is not None else None) or issuer.fin
    number = taken + 1
    collection = Collection(
        order_id=order.id,
        number=number,
        din=next_din(session, fin, collected_at.year),
        collected_at=collected_at,
        recorded_by=caller.subject,
    )
    session.add(collection)
    moves_to = domain.status_after_collection(order.status)
    if moves_to is not None:
        _move(session, order, moves_to, Way.COLLECTION, caller.subject)
    data = CollectionRecordedData(
        order_id=order.id,
        coi=order.coi,
        collection_number=number,
        din=collection.din,
        collected_at=collected_at,
        treatment_center_id=order.treatment_center_id,
    )
    _publish(session, CollectionRecorded(**_envelope(order.coi, correlation_id), data=data))
    return RecordedCollection(collection, order.coi)


def _collection_count(session: Session, order: Order) -> int:
    return len(session.exec(select(Collection.id).where(Collection.order_id == order.id)).all())


def manufacturing_failures_of(session: Session, order: Order) -> list[ManufacturingFailure]:
    return list(
        session.exec(
            select(ManufacturingFailure)
            .where(ManufacturingFailure.order_id == order.id)
            .order_by(col(ManufacturingFailure.id))
        )
    )


def record_manufacturing_failure(
    session: Session,
    order_id: UUID,
    reason_code: ManufacturingFailureCode,
    note: str | None,
    caller: Caller,
    correlation_id: str,
) -> ManufacturingFailure:
    """The lot made from the order's latest collection failed in manufacturing: why (a code), an optional
    note, who and when (the server's time). The order becomes manufacturing_failed, from which a new
    collection (a new DIN under the same COI) starts the next attempt. `manufacturing.failed.v1` carries
    the code, never the note (I6): COI tracking closes the lot's return leg, scheduling releases its
    appointment and tells the site."""
    order = _locked_order(session, order_id, caller.site_scope)
    taken = _collection_count(session, order)
    refusal = domain.manufacturing_failure_refusal(order.status, taken)
    if refusal is not None:
        raise Refused(refusal)
    assert order.coi is not None  # an order in manufacturing was accepted: it has its COI
    _move(session, order, OrderStatus.MANUFACTURING_FAILED, Way.FAILURE, caller.subject)
    failure = ManufacturingFailure(
        order_id=order.id,
        collection_number=taken,
        reason_code=reason_code.value,
        note=note,
        recorded_by=caller.subject,
        failed_at=utc_now(),
    )
    session.add(failure)
    data = ManufacturingFailedData(
        order_id=order.id,
        coi=order.coi,
        collection_number=taken,
        reason_code=reason_code,
        failed_at=failure.failed_at,
        recorded_by=caller.subject,
    )
    _publish(session, ManufacturingFailed(**_envelope(order.coi, correlation_id), data=data))
    log.info("order.manufacturing_failed", order_id=str(order.id), reason_code=reason_code.value)
    return failure


def manufacturing_delays_of(session: Session, order: Order) -> list[ManufacturingDelay]:
    return list(
        session.exec(
            select(ManufacturingDelay)
            .where(ManufacturingDelay.order_id == order.id)
            .order_by(col(ManufacturingDelay.id))
        )
    )


def record_manufacturing_delay(
    session: Session,
    order_id: UUID,
    expected_release_on: date,
    reason_code: ManufacturingDelayCode,
    note: str | None,
    caller: Caller,
    correlation_id: str,
) -> ManufacturingDelay:
    """The lot in manufacturing is now expected to be released on `expected_release_on`: why (a code), an
    optional note, who and when. `manufacturing.delayed.v1` carries the code, never the note (I6):
    scheduling re-plans the plan's release, return and infusion and tells the sites."""
    order = _locked_order(session, order_id, caller.site_scope)
    refusal = domain.manufacturing_delay_refusal(order.status)
    if refusal is not None:
        raise Refused(refusal)
    day_refusal = domain.expected_release_refusal(expected_release_on, utc_now().date())
    if day_refusal is not None:
        raise InvalidField("expected_release_on", day_refusal)
    assert order.coi is not None  # an order in manufacturing was accepted: it has its COI
    delay = ManufacturingDelay(
        order_id=order.id,
        collection_number=_collection_count(session, order) or None,
        expected_release_on=expected_release_on,
        reason_code=reason_code.value,
        note=note,
        recorded_by=caller.subject,
        delayed_at=utc_now(),
    )
    session.add(delay)
    data = ManufacturingDelayedData(
        order_id=order.id,
        coi=order.coi,
        collection_number=delay.collection_number,
        expected_release_on=expected_release_on,
        reason_code=reason_code,
        delayed_at=delay.delayed_at,
        recorded_by=caller.subject,
    )
    _publish(session, ManufacturingDelayed(**_envelope(order.coi, correlation_id), data=data))
    log.info("order.manufacturing_delayed", order_id=str(order.id), reason_code=reason_code.value)
    return delay


def _manufacturing_started_at(session: Session, order: Order) -> datetime | None:
    return session.exec(
        select(OrderTransition.at)
        .where(OrderTransition.order_id == order.id)
        .where(OrderTransition.to_status == OrderStatus.IN_MANUFACTURING)
        .order_by(col(OrderTransition.id).desc())  # this attempt's: a failed lot's came before
    ).first()


def record_manufacturing_release(
    session: Session,
    order_id: UUID,
    lot_number: str,
    released_at: datetime,
    caller: Caller,
    correlation_id: str,
    out_of_specification: bool = False,
    out_of_specification_code: OutOfSpecificationCode | None = None,
) -> Order:
    """The manufacturer released the order's product: its lot, when, who recorded it (the caller), and
    whether it is out of specification (what it missed). `product.released_for_shipment.v2`: only now may
    the return shipment be picked up; a product out of specification carries the documents its file must
    hold (`domain.oos_documents_required`, by the site's country) before scheduling lets it be booked."""
    problem = domain.release_specification_problem(
        out_of_specification, out_of_specification_code is not None
    )
    if problem is not None:
        raise InvalidField("out_of_specification_code", problem)
    order = _locked_order(session, order_id, caller.site_scope)
    refusal = domain.manufacturing_release_refusal(
        order.status, released_at, utc_now(), _manufacturing_started_at(session, order)
    )
    if refusal is not None:
        raise Refused(refusal)
    assert order.coi is not None  # an order in manufacturing was accepted: it has its COI
    _move(session, order, OrderStatus.PRODUCT_RELEASED, Way.RELEASE, caller.subject)
    order.product_lot_number = lot_number
    order.product_released_at = released_at
    order.product_released_by = caller.subject
    order.product_out_of_specification = out_of_specification
    order.product_oos_code = out_of_specification_code.value if out_of_specification_code else None
    required: tuple[OosDocument, ...] = ()
    if out_of_specification:
        required = domain.oos_documents_required(_country_of(session, order))
        session.add(OosFile(order_id=order.id, lot_number=lot_number))
    data = ProductReleasedForShipmentDataV2(
        order_id=order.id,
        coi=order.coi,
        lot_number=lot_number,
        released_at=released_at,
        released_by=caller.subject,
        out_of_specification=out_of_specification,
        out_of_specification_code=out_of_specification_code,
        oos_documents_required=list(required),
    )
    _publish(session, ProductReleasedForShipmentV2(**_envelope(order.coi, correlation_id), data=data))
    log.info(
        "order.product_released",
        order_id=str(order.id),
        coi=order.coi,
        out_of_specification=out_of_specification,
    )
    return order


def _country_of(session: Session, order: Order) -> str | None:
    site = session.get(TreatmentCenter, order.treatment_center_id)
    return site.country if site is not None else None


@dataclass(frozen=True)
class OosReferences:
    """References to the documents of an out-of-specification file (identifiers, never free text); a
    None leaves what is on file."""

    physician_request_ref: str | None = None
    patient_consent_ref: str | None = None
    risk_assessment_ref: str | None = None
    ind_ref: str | None = None


_OOS_COLUMNS: dict[OosDocument, str] = {
    OosDocument.PHYSICIAN_REQUEST: "physician_request_ref",
    OosDocument.PATIENT_CONSENT: "patient_consent_ref",
    OosDocument.RISK_ASSESSMENT: "risk_assessment_ref",
    OosDocument.IND: "ind_ref",
}
"""Each document and the column (and request field) holding its reference."""


@dataclass(frozen=True)
class OosFileState:
    file: OosFile
    required: tuple[OosDocument, ...]
    missing: tuple[OosDocument, ...]


def _on_file(file: OosFile) -> dict[OosDocument, str | None]:
    return {document: getattr(file, column) for document, column in _OOS_COLUMNS.items()}


def oos_file_of(session: Session, order: Order) -> OosFileState | None:
    """The order's out-of-specification file with what it needs and still misses; None without one."""
    file = session.get(OosFile, order.id)
    if file is None:
        return None
    country = _country_of(session, order)
    return OosFileState(
        file,
        domain.oos_documents_required(country),
        domain.oos_documents_missing(_on_file(file), country),
    )


def record_oos_file(
    session: Session, order_id: UUID, references: OosReferences, caller: Caller, correlation_id: str
) -> OosFileState:
    """A coordinator adds references to the file of a product released out of specification (given ones
    replace what was on file). Once it holds every document `domain.oos_documents_required` asks for, it
    is complete: `product.oos_file_completed.v1` (the codes of the documents, who and when, never a
    reference) lets scheduling book the product's infusion. A complete file is not changed (409)."""
    order = _locked_order(session, order_id, caller.site_scope)
    file = session.get(OosFile, order.id)
    refusal = domain.oos_file_refusal(file is not None, file is not None and file.completed_at is not None)
    if refusal is not None:
        raise Refused(refusal)
    assert file is not None and order.coi is not None
    for column in _OOS_COLUMNS.values():
        given = getattr(references, column)
        if given is not None:
            setattr(file, column, given)
    file.updated_by, file.updated_at = caller.subject, utc_now()
    state = oos_file_of(session, order)
    assert state is not None
    if not state.missing:
        file.completed_at, file.completed_by = file.updated_at, caller.subject
        data = OosFileCompletedData(
            order_id=order.id,
            coi=order.coi,
            lot_number=file.lot_number,
            documents=list(state.required),
            completed_at=file.completed_at,
            completed_by=caller.subject,
        )
        _publish(session, OosFileCompleted(**_envelope(order.coi, correlation_id), data=data))
        log.info("order.oos_file_completed", order_id=str(order.id), coi=order.coi)
    session.add(file)
    return state


# ---------------------------------------------------------------- events from the other services


def follow_event(session: Session, event: EventEnvelope, target: OrderStatus, way: Way) -> None:
    """Move the order of the event's COI to `target`, recording the event as the cause. An unknown COI,
    an order already there (redelivery) or a step the state machine refuses is logged and left: the
    event still counts as handled (inbox)."""
    order = session.exec(select(Order).where(Order.coi == event.subject)).first()
    if order is None:
        log.warning("order.unknown_coi", coi=event.subject)
        return
    if order.status == target:
        return
    try:
        record_transition(session, order, target, way, actor=event.source, cause_event_id=str(event.id))
    except domain.TransitionRefused as refused:
        log.warning("order.transition_refused", order_id=str(order.id), reason=str(refused))
