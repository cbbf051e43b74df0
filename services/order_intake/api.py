"""Order intake HTTP routes: validate, run the domain checks, persist, enqueue events (one transaction)."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Annotated
from uuid import UUID

import structlog
from cgt_contracts.envelope import utc_now
from cgt_contracts.events import (
    CollectionRecorded,
    CollectionRecordedData,
    OrderAccepted,
    OrderAcceptedData,
    OrderCancelled,
    OrderCancelledData,
    OrderRejected,
    OrderRejectedData,
    ProductReleasedForShipment,
    ProductReleasedForShipmentData,
    RejectionReason,
)
from cryptography.fernet import Fernet
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.common import idempotency, problems
from services.common.auth import Principal, Role, require
from services.common.db import locked
from services.common.edge import EdgeRoute, RequestModel
from services.common.identifiers import coi_identifier, coi_label, din
from services.common.outbox import enqueue
from services.common.service import db_session, runtime_of
from services.common.topics import ORDERS
from services.order_intake import domain
from services.order_intake.domain import OrderStatus
from services.order_intake.models import (
    CoiSequence,
    Collection,
    DinCounter,
    Order,
    OrderTransition,
    PatientRecord,
    Prescriber,
    PrescriberSite,
    SiteCertification,
    Therapy,
    TreatmentCenter,
)

SOURCE = "cgt/order-intake"
log = structlog.get_logger()
router = APIRouter(route_class=EdgeRoute, tags=["orders"])

Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]


class PatientIdentity(RequestModel):
    """Identifying data: stored encrypted in order intake only, never published or logged."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    date_of_birth: date
    medical_record_number: Annotated[str, Field(min_length=1, max_length=64)]


class Consent(RequestModel):
    signed_on: date
    form_version: Annotated[str, Field(min_length=1, max_length=32)]


class PayerAuthorization(RequestModel):
    reference: Annotated[str, Field(min_length=1, max_length=64)]
    expires_on: date


class OrderRequest(RequestModel):
    """A therapy order. Consent, payer authorization and the eligibility attestation may be missing:
    the order is then recorded as rejected, with those reasons among all the others."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "patient_ref": "PSN-7F3A",
                    "patient": {
                        "name": "Jane Doe",
                        "date_of_birth": "2019-04-02",
                        "medical_record_number": "MRN-12345",
                    },
                    "therapy_code": "WASKYRA",
                    "treatment_center_id": "TC-BOSTON",
                    "prescriber_npi": "1234567893",
                    "consent": {"signed_on": "2026-11-20", "form_version": "WAS-ICF-2.1"},
                    "payer_authorization": {"reference": "PA-2026-0042", "expires_on": "2027-03-31"},
                    "eligibility_attested": True,
                }
            ]
        }
    )

    patient_ref: Ident = Field(
        description="Pseudonymous patient reference, the only patient key other services see"
    )
    patient: PatientIdentity
    therapy_code: Ident
    treatment_center_id: Ident
    prescriber_npi: Annotated[str, Field(pattern=r"^[0-9]{10}$")]
    consent: Consent | None = None
    payer_authorization: PayerAuthorization | None = None
    eligibility_attested: bool = Field(
        default=False, description="The prescriber attests clinical eligibility"
    )
    ordered_on: date | None = Field(default=None, description="Defaults to today (UTC)")


class StatusRequest(RequestModel):
    """A step of the order's life that a coordinator records (collection, manufacturing, infusion...)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "in_manufacturing"}]})

    status: OrderStatus


class CollectionRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"collected_at": "2026-11-24T14:30:00Z"}]})

    collected_at: AwareDatetime


class CollectionView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "number": 1,
                    "din": "W432126000001D",
                    "din_label": "W432126000001 [D]",
                    "collected_at": "2026-11-24T14:30:00Z",
                    "coi": "CHW4321260000014",
                }
            ]
        }
    )

    number: int
    din: str = Field(description="Donation Identification Number (ISBT 128) with its check character")
    din_label: str = Field(description="The DIN as printed: its check character boxed beside it")
    collected_at: datetime
    coi: str


class ManufacturingReleaseRequest(RequestModel):
    """The manufacturer's release of the order's drug product for shipment: which lot, and when."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"lot_number": "LOT-WAS-2611-07", "released_at": "2026-12-01T08:00:00Z"}]
        }
    )

    lot_number: Ident
    released_at: AwareDatetime


class CancelRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "patient no longer eligible"}]})

    reason: Annotated[str, Field(min_length=3, max_length=500)]


ORDER_EXAMPLE: JsonDict = {
    "id": "3f2b8c1e-5d4a-4e8f-9a6b-1c2d3e4f5a6b",
    "status": "accepted",
    "coi": "CHW4321260000014",
    "coi_label": "&/CHW432126000001 [4]",
    "patient_ref": "PSN-7F3A",
    "therapy_code": "WASKYRA",
    "treatment_center_id": "TC-BOSTON",
    "prescriber_npi": "1234567893",
    "ordered_on": "2026-11-23",
    "rejection_reasons": [],
    "cancelled_reason": None,
    "cancelled_by": None,
    "cancelled_at": None,
    "product_lot_number": None,
    "product_released_at": None,
    "product_released_by": None,
}


class OrderView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                ORDER_EXAMPLE,
                ORDER_EXAMPLE
                | {
                    "id": "9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
                    "status": "rejected",
                    "coi": None,
                    "coi_label": None,
                    "patient_ref": "PSN-90B2",
                    "treatment_center_id": "TC-DENVER",
                    "rejection_reasons": [
                        {
                            "code": "site_not_certified",
                            "message": "the treatment center is not qualified for this therapy on 2026-11-23",
                        },
                        {"code": "consent_missing", "message": "no consent recorded (date and form version)"},
                    ],
                },
            ]
        }
    )

    id: UUID
    status: OrderStatus
    coi: str | None
    coi_label: str | None
    patient_ref: str
    therapy_code: str
    treatment_center_id: str
    prescriber_npi: str
    ordered_on: date
    rejection_reasons: list[RejectionReason]
    cancelled_reason: str | None
    cancelled_by: str | None
    cancelled_at: datetime | None
    product_lot_number: str | None = Field(default=None, description="The released product's lot")
    product_released_at: datetime | None = Field(
        default=None, description="When the manufacturer released the product for shipment"
    )
    product_released_by: str | None = None

    @classmethod
    def of(cls, order: Order) -> OrderView:
        return cls(
            id=order.id,
            status=order.status,
            coi=order.coi,
            coi_label=coi_label(order.coi) if order.coi else None,
            patient_ref=order.patient_ref,
            therapy_code=order.therapy_code,
            treatment_center_id=order.treatment_center_id,
            prescriber_npi=order.prescriber_npi,
            ordered_on=order.ordered_on,
            rejection_reasons=[RejectionReason(**r) for r in json.loads(order.rejection_reasons or "[]")],
            cancelled_reason=order.cancelled_reason,
            cancelled_by=order.cancelled_by,
            cancelled_at=order.cancelled_at,
            product_lot_number=order.product_lot_number,
            product_released_at=order.product_released_at,
            product_released_by=order.product_released_by,
        )


class TransitionView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from_status": "accepted",
                    "to_status": "cells_collected",
                    "at": "2026-11-24T14:31:02.120000+00:00",
                    "actor": "coord-ana",
                    "cause_event_id": None,
                }
            ]
        }
    )

    from_status: OrderStatus | None
    to_status: OrderStatus
    at: str
    actor: str
    cause_event_id: str | None = Field(description="The event that moved the order, when no person did")


SessionDep = Annotated[Session, Depends(db_session)]
OrderingCaller = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.TREATMENT_CENTER))]


def _gather_facts(session: Session, body: OrderRequest, ordered_on: date) -> domain.OrderFacts:
    therapy = session.get(Therapy, body.therapy_code)
    site = session.get(TreatmentCenter, body.treatment_center_id)
    certifications = session.exec(
        select(SiteCertification)
        .where(SiteCertification.treatment_center_id == body.treatment_center_id)
        .where(SiteCertification.therapy_code == body.therapy_code)
    ).all()
    prescriber_site = session.get(PrescriberSite, (body.prescriber_npi, body.treatment_center_id))
    prescriber_known = session.get(Prescriber, body.prescriber_npi) is not None
    active = session.exec(
        select(Order.id)
        .where(Order.patient_ref == body.patient_ref)
        .where(Order.therapy_code == body.therapy_code)
        .where(col(Order.status).in_([s.value for s in domain.ACTIVE]))
    ).first()
    return domain.OrderFacts(
        order_date=ordered_on,
        therapy_known=therapy is not None,
        site_known=site is not None,
        certifications=tuple((c.effective_on, c.expires_on) for c in certifications),
        prescriber_npi=body.prescriber_npi,
        prescriber_known=prescriber_known,
        prescriber_may_order_for_site=prescriber_site is not None,
        consent_signed_on=body.consent.signed_on if body.consent else None,
        consent_form_version=body.consent.form_version if body.consent else None,
        payer_authorization_expires_on=body.payer_authorization.expires_on
        if body.payer_authorization
        else None,
        eligibility_attested=body.eligibility_attested,
        has_active_order_for_patient_and_therapy=active is not None,
    )


def lock_order(session: Session, order: Order) -> None:
    """Lock a stored order's row and read it again (`locked`), so that a change is judged on the order as
    it is now: a coordinator's cancellation and a delivery event arriving at the same moment are applied
    one after the other, never both from the same stale status."""
    if order in session.new:  # not stored yet: nobody else can change it
        return
    session.flush()  # this transaction's own changes first: the order is read back below
    session.exec(locked(session, select(Order).where(col(Order.id) == order.id))).one()


def record_transition(
    session: Session, order: Order, target: OrderStatus, actor: str, cause_event_id: str | None = None
) -> None:
    """Move the order, refusing what the state machine forbids, and keep the history."""
    lock_order(session, order)
    domain.check_transition(order.status, target)
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


@router.post(
    "/orders",
    summary="Place a therapy order",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderView,
    responses={
        200: {"model": OrderView, "description": "The same Idempotency-Key again: the order it placed"},
        **problems.documented(404, 409),
    },
)
def place_order(
    body: OrderRequest,
    request: Request,
    session: SessionDep,
    caller: OrderingCaller,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> OrderView | JSONResponse:
    """Place an order for a patient's autologous therapy. Coordinators order for any treatment center, a
    treatment center only for its own (403 otherwise).

    The order is checked at once: the site qualified for the therapy on the order date, the prescriber
    (NPI) known and allowed to order there, consent, payer authorization and the eligibility attestation on
    file, no other active order for the patient and therapy. An accepted order (201, `accepted`) gets its
    chain-of-identity (COI) identifier and `order.accepted.v1` is published: the return shipment is planned
    and scheduling opens the case. A failing order is recorded as `rejected` (201 too) with every failed
    check in `rejection_reasons`, and `order.rejected.v1` is published.

    Send an `Idempotency-Key` to retry safely: the same key again answers 200 with the order it placed
    (the same key with another order is 409).
    The patient's identity is stored encrypted and is never returned or published."""
    runtime = runtime_of(request)
    if caller.role is Role.TREATMENT_CENTER and caller.treatment_center_id != body.treatment_center_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a treatment center may order only for its own site")
    keyed = idempotency.keyed_request(
        caller.subject, idempotency_key, "POST /orders", body.model_dump(mode="json")
    )
    earlier = _earlier_order(session, keyed)
    if earlier is not None:
        return earlier
    ordered_on = body.ordered_on or utc_now().date()
    failures = domain.acceptance_failures(_gather_facts(session, body, ordered_on))
    order = Order(
        patient_ref=body.patient_ref,
        therapy_code=body.therapy_code,
        treatment_center_id=body.treatment_center_id,
        prescriber_npi=body.prescriber_npi,
        consent_signed_on=body.consent.signed_on if body.consent else None,
        consent_form_version=body.consent.form_version if body.consent else None,
        payer_authorization_reference=body.payer_authorization.reference
        if body.payer_authorization
        else None,
        payer_authorization_expires_on=body.payer_authorization.expires_on
        if body.payer_authorization
        else None,
        eligibility_attested_by=caller.subject if body.eligibility_attested else None,
        ordered_on=ordered_on,
        created_by=caller.subject,
    )
    session.add(order)
    session.flush()  # the order row first: its history and patient record refer to it
    session.add(
        OrderTransition(
            order_id=order.id, from_status=None, to_status=OrderStatus.SUBMITTED, actor=caller.subject
        )
    )
    fernet = Fernet(request.app.state.phi_key)
    session.add(
        PatientRecord(
            order_id=order.id,
            encrypted_identity=fernet.encrypt(body.patient.model_dump_json().encode()).decode(),
        )
    )
    correlation_id: str = request.state.correlation_id
    if failures:
        order.rejection_reasons = json.dumps([{"code": f.code, "message": f.message} for f in failures])
        record_transition(session, order, OrderStatus.REJECTED, caller.subject)
        enqueue(
            session,
            ORDERS,
            OrderRejected(
                source=SOURCE,
                subject=_order_subject(order.id),
                correlationid=correlation_id,
                data=OrderRejectedData(
                    order_id=order.id,
                    patient_ref=order.patient_ref,
                    therapy_code=order.therapy_code,
                    treatment_center_id=order.treatment_center_id,
                    reasons=[RejectionReason(code=f.code, message=f.message) for f in failures],
                ),
            ),
        )
    else:
        therapy = session.get(Therapy, body.therapy_code)
        assert therapy is not None
        sequence = CoiSequence(order_id=order.id)
        session.add(sequence)
        session.flush()
        assert sequence.id is not None
        order.coi = coi_identifier(request.app.state.issuer_fin, ordered_on.year, sequence.id)
        record_transition(session, order, OrderStatus.ACCEPTED, caller.subject)
        enqueue(
            session,
            ORDERS,
            OrderAccepted(
                source=SOURCE,
                subject=order.coi,
                correlationid=correlation_id,
                data=OrderAcceptedData(
                    order_id=order.id,
                    coi=order.coi,
                    patient_ref=order.patient_ref,
                    therapy_code=order.therapy_code,
                    treatment_center_id=order.treatment_center_id,
                    storage_limit_celsius=therapy.storage_limit_celsius,
                    conditioning_days=therapy.conditioning_days,
                    accepted_at=utc_now(),
                    long_term_follow_up=therapy.long_term_follow_up,
                ),
            ),
        )
    placed = OrderView.of(order)
    idempotency.remember(session, keyed, status.HTTP_200_OK, placed.model_dump(mode="json"))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = _earlier_order(session, keyed)  # a concurrent request with the same key won
        if earlier is None:
            raise
        return earlier
    runtime.relay.notify()
    log.info("order.placed", order_id=str(order.id), status=order.status, coi=order.coi)
    return placed


def _earlier_order(session: Session, keyed: idempotency.KeyedRequest | None) -> JSONResponse | None:
    """The answer to the caller's earlier request with this Idempotency-Key (200 with the order it
    placed), if any; 409 if the key was used for another order."""
    earlier = idempotency.earlier_answer(session, keyed)
    return earlier.response() if earlier is not None else None


def _order_subject(order_id: UUID) -> str:
    """Rejected orders have no COI: their events are keyed by the order id (hex, upper case)."""
    return order_id.hex.upper()


def _must_get(session: Session, order_id: UUID) -> Order:
    order = session.get(Order, order_id)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    return order


def _visible_order(session: Session, order_id: UUID, caller: Principal) -> Order:
    order = _must_get(session, order_id)
    if caller.role is Role.TREATMENT_CENTER and order.treatment_center_id != caller.treatment_center_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    return order


@router.get("/orders", summary="List orders", response_model=list[OrderView])
def list_orders(session: SessionDep, caller: OrderingCaller, coi: str | None = None) -> list[OrderView]:
    """The orders, oldest first (at most 500): a coordinator sees every site's, a treatment center only its
    own. `coi` finds the order of one chain-of-identity identifier."""
    query = select(Order).order_by(col(Order.created_at))
    if caller.role is Role.TREATMENT_CENTER:
        query = query.where(Order.treatment_center_id == caller.treatment_center_id)
    if coi:
        query = query.where(Order.coi == coi)
    return [OrderView.of(order) for order in session.exec(query.limit(500))]


@router.get("/orders/{order_id}", summary="Read an order", response_model=OrderView)
def read_order(order_id: UUID, session: SessionDep, caller: OrderingCaller) -> OrderView:
    """One order: its status, COI, and why it was rejected or cancelled. A treatment center reads only its
    own site's orders (another site's is 404)."""
    return OrderView.of(_visible_order(session, order_id, caller))


@router.get(
    "/orders/{order_id}/history", summary="Read an order's history", response_model=list[TransitionView]
)
def order_history(order_id: UUID, session: SessionDep, caller: OrderingCaller) -> list[TransitionView]:
    """Every step of the order, oldest first: from which status to which, when, and who moved it (a person,
    or the shipment or scheduling event that did)."""
    _visible_order(session, order_id, caller)
    rows = session.exec(
        select(OrderTransition).where(OrderTransition.order_id == order_id).order_by(col(OrderTransition.id))
    )
    return [
        TransitionView(
            from_status=row.from_status,
            to_status=row.to_status,
            at=row.at.isoformat(),
            actor=row.actor,
            cause_event_id=row.cause_event_id,
        )
        for row in rows
    ]


@router.post(
    "/orders/{order_id}/cancel",
    summary="Cancel an order",
    response_model=OrderView,
    responses=problems.documented(409),
)
def cancel_order(
    order_id: UUID, body: CancelRequest, request: Request, session: SessionDep, caller: OrderingCaller
) -> OrderView:
    """Cancel an order before the patient is infused, giving the reason; who cancelled and when are
    recorded. Coordinators cancel any order, a treatment center its own site's.

    `order.cancelled.v1` is published: scheduling cancels the appointment and tells the site by webhook.
    An order already infused, closed, rejected or cancelled is 409."""
    order = _visible_order(session, order_id, caller)
    try:
        record_transition(session, order, OrderStatus.CANCELLED, caller.subject)
    except domain.TransitionRefused as refused:
        raise problems.conflict(str(refused)) from refused
    order.cancelled_reason = body.reason
    order.cancelled_by = caller.subject
    order.cancelled_at = utc_now()
    if order.coi:
        enqueue(
            session,
            ORDERS,
            OrderCancelled(
                source=SOURCE,
                subject=order.coi,
                correlationid=request.state.correlation_id,
                data=OrderCancelledData(
                    order_id=order.id,
                    coi=order.coi,
                    reason=body.reason,
                    cancelled_by=caller.subject,
                    cancelled_at=order.cancelled_at,
                ),
            ),
        )
    session.commit()
    runtime_of(request).relay.notify()
    return OrderView.of(order)


MANUAL_STEPS = frozenset(
    {
        OrderStatus.CELLS_COLLECTED,
        OrderStatus.IN_MANUFACTURING,
        OrderStatus.INFUSED,
        OrderStatus.IN_FOLLOW_UP,
        OrderStatus.CLOSED,
    }
)
"""Steps a coordinator records; shipping and delivery follow the shipment events instead."""

Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]


@router.post(
    "/orders/{order_id}/status",
    summary="Record an order step",
    response_model=OrderView,
    responses=problems.documented(409),
)
def record_step(order_id: UUID, body: StatusRequest, session: SessionDep, caller: Coordinator) -> OrderView:
    """Coordinators record the steps that happen outside the system: `cells_collected`,
    `in_manufacturing`, `infused`, `in_follow_up`, `closed`. Shipping and delivery follow the shipment's
    own events and cannot be set by hand (409); a step out of order is 409 too (`infused` before the
    product was delivered, say), naming the steps allowed next."""
    order = _must_get(session, order_id)
    if body.status is OrderStatus.PRODUCT_RELEASED:
        raise problems.conflict(
            "the product's release is recorded with its lot: POST …/manufacturing-release"
        )
    if body.status not in MANUAL_STEPS:
        raise problems.conflict(f"{body.status} is set by the shipment and scheduling events, not by hand")
    try:
        record_transition(session, order, body.status, caller.subject)
    except domain.TransitionRefused as refused:
        raise problems.conflict(str(refused)) from refused
    session.commit()
    return OrderView.of(order)


def next_din(session: Session, fin: str, year: int) -> str:
    """Issue the next DIN of a facility and year; the counter row serialises concurrent issuers."""
    counter = session.exec(
        locked(session, select(DinCounter).where(DinCounter.fin == fin).where(DinCounter.year == year))
    ).first()
    if counter is None:
        counter = DinCounter(fin=fin, year=year, last=0)
    counter.last += 1
    session.add(counter)
    session.flush()
    return din(fin, year, counter.last)


@router.post(
    "/orders/{order_id}/collections",
    summary="Record a cell collection",
    status_code=status.HTTP_201_CREATED,
    response_model=CollectionView,
    responses=problems.documented(409),
)
def record_collection(
    order_id: UUID, body: CollectionRequest, request: Request, session: SessionDep, caller: Coordinator
) -> CollectionView:
    """Coordinators record each apheresis collection of an accepted order. Each gets its own Donation
    Identification Number (DIN) under the order's COI; the first moves the order to `cells_collected`.
    `collection.recorded.v1` is published: the fresh shipment of the cells to manufacturing is planned.
    An order that is not accepted (rejected, cancelled, or past collection) is 409."""
    order = _must_get(session, order_id)
    lock_order(session, order)  # judged on the order as it is now (a cancellation may have just committed)
    if order.status not in (OrderStatus.ACCEPTED, OrderStatus.CELLS_COLLECTED) or order.coi is None:
        raise problems.conflict(f"cannot record a collection for an order that is {order.status}")
    site = session.get(TreatmentCenter, order.treatment_center_id)
    fin = (site.fin if site and site.fin else None) or request.app.state.issuer_fin
    number = len(session.exec(select(Collection.id).where(Collection.order_id == order.id)).all()) + 1
    collection = Collection(
        order_id=order.id,
        number=number,
        din=next_din(session, fin, body.collected_at.year),
        collected_at=body.collected_at,
        recorded_by=caller.subject,
    )
    session.add(collection)
    if order.status is OrderStatus.ACCEPTED:
        record_transition(session, order, OrderStatus.CELLS_COLLECTED, caller.subject)
    enqueue(
        session,
        ORDERS,
        CollectionRecorded(
            source=SOURCE,
            subject=order.coi,
            correlationid=request.state.correlation_id,
            data=CollectionRecordedData(
                order_id=order.id,
                coi=order.coi,
                collection_number=number,
                din=collection.din,
                collected_at=body.collected_at,
                treatment_center_id=order.treatment_center_id,
            ),
        ),
    )
    session.commit()
    runtime_of(request).relay.notify()
    return _collection_view(collection, order.coi)


def _collection_view(collection: Collection, coi: str) -> CollectionView:
    return CollectionView(
        number=collection.number,
        din=collection.din,
        din_label=f"{collection.din[:-1]} [{collection.din[-1]}]",
        collected_at=collection.collected_at,
        coi=coi,
    )


@router.get(
    "/orders/{order_id}/collections",
    summary="List an order's collections",
    response_model=list[CollectionView],
)
def list_collections(order_id: UUID, session: SessionDep, caller: OrderingCaller) -> list[CollectionView]:
    """The order's collections in the order they were taken, each with its DIN and printed label."""
    order = _visible_order(session, order_id, caller)
    rows = session.exec(
        select(Collection).where(Collection.order_id == order.id).order_by(col(Collection.number))
    )
    return [_collection_view(row, order.coi or "") for row in rows]


Releaser = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.QA))]


def _manufacturing_started_at(session: Session, order: Order) -> datetime | None:
    return session.exec(
        select(OrderTransition.at)
        .where(OrderTransition.order_id == order.id)
        .where(OrderTransition.to_status == OrderStatus.IN_MANUFACTURING)
    ).first()


@router.post(
    "/orders/{order_id}/manufacturing-release",
    summary="Record the product's release for shipment",
    response_model=OrderView,
    responses=problems.documented(409),
)
def record_manufacturing_release(
    order_id: UUID,
    body: ManufacturingReleaseRequest,
    request: Request,
    session: SessionDep,
    caller: Releaser,
) -> OrderView:
    """The coordinator (or QA) records that the manufacturer released the order's drug product for
    shipment: its lot number and when; the releasing person is the caller. The order becomes
    `product_released` and `product.released_for_shipment.v1` is published: only now may the return
    shipment be picked up. An order that is not in manufacturing (not yet, already released, cancelled)
    is 409, as is a release dated in the future or before manufacturing started."""
    order = _must_get(session, order_id)
    lock_order(session, order)  # judged on the order as it is now (a cancellation may have just committed)
    refusal = domain.manufacturing_release_refusal(
        order.status, body.released_at, utc_now(), _manufacturing_started_at(session, order)
    )
    if refusal is not None:
        raise problems.conflict(refusal)
    assert order.coi is not None  # an order in manufacturing was accepted: it has its COI
    record_transition(session, order, OrderStatus.PRODUCT_RELEASED, caller.subject)
    order.product_lot_number = body.lot_number
    order.product_released_at = body.released_at
    order.product_released_by = caller.subject
    enqueue(
        session,
        ORDERS,
        ProductReleasedForShipment(
            source=SOURCE,
            subject=order.coi,
            correlationid=request.state.correlation_id,
            data=ProductReleasedForShipmentData(
                order_id=order.id,
                coi=order.coi,
                lot_number=body.lot_number,
                released_at=body.released_at,
                released_by=caller.subject,
            ),
        ),
    )
    session.commit()
    runtime_of(request).relay.notify()
    log.info("order.product_released", order_id=str(order.id), coi=order.coi)
    return OrderView.of(order)
