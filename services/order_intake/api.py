"""Order intake HTTP routes: thin adapters — parse, call the command (`commands`), commit, answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Annotated
from uuid import UUID

from cgt_contracts.envelope import CoiIdentifier, Identifier
from cgt_contracts.events import (
    CancellationReasonCode,
    ManufacturingDelayCode,
    ManufacturingFailureCode,
    OosDocument,
    OutOfSpecificationCode,
    RejectionReason,
)
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from sqlmodel import Session

from services.common import idempotency, problems
from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, Note, RequestModel
from services.common.identifiers import coi_label
from services.common.paging import Page, link_next
from services.common.service import db_session
from services.order_intake import commands
from services.order_intake.domain import OrderStatus
from services.order_intake.models import Collection, ManufacturingDelay, ManufacturingFailure, Order
from services.order_intake.runtime import RuntimeDep

router = APIRouter(route_class=EdgeRoute, tags=["orders"])

Ident = Identifier


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
    ordered_on: date | None = Field(
        default=None,
        description="The clinical order date as the caller states it: recorded (`stated_ordered_on`), "
        "never used by a check; the order's own date is the server's (UTC)",
    )

    def new_order(self) -> commands.NewOrder:
        return commands.NewOrder(
            patient_ref=self.patient_ref,
            patient=commands.PatientIdentity(
                name=self.patient.name,
                date_of_birth=self.patient.date_of_birth,
                medical_record_number=self.patient.medical_record_number,
            ),
            therapy_code=self.therapy_code,
            treatment_center_id=self.treatment_center_id,
            prescriber_npi=self.prescriber_npi,
            consent_signed_on=self.consent.signed_on if self.consent else None,
            consent_form_version=self.consent.form_version if self.consent else None,
            payer_authorization_reference=self.payer_authorization.reference
            if self.payer_authorization
            else None,
            payer_authorization_expires_on=self.payer_authorization.expires_on
            if self.payer_authorization
            else None,
            eligibility_attested=self.eligibility_attested,
            stated_ordered_on=self.ordered_on,
        )


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
            "examples": [
                {"lot_number": "LOT-WAS-2611-07", "released_at": "2026-12-01T08:00:00Z"},
                {
                    "lot_number": "LOT-WAS-2611-08",
                    "released_at": "2026-12-01T08:00:00Z",
                    "out_of_specification": True,
                    "out_of_specification_code": "cell_dose",
                },
            ]
        }
    )

    lot_number: Ident
    released_at: AwareDatetime
    out_of_specification: bool = Field(
        default=False,
        description="Released out of specification: not scheduled for infusion until its file is complete",
    )
    out_of_specification_code: OutOfSpecificationCode | None = Field(
        default=None, description="What was out of specification (required when it was, refused otherwise)"
    )


OosRef = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-/]+$")]
"""A document's reference in its own system (an identifier, never free text)."""


class OosFileRequest(RequestModel):
    """References to the documents of a product released out of specification; any subset, each given
    one replacing what is on file."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "physician_request_ref": "PR-2026-0117",
                    "patient_consent_ref": "ICF-OOS-2026-0117",
                    "risk_assessment_ref": "AGC-RA-2611-08",
                    "ind_ref": "IND-031245",
                }
            ]
        }
    )

    physician_request_ref: OosRef | None = Field(default=None, description="The treating physician's request")
    patient_consent_ref: OosRef | None = Field(
        default=None, description="The patient's consent to receive the out-of-specification product"
    )
    risk_assessment_ref: OosRef | None = Field(default=None, description="The manufacturer's risk assessment")
    ind_ref: OosRef | None = Field(
        default=None, description="The expanded-access or single-patient IND (required in the US)"
    )

    def references(self) -> commands.OosReferences:
        return commands.OosReferences(
            physician_request_ref=self.physician_request_ref,
            patient_consent_ref=self.patient_consent_ref,
            risk_assessment_ref=self.risk_assessment_ref,
            ind_ref=self.ind_ref,
        )


class OosFileView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "lot_number": "LOT-WAS-2611-08",
                    "physician_request_ref": "PR-2026-0117",
                    "patient_consent_ref": None,
                    "risk_assessment_ref": "AGC-RA-2611-08",
                    "ind_ref": None,
                    "required": ["physician_request", "patient_consent", "risk_assessment", "ind"],
                    "missing": ["patient_consent", "ind"],
                    "complete": False,
                    "updated_by": "coord-ana",
                    "updated_at": "2026-12-01T09:00:00Z",
                    "completed_at": None,
                    "completed_by": None,
                }
            ]
        }
    )

    lot_number: str
    physician_request_ref: str | None
    patient_consent_ref: str | None
    risk_assessment_ref: str | None
    ind_ref: str | None
    required: list[OosDocument] = Field(description="What the file must hold (the IND in the US)")
    missing: list[OosDocument] = Field(description="What it does not hold yet")
    complete: bool = Field(description="Every required document is on file: the infusion may be booked")
    updated_by: str | None
    updated_at: datetime | None
    completed_at: datetime | None
    completed_by: str | None

    @classmethod
    def of(cls, state: commands.OosFileState) -> OosFileView:
        file = state.file
        return cls(
            lot_number=file.lot_number,
            physician_request_ref=file.physician_request_ref,
            patient_consent_ref=file.patient_consent_ref,
            risk_assessment_ref=file.risk_assessment_ref,
            ind_ref=file.ind_ref,
            required=list(state.required),
            missing=list(state.missing),
            complete=file.completed_at is not None,
            updated_by=file.updated_by,
            updated_at=file.updated_at,
            completed_at=file.completed_at,
            completed_by=file.completed_by,
        )


class CancelRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"reason_code": "patient_ineligible", "note": "platelets below the protocol's threshold"},
                {"reason_code": "patient_withdrew"},
            ]
        }
    )

    reason_code: CancellationReasonCode = Field(
        description="Why, from a closed list: the code is what the other services and the site are told"
    )
    note: Note | None = None


class PayerAuthorizationRenewal(PayerAuthorization):
    """A renewed payer authorization: its reference (kept by order intake only) and its last day."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reference": "PA-2027-0107", "expires_on": "2027-09-30"}]}
    )


class ManufacturingFailureRequest(RequestModel):
    """A lot that failed in manufacturing: why, from a closed list, and a note if need be."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"reason_code": "sterility_failure", "note": "mycoplasma positive on day 12"},
                {"reason_code": "insufficient_cell_yield"},
            ]
        }
    )

    reason_code: ManufacturingFailureCode = Field(
        description="Why, from a closed list: the code is what the other services and the site are told"
    )
    note: Note | None = None


class ManufacturingFailureView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collection_number": 1,
                    "reason_code": "sterility_failure",
                    "note": None,
                    "recorded_by": "coord-ana",
                    "failed_at": "2026-12-20T09:12:00Z",
                }
            ]
        }
    )

    collection_number: int = Field(description="The collection the failed lot was made from")
    reason_code: ManufacturingFailureCode
    note: str | None = Field(description="The note given with the failure, if any (never published)")
    recorded_by: str
    failed_at: datetime

    @classmethod
    def of(cls, row: ManufacturingFailure) -> ManufacturingFailureView:
        return cls(
            collection_number=row.collection_number,
            reason_code=ManufacturingFailureCode(row.reason_code),
            note=row.note,
            recorded_by=row.recorded_by,
            failed_at=row.failed_at,
        )


class ManufacturingDelayRequest(RequestModel):
    """The lot in manufacturing is now expected later: the new release day, why, and a note if need be."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"expected_release_on": "2027-01-28", "reason_code": "release_testing"},
                {"expected_release_on": "2027-02-03", "reason_code": "other", "note": "vector lot on hold"},
            ]
        }
    )

    expected_release_on: date = Field(description="The new expected release day, at the manufacturing site")
    reason_code: ManufacturingDelayCode = Field(
        description="Why, from a closed list: the code is what the other services and the sites are told"
    )
    note: Note | None = None


class ManufacturingDelayView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collection_number": 1,
                    "expected_release_on": "2027-01-28",
                    "reason_code": "release_testing",
                    "note": None,
                    "recorded_by": "coord-ana",
                    "delayed_at": "2026-12-20T09:12:00Z",
                }
            ]
        }
    )

    collection_number: int | None = Field(description="The collection the lot is made from")
    expected_release_on: date
    reason_code: ManufacturingDelayCode
    note: str | None = Field(description="The note given with the delay, if any (never published)")
    recorded_by: str
    delayed_at: datetime

    @classmethod
    def of(cls, row: ManufacturingDelay) -> ManufacturingDelayView:
        return cls(
            collection_number=row.collection_number,
            expected_release_on=row.expected_release_on,
            reason_code=ManufacturingDelayCode(row.reason_code),
            note=row.note,
            recorded_by=row.recorded_by,
            delayed_at=row.delayed_at,
        )


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
    "stated_ordered_on": None,
    "rejection_reasons": [],
    "cancelled_reason_code": None,
    "cancelled_note": None,
    "cancelled_by": None,
    "cancelled_at": None,
    "product_lot_number": None,
    "product_released_at": None,
    "product_released_by": None,
    "product_out_of_specification": None,
    "product_oos_code": None,
}


def cancellation_code(order: Order) -> CancellationReasonCode | None:
    """The code an order was cancelled with; `other` for one cancelled before codes (its note says why)."""
    if order.cancelled_reason_code is not None:
        return CancellationReasonCode(order.cancelled_reason_code)
    return CancellationReasonCode.OTHER if order.cancelled_at is not None else None


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
    ordered_on: date = Field(description="The server's date when the order was placed: the checks' date")
    stated_ordered_on: date | None = Field(
        default=None, description="The clinical order date the caller stated, recorded as given"
    )
    rejection_reasons: list[RejectionReason]
    cancelled_reason_code: CancellationReasonCode | None = Field(
        description="Why the order was cancelled (`other` for one cancelled before reason codes)"
    )
    cancelled_note: str | None = Field(description="The note given with the cancellation, if any")
    cancelled_by: str | None
    cancelled_at: datetime | None
    product_lot_number: str | None = Field(default=None, description="The released product's lot")
    product_released_at: datetime | None = Field(
        default=None, description="When the manufacturer released the product for shipment"
    )
    product_released_by: str | None = None
    payer_authorization_expires_on: date | None = Field(
        default=None, description="The last day the payer authorization on file covers"
    )
    product_out_of_specification: bool | None = Field(
        default=None, description="Released out of specification (see `GET …/out-of-specification-file`)"
    )
    product_oos_code: OutOfSpecificationCode | None = Field(
        default=None, description="What was out of specification"
    )

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
            stated_ordered_on=order.stated_ordered_on,
            rejection_reasons=[RejectionReason(**r) for r in json.loads(order.rejection_reasons or "[]")],
            cancelled_reason_code=cancellation_code(order),
            cancelled_note=order.cancelled_reason,
            cancelled_by=order.cancelled_by,
            cancelled_at=order.cancelled_at,
            product_lot_number=order.product_lot_number,
            product_released_at=order.product_released_at,
            product_released_by=order.product_released_by,
            payer_authorization_expires_on=order.payer_authorization_expires_on,
            product_out_of_specification=order.product_out_of_specification,
            product_oos_code=OutOfSpecificationCode(order.product_oos_code)
            if order.product_oos_code
            else None,
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
Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]
Releaser = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.QA))]


def caller_of(principal: Principal) -> commands.Caller:
    """The command's caller: a treatment center is scoped to its own site, the other roles to none."""
    scope = principal.treatment_center_id if principal.role is Role.TREATMENT_CENTER else None
    return commands.Caller(subject=principal.subject, site_scope=scope)


def issuer_of(runtime: RuntimeDep) -> commands.Issuer:
    return runtime.issuer


IssuerDep = Annotated[commands.Issuer, Depends(issuer_of)]


@contextmanager
def command_answers() -> Iterator[None]:
    """The commands' refusals as HTTP answers. A missing order and one the caller may not see are the
    same 404, word for word."""
    try:
        yield
    except commands.OrderNotFound as missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(missing)) from missing
    except commands.NotPermitted as refused:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(refused)) from refused
    except commands.Refused as refused:
        raise problems.conflict(str(refused)) from refused
    except commands.InvalidField as invalid:
        raise problems.invalid("body", invalid.field, str(invalid)) from invalid


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
    issuer: IssuerDep,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> OrderView | JSONResponse:
    """Place an order for a patient's autologous therapy. Coordinators order for any treatment center, a
    treatment center only for its own (403 otherwise).

    A second active order for the same patient and therapy is refused (409, nothing written), whatever
    its `patient_ref`: the patient is matched on their name, date of birth and record number. A date of
    birth in the future or before 1900-01-01 is 422.

    The order is checked at once, on the server's date (a stated `ordered_on` is only recorded): the site
    qualified for the therapy, the prescriber (NPI) known and allowed to order there, consent, payer
    authorization and the eligibility attestation on file. An accepted order (201, `accepted`) gets its
    chain-of-identity (COI) identifier and `order.accepted.v2` is published: the return shipment is planned
    and scheduling opens the case. A failing order is recorded as `rejected` (201 too) with every failed
    check in `rejection_reasons`, and `order.rejected.v2` is published (the codes alone).

    Send an `Idempotency-Key` to retry safely: the same key again answers 200 with the order it placed;
    the same key with another order is 422, and while its first request is still being answered, 409.
    The patient's identity is stored encrypted and is never returned or published."""
    keyed = idempotency.keyed_request(
        caller.subject, idempotency_key, "POST /orders", body.model_dump(mode="json")
    )
    with idempotency.claimed(session, keyed) as claim, command_answers():
        if claim.answer is not None:
            return claim.answer.response()
        order = commands.place_order(
            session, body.new_order(), caller_of(caller), issuer, request.state.correlation_id
        )
        placed = OrderView.of(order)
        claim.keep(session, status.HTTP_200_OK, placed.model_dump(mode="json"))
        session.commit()
    return placed


@router.get(
    "/orders",
    summary="List orders",
    response_model=list[OrderView],
)
def list_orders(
    request: Request,
    response: Response,
    session: SessionDep,
    caller: OrderingCaller,
    page: Page,
    coi: CoiIdentifier | None = None,
    treatment_center_id: Ident | None = None,
    status: OrderStatus | None = None,
    patient_ref: Ident | None = None,
) -> list[OrderView]:
    """The orders, oldest first, one page at a time (`limit`, `cursor`; the next page in `Link`): a coordinator sees every site's, a treatment center only its
    own. Each filter given narrows the list: `coi` (one chain-of-identity identifier),
    `treatment_center_id`, `status`, `patient_ref`; a parameter that is not one of these is 422."""
    wanted = commands.OrderFilter(
        coi=coi, treatment_center_id=treatment_center_id, status=status, patient_ref=patient_ref
    )
    orders, next_cursor = commands.find_orders(session, caller_of(caller).site_scope, wanted, page)
    link_next(request, response, next_cursor)
    return [OrderView.of(order) for order in orders]


@router.get("/orders/{order_id}", summary="Read an order", response_model=OrderView)
def read_order(order_id: UUID, session: SessionDep, caller: OrderingCaller) -> OrderView:
    """One order: its status, COI, and why it was rejected or cancelled. A treatment center reads only its
    own site's orders (another site's is the same 404 as an order that does not exist)."""
    with command_answers():
        return OrderView.of(commands.visible_order(session, order_id, caller_of(caller).site_scope))


@router.get(
    "/orders/{order_id}/history",
    summary="Read an order's history",
    response_model=list[TransitionView],
)
def order_history(order_id: UUID, session: SessionDep, caller: OrderingCaller) -> list[TransitionView]:
    """Every step of the order, oldest first: from which status to which, when, and who moved it (a person,
    or the shipment or scheduling event that did)."""
    with command_answers():
        order = commands.visible_order(session, order_id, caller_of(caller).site_scope)
    return [
        TransitionView(
            from_status=row.from_status,
            to_status=row.to_status,
            at=row.at.isoformat(),
            actor=row.actor,
            cause_event_id=row.cause_event_id,
        )
        for row in commands.history_of(session, order)
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
    """Cancel an order before the patient is infused, giving the reason as a code (and a note if need be);
    who cancelled and when are recorded. Coordinators cancel any order, a treatment center its own site's.

    `order.cancelled.v2` is published with the code: scheduling cancels the appointment and tells the site
    by webhook. The note stays here, returned with the order to those who may read it (I6). An order
    already infused, closed, rejected or cancelled is 409."""
    with command_answers():
        order = commands.cancel_order(
            session, order_id, body.reason_code, body.note, caller_of(caller), request.state.correlation_id
        )
    session.commit()
    return OrderView.of(order)


@router.post(
    "/orders/{order_id}/status",
    summary="Record an order step",
    response_model=OrderView,
    responses=problems.documented(409),
)
def record_step(
    order_id: UUID, body: StatusRequest, request: Request, session: SessionDep, caller: Coordinator
) -> OrderView:
    """Coordinators record the steps that happen outside the system: `cells_collected`,
    `in_manufacturing`, `infused`, `in_follow_up`, `closed`. Shipping and delivery follow the shipment's
    own events and cannot be set by hand (409), nor can the product's release (recorded with its lot) or a
    cancellation (with its reason); a step out of order is 409 too (`infused` before the product was
    delivered, say), naming the steps allowed next. `in_manufacturing` publishes
    `manufacturing.started.v1`: scheduling marks the plan's manufacturing leg started."""
    with command_answers():
        order = commands.record_step(
            session, order_id, body.status, caller_of(caller), request.state.correlation_id
        )
    session.commit()
    return OrderView.of(order)


@router.post(
    "/orders/{order_id}/collections",
    summary="Record a cell collection",
    status_code=status.HTTP_201_CREATED,
    response_model=CollectionView,
    responses=problems.documented(409),
)
def record_collection(
    order_id: UUID,
    body: CollectionRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
    issuer: IssuerDep,
) -> CollectionView:
    """Coordinators record each apheresis collection of an accepted order. Each gets its own Donation
    Identification Number (DIN) under the order's COI; the first moves the order to `cells_collected`.
    `collection.recorded.v1` is published: the fresh shipment of the cells to manufacturing is planned.
    An order that is not accepted (rejected, cancelled, or past collection) is 409."""
    with command_answers():
        recorded = commands.record_collection(
            session, order_id, body.collected_at, caller_of(caller), issuer, request.state.correlation_id
        )
    session.commit()
    return _collection_view(recorded.collection, recorded.coi)


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
    with command_answers():
        order = commands.visible_order(session, order_id, caller_of(caller).site_scope)
    return [_collection_view(row, order.coi or "") for row in commands.collections_of(session, order)]


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
    is 409, as is a release dated in the future or before manufacturing started. A product released
    `out_of_specification` (with `out_of_specification_code`, 422 without) is not scheduled for infusion
    until its file is complete (`POST …/out-of-specification-file`)."""
    with command_answers():
        order = commands.record_manufacturing_release(
            session,
            order_id,
            body.lot_number,
            body.released_at,
            caller_of(caller),
            request.state.correlation_id,
            out_of_specification=body.out_of_specification,
            out_of_specification_code=body.out_of_specification_code,
        )
    session.commit()
    return OrderView.of(order)


@router.post(
    "/orders/{order_id}/out-of-specification-file",
    summary="Add documents to an out-of-specification file",
    response_model=OosFileView,
    responses=problems.documented(409),
)
def record_oos_file(
    order_id: UUID, body: OosFileRequest, request: Request, session: SessionDep, caller: Coordinator
) -> OosFileView:
    """A coordinator records references to the documents of a product released out of specification: the
    treating physician's request, the patient's consent, the manufacturer's risk assessment and, for a
    site in the US (or of unknown country), the expanded-access or single-patient IND. The answer says
    what is still `missing`; once nothing is, the file is complete and `product.oos_file_completed.v1`
    lets scheduling book the infusion. References stay in order intake. An order released in
    specification, or a complete file, is 409."""
    with command_answers():
        state = commands.record_oos_file(
            session, order_id, body.references(), caller_of(caller), request.state.correlation_id
        )
    session.commit()
    return OosFileView.of(state)


@router.get(
    "/orders/{order_id}/out-of-specification-file",
    summary="Read an out-of-specification file",
    response_model=OosFileView,
)
def read_oos_file(order_id: UUID, session: SessionDep, caller: OrderingCaller) -> OosFileView:
    """The file of the order's product released out of specification: its references, what it needs and
    still misses. An order without one is 404."""
    with command_answers():
        order = commands.visible_order(session, order_id, caller_of(caller).site_scope)
        state = commands.oos_file_of(session, order)
    if state is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the order has no out-of-specification file")
    return OosFileView.of(state)


@router.post(
    "/orders/{order_id}/manufacturing-failure",
    summary="Record a failed lot",
    status_code=status.HTTP_201_CREATED,
    response_model=ManufacturingFailureView,
    responses=problems.documented(409),
)
def record_manufacturing_failure(
    order_id: UUID,
    body: ManufacturingFailureRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
) -> ManufacturingFailureView:
    """A coordinator records that the lot made from the order's latest collection failed in manufacturing,
    with a reason code (and a note if need be); who and when are recorded. The order becomes
    `manufacturing_failed`: a new collection (`POST …/collections`, a new DIN under the same COI) starts
    the next attempt. `manufacturing.failed.v1` carries the code, never the note: COI tracking closes the
    lot's return leg, scheduling releases its appointment and tells the site. An order that is not in
    manufacturing is 409."""
    with command_answers():
        failure = commands.record_manufacturing_failure(
            session, order_id, body.reason_code, body.note, caller_of(caller), request.state.correlation_id
        )
    session.commit()
    return ManufacturingFailureView.of(failure)


@router.post(
    "/orders/{order_id}/payer-authorization",
    summary="Record a renewed payer authorization",
    response_model=OrderView,
    responses=problems.documented(409),
)
def renew_payer_authorization(
    order_id: UUID,
    body: PayerAuthorizationRenewal,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
) -> OrderView:
    """A coordinator records the payer's renewed authorization for an accepted order not yet infused: its
    reference and last day replace those on file. `order.payer_authorization_renewed.v1` carries the day
    only: scheduling judges the plan and the infusion on it, and lets an appointment held for a lapsed
    authorization go on. An authorization ending before today is 422 naming `expires_on`; a cancelled,
    rejected or infused order is 409."""
    with command_answers():
        order = commands.renew_payer_authorization(
            session,
            order_id,
            body.reference,
            body.expires_on,
            caller_of(caller),
            request.state.correlation_id,
        )
    session.commit()
    return OrderView.of(order)


@router.get(
    "/orders/{order_id}/manufacturing-failures",
    summary="List an order's failed lots",
    response_model=list[ManufacturingFailureView],
)
def list_manufacturing_failures(
    order_id: UUID, session: SessionDep, caller: OrderingCaller
) -> list[ManufacturingFailureView]:
    """Every failed attempt of the order, oldest first: the collection its lot was made from, why, who
    recorded it and when (with the collections and the history, every attempt of the order)."""
    with command_answers():
        order = commands.visible_order(session, order_id, caller_of(caller).site_scope)
    return [ManufacturingFailureView.of(row) for row in commands.manufacturing_failures_of(session, order)]


@router.post(
    "/orders/{order_id}/manufacturing-delay",
    summary="Record a delayed lot",
    status_code=status.HTTP_201_CREATED,
    response_model=ManufacturingDelayView,
    responses=problems.documented(409),
)
def record_manufacturing_delay(
    order_id: UUID,
    body: ManufacturingDelayRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
) -> ManufacturingDelayView:
    """A coordinator records that the lot in manufacturing is now expected to be released on
    `expected_release_on` (the manufacturing site's day), with a reason code (and a note if need be); who
    and when are recorded. `manufacturing.delayed.v1` carries the code, never the note: scheduling
    re-plans the release, the return shipment and the infusion within capacity and tells the sites. An
    order that is not in manufacturing is 409; a day in the past is 422."""
    with command_answers():
        delay = commands.record_manufacturing_delay(
            session,
            order_id,
            body.expected_release_on,
            body.reason_code,
            body.note,
            caller_of(caller),
            request.state.correlation_id,
        )
    session.commit()
    return ManufacturingDelayView.of(delay)


@router.get(
    "/orders/{order_id}/manufacturing-delays",
    summary="List an order's delayed lots",
    response_model=list[ManufacturingDelayView],
)
def list_manufacturing_delays(
    order_id: UUID, session: SessionDep, caller: OrderingCaller
) -> list[ManufacturingDelayView]:
    """Every delay recorded for the order's lots, oldest first: the new release day, why, who and when."""
    with command_answers():
        order = commands.visible_order(session, order_id, caller_of(caller).site_scope)
    return [ManufacturingDelayView.of(row) for row in commands.manufacturing_delays_of(session, order)]
