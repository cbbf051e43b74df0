"""COI tracking HTTP routes: couriers' scans, shipments, the custody ledger."""

from __future__ import annotations

import json
import re
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal
from uuid import UUID

import structlog
from cgt_contracts.envelope import IDENTIFIER_REGEX, CoiIdentifier, Identifier, utc_now
from cgt_contracts.events import QaReasonCode, ScanType, ShipmentLeg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi import Path as FastApiPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from pydantic.config import JsonDict
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.coi_tracking import commands, domain, epcis, epcis_binding, models
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.ledger import read_entries, verify_shipment_ledger
from services.coi_tracking.models import (
    Bag,
    CaptureJob,
    Container,
    QaDisposition,
    ScanRecord,
    Shipment,
    TemperatureReading,
)
from services.coi_tracking.runtime import RuntimeDep, TrackingRuntime
from services.coi_tracking.scan_writer import (
    OtherCourierCompany,
    ScanSubmission,
    ScanWriter,
    ShipmentNotFound,
)
from services.common import idempotency, problems
from services.common.auth import Principal, Role, require
from services.common.db import locked
from services.common.edge import EdgeRoute, Note, RequestModel, body_limit, json_body
from services.common.paging import Page, link_next, page_of
from services.common.problems import FieldError, ProblemError
from services.common.scope import not_found, visible_to
from services.common.service import db_session
from services.common.topics import COI_TRACKING_SOURCE
from services.common.unit_of_work import session_factory

SOURCE = COI_TRACKING_SOURCE
log = structlog.get_logger()
router = APIRouter(route_class=EdgeRoute, tags=["shipments"])

SessionDep = Annotated[Session, Depends(db_session)]
Reader = Annotated[
    Principal, Depends(require(Role.COORDINATOR, Role.COURIER, Role.TREATMENT_CENTER, Role.QA))
]
Courier = Annotated[Principal, Depends(require(Role.COURIER))]
IDENT_PATTERN = IDENTIFIER_REGEX
Ident = Identifier
Label = Annotated[str, Field(min_length=1, max_length=64)]

COI = "CHW4321260000014"
SHIPMENT_ID = "6a1f0c2e-8b3d-4f5a-9c7e-2d4b6f8a0c1e"
SCAN_RESULT_EXAMPLE: JsonDict = {
    "scan_id": "0b7e4c2a-1d3f-4a5b-8c6d-9e0f1a2b3c4d",
    "accepted": True,
    "refusal_reason": None,
    "coi_verified": True,
    "shipment_status": "dispatched",
    "quarantined": False,
    "quarantine_reason": None,
}


class ScanRequest(RequestModel):
    """One courier scan: what was read off the bag labels, where, when, and the logger's reading."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "scan_type": "pick_up",
                    "bag_cois": [COI],
                    "location": "AGC Biologics, Milan",
                    "device_time": "2026-12-01T09:00:00Z",
                    "container_id": "DS-4471",
                    "seal_id": "SEAL-88123",
                    "temperature_celsius": -182.5,
                    "eta_at": "2026-12-03T09:00:00Z",
                },
                {
                    "scan_type": "hand_off",
                    "bag_cois": [COI],
                    "location": "JFK cargo",
                    "device_time": "2026-12-02T06:40:00Z",
                    "temperature_celsius": -179.0,
                    "handed_to": "courier-cy",
                },
            ]
        }
    )

    scan_type: ScanType
    bag_cois: Annotated[list[Label], Field(max_length=20, description="COI read from each bag label")]
    container_id: Ident | None = None
    seal_id: Ident | None = None
    location: Annotated[str, Field(min_length=1, max_length=128)]
    device_time: AwareDatetime
    temperature_celsius: Annotated[float | None, Field(ge=-273.15, le=100.0)] = None
    handed_to: Ident | None = Field(default=None, description="Who takes custody (hand-off scans)")
    eta_at: AwareDatetime | None = Field(
        default=None, description="Expected delivery (pick-up and delay scans)"
    )


class ScanResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                SCAN_RESULT_EXAMPLE,
                SCAN_RESULT_EXAMPLE
                | {
                    "coi_verified": False,
                    "shipment_status": "quarantined",
                    "quarantined": True,
                    "quarantine_reason": "bag 1: label reads CHW4321260000022, not this shipment's COI",
                },
            ]
        }
    )

    scan_id: UUID
    accepted: bool
    refusal_reason: str | None
    coi_verified: bool
    shipment_status: ShipmentStatus
    quarantined: bool
    quarantine_reason: str | None


class ShipmentView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": SHIPMENT_ID,
                    "order_id": "3f2b8c1e-5d4a-4e8f-9a6b-1c2d3e4f5a6b",
                    "coi": COI,
                    "leg": "return",
                    "destination": "TC-BOSTON",
                    "min_celsius": None,
                    "max_transit_hours": None,
                    "container": {
                        "id": "DS-4471",
                        "kind": "dry_shipper",
                        "charged_at": "2026-12-01T03:00:00Z",
                        "validated_hold_hours": 240.0,
                        "seal_id": "SEAL-88123",
                    },
                    "status": "dispatched",
                    "physical_status": "dispatched",
                    "treatment_center_id": "TC-BOSTON",
                    "courier_company": "CRYO-EXPRESS",
                    "custodian": "courier-ben",
                    "storage_limit_celsius": -150.0,
                    "bags": [{"number": 1, "of": 1, "coi": COI, "din": None}],
                    "eta_at": "2026-12-03T09:00:00Z",
                    "delivered_at": None,
                    "quarantine_reason": None,
                    "max_temperature_celsius": -182.5,
                    "product_released_at": "2026-12-01T08:00:00Z",
                    "order_cancelled_at": None,
                    "lot_failed_at": None,
                }
            ]
        }
    )

    id: UUID
    order_id: UUID
    coi: str
    leg: str = Field(description="outbound: fresh cells to manufacturing; return: the product to the site")
    destination: str
    min_celsius: float | None
    max_transit_hours: float | None
    container: dict[str, Any] | None
    status: ShipmentStatus = Field(description="Where it stands, quarantine and QA disposition included")
    physical_status: ShipmentStatus = Field(
        description="Where it physically is (a quarantined one still moves)"
    )
    treatment_center_id: str
    courier_company: str
    custodian: str
    storage_limit_celsius: float
    bags: list[dict[str, Any]]
    eta_at: datetime | None
    delivered_at: datetime | None
    quarantine_reason: str | None
    max_temperature_celsius: float | None
    product_released_at: datetime | None = Field(
        default=None, description="Return leg: when the manufacturer released the product (pick-up allowed)"
    )
    order_cancelled_at: datetime | None = Field(
        default=None,
        description="When the order was cancelled: the shipment takes no scan (status cancelled)",
    )
    lot_failed_at: datetime | None = Field(
        default=None,
        description="Return leg: when its lot failed in manufacturing; it takes no scan (status cancelled)",
    )


LEDGER_ENTRY_EXAMPLE: JsonDict = {
    "sequence": 1,
    "kind": "custody",
    "from_party": "manufacturer:AGC-MILAN",
    "to_party": "courier-ben",
    "location": "AGC Biologics, Milan",
    "at": "2026-12-01T09:00:00Z",
    "signer": "Ben Courier",
    "meaning": "pick_up: custody handed over",
    "reason": "",
    "previous_sha256": "0" * 64,
    "entry_sha256": "5d41c0b2a8e3f7d6c9b4a1e0f3d2c5b8a7e6f9d0c3b2a5e4f7d8c1b0a9e2f3d4",
    "key_id": "ledger-2026-1",
    "signature": "q1Jx7M9gV0bE4pXn2cLwT8sR5dYhK3uA6fZ1oN0iW9mB2vC4xE7yQ8tG5jH3kL1aP6rS0uD9wF2zX4cV7bN8mA==",
}


class LedgerEntryView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [LEDGER_ENTRY_EXAMPLE]})

    sequence: int
    kind: str
    from_party: str
    to_party: str
    location: str
    at: datetime
    signer: str
    meaning: str
    reason: str
    previous_sha256: str
    entry_sha256: str
    key_id: str = Field(description="The ledger key that signed the entry")
    signature: str = Field(description="Base64 Ed25519 signature over the entry's hash")


class LedgerView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "shipment_id": SHIPMENT_ID,
                    "entries": [LEDGER_ENTRY_EXAMPLE],
                    "valid": True,
                    "broken_at_sequence": None,
                    "problem": None,
                }
            ]
        }
    )

    shipment_id: UUID
    entries: list[LedgerEntryView]
    valid: bool = Field(description="Every entry's hash and its link to the one before verified just now")
    broken_at_sequence: int | None = Field(description="The first entry changed, removed or reordered")
    problem: str | None


def _load_for_update(session: Session, shipment_id: UUID) -> Shipment:
    shipment = session.exec(locked(session, select(Shipment).where(Shipment.id == shipment_id))).first()
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("shipment"))
    return shipment


def _check_may_write(shipment: Shipment, caller: Principal) -> None:
    """Before a courier's write (readings, the dry shipper): another company's shipment is refused with
    the reason, as a scan of it is on every way in (HTTP, Kafka, EPCIS: `domain.other_company_refusal`).
    The courier names it from the labels in its hands; a read of it is the 404 of a missing one."""
    refusal = domain.other_company_refusal(shipment.courier_company, caller.company_scope)
    if refusal is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
    if not visible_to(caller.site_scope, shipment.treatment_center_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("shipment"))


def _view(session: Session, shipment: Shipment) -> ShipmentView:
    containers = session.exec(select(Container).where(Container.shipment_id == shipment.id)).all()
    bags = session.exec(select(Bag).where(Bag.shipment_id == shipment.id).order_by(col(Bag.number))).all()
    return ShipmentView(
        id=shipment.id,
        order_id=shipment.order_id,
        coi=shipment.coi,
        leg=shipment.leg,
        destination=shipment.destination,
        min_celsius=shipment.min_celsius,
        max_transit_hours=shipment.max_transit_hours,
        container=containers[0].model_dump(mode="json", exclude={"shipment_id"}) if containers else None,
        status=shipment.status,
        physical_status=shipment.physical_status,
        treatment_center_id=shipment.treatment_center_id,
        courier_company=shipment.courier_company,
        custodian=shipment.custodian,
        storage_limit_celsius=shipment.storage_limit_celsius,
        bags=[{"number": b.number, "of": b.of, "coi": b.coi, "din": b.din} for b in bags],
        eta_at=shipment.eta_at,
        delivered_at=shipment.delivered_at,
        quarantine_reason=shipment.quarantine_reason,
        max_temperature_celsius=shipment.max_temperature_celsius,
        product_released_at=shipment.product_released_at,
        order_cancelled_at=shipment.order_cancelled_at,
        lot_failed_at=shipment.lot_failed_at,
    )


@router.get("/shipments", summary="List shipments", response_model=list[ShipmentView])
def list_shipments(
    request: Request,
    response: Response,
    session: SessionDep,
    caller: Reader,
    page: Page,
    coi: CoiIdentifier | None = None,
    treatment_center_id: Ident | None = None,
    courier_company: Ident | None = None,
    leg: ShipmentLeg | None = None,
    shipment_status: Annotated[ShipmentStatus | None, Query(alias="status")] = None,
) -> list[ShipmentView]:
    """The shipments, oldest first, one page at a time (`limit`, `cursor`; the next page in `Link`), with their bags, container and status. Couriers see
    their company's shipments, treatment centers their site's, coordinators and QA all. Each filter given
    narrows the list: `coi` (the fresh cells' leg and the product's return leg of one chain-of-identity
    identifier), `treatment_center_id`, `courier_company` (outside the caller's scope: none), `leg`,
    `status`; a parameter that is not one of these is 422."""
    wanted = commands.ShipmentFilter(
        coi=coi,
        treatment_center_id=treatment_center_id,
        courier_company=courier_company,
        leg=leg,
        status=shipment_status,
    )
    shipments, next_cursor = commands.find_shipments(
        session, caller.site_scope, caller.company_scope, wanted, page
    )
    link_next(request, response, next_cursor)
    return [_view(session, shipment) for shipment in shipments]


@router.get("/shipments/{shipment_id}", summary="Read a shipment", response_model=ShipmentView)
def read_shipment(shipment_id: UUID, session: SessionDep, caller: Reader) -> ShipmentView:
    """One shipment with its bags, container, custodian, status and warmest temperature so far. A courier
    reads only its company's shipments, a treatment center its site's: another's is the same 404 as a
    shipment that does not exist."""
    shipment = _visible(session, shipment_id, caller)
    return _view(session, shipment)


def _actor(caller: Principal) -> commands.Actor:
    return commands.Actor(subject=caller.subject, printed_name=caller.display_name or caller.subject)


@router.post(
    "/shipments/{shipment_id}/scans",
    summary="Scan a shipment",
    status_code=status.HTTP_201_CREATED,
    response_model=ScanResult,
    responses=problems.documented(409),
)
async def post_scan(
    shipment_id: UUID,
    body: ScanRequest,
    request: Request,
    caller: Courier,
    runtime: RuntimeDep,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> ScanResult | JSONResponse:
    """Couriers post each scan: the COI read off every bag label, where and when, the shipper's
    temperature, the expected delivery (`eta_at`) at pick-up and delay, who takes custody (`handed_to`)
    at a hand-off. Only the courier company the shipment is assigned to may scan it (403).

    Every scan is stored, accepted or not: the answer says whether it was accepted and, if not, why. An
    accepted scan moves the shipment on (dispatched, in transit, delivered, received), and a change of
    custody is chained into the custody ledger. Another COI, a missing or extra bag, another container or
    seal (`coi.break.v1`), or a temperature above the limit (`temperature.excursion.v1`) quarantines the
    shipment at once, and scheduling holds the appointment. A delivery with every COI verified and a clean
    temperature record confirms the appointment.

    The same scan sent again (same type, time, bags, place, temperature…) is not stored twice: the answer
    is the first one's. With an `Idempotency-Key`, the same key again answers exactly as the first time
    (the same key with another scan is 422; while the first is still being answered, 409)."""
    keyed = idempotency.keyed_request(
        caller.subject, idempotency_key, f"POST /shipments/{shipment_id}/scans", body.model_dump(mode="json")
    )
    claim = await run_in_threadpool(idempotency.claim, runtime.engine, keyed)
    if claim.answer is not None:
        return claim.answer.response()
    try:
        result = await _scan(runtime.scan_writer, shipment_id, body, request, caller)
    except BaseException:  # nothing was stored: the key may be used again
        await run_in_threadpool(claim.release, runtime.engine)
        raise
    # Committed with the scan's group: a crash before this only means a retry, which the scan's content
    # digest answers with the same scan.
    await run_in_threadpool(
        claim.complete, runtime.engine, status.HTTP_201_CREATED, result.model_dump(mode="json")
    )
    return result


async def _scan(
    writer: ScanWriter, shipment_id: UUID, body: ScanRequest, request: Request, caller: Principal
) -> ScanResult:
    # Scans that arrive together are committed together, in one transaction (see `scan_writer`).
    assert caller.courier_company is not None  # a courier principal always names its company
    try:
        outcome = await writer.submit(
            ScanSubmission(
                shipment_id=shipment_id,
                scan=commands.ScanInput(
                    scan_type=body.scan_type,
                    bag_cois=tuple(body.bag_cois),
                    location=body.location,
                    device_time=body.device_time,
                    temperature_celsius=body.temperature_celsius,
                    container_id=body.container_id,
                    seal_id=body.seal_id,
                    handed_to=body.handed_to,
                    eta_at=body.eta_at,
                ),
                actor=_actor(caller),
                courier_company=caller.courier_company,
                correlation_id=request.state.correlation_id,
            )
        )
    except ShipmentNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error
    except OtherCourierCompany as error:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "this shipment is assigned to another courier company"
        ) from error
    return ScanResult.model_validate(outcome, from_attributes=True)


class ReadingIn(RequestModel):
    at: AwareDatetime
    celsius: Annotated[float, Field(ge=-273.15, le=100.0)]


class ReadingsRequest(RequestModel):
    """Readings downloaded from the shipment's data logger."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "logger_id": "LOG-77",
                    "readings": [
                        {"at": "2026-12-02T06:35:00Z", "celsius": -180.4},
                        {"at": "2026-12-02T06:40:00Z", "celsius": -179.9},
                    ],
                }
            ]
        }
    )

    logger_id: Ident
    readings: Annotated[list[ReadingIn], Field(min_length=1, max_length=5000)]


READINGS_BODY_LIMIT = 512 * 1024
"""A full batch (5,000 readings) is about 300 kB."""


class ReadingsResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"stored": 2, "excursions": [], "quarantined": False}]}
    )

    stored: int
    excursions: list[str] = Field(description="What was out of range, missing or past the hold time")
    quarantined: bool


class ReadingOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"at": "2026-12-02T06:35:00Z", "celsius": -180.4, "source": "logger:LOG-77"}]
        }
    )

    at: datetime
    celsius: float
    source: str = Field(
        description="logger:<logger id>, scan for a courier's reading, epcis for an EPCIS sensor report"
    )


@router.post(
    "/shipments/{shipment_id}/readings",
    summary="Upload logger readings",
    status_code=status.HTTP_201_CREATED,
    response_model=ReadingsResult,
    openapi_extra=body_limit(READINGS_BODY_LIMIT),
    responses=problems.documented(409),
)
def post_readings(
    shipment_id: UUID,
    body: ReadingsRequest,
    request: Request,
    session: SessionDep,
    caller: Courier,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> ReadingsResult | JSONResponse:
    """Couriers upload the readings of the shipment's data logger (at most 5,000 at once). A reading out
    of range, a gap in the record or a shipper past its validated hold time quarantines the shipment
    (`temperature.excursion.v1`, and scheduling holds the appointment); `excursions` says what was found.
    Only the courier company the shipment is assigned to may upload (403). With an `Idempotency-Key`,
    the same key again answers as the first time and stores nothing (another batch with it is 422;
    while the first is still being answered, 409)."""
    keyed = idempotency.keyed_request(
        caller.subject,
        idempotency_key,
        f"POST /shipments/{shipment_id}/readings",
        body.model_dump(mode="json"),
    )
    with idempotency.claimed(session, keyed) as claim:  # claimed before the shipment's lock is taken
        if claim.answer is not None:
            return claim.answer.response()
        shipment = _load_for_update(session, shipment_id)
        _check_may_write(shipment, caller)
        outcome = commands.record_readings(
            session,
            shipment,
            [domain.Reading(r.at, r.celsius) for r in body.readings],
            f"logger:{body.logger_id}",
            request.state.correlation_id,
        )
        result = ReadingsResult(
            stored=outcome.stored, excursions=outcome.excursions, quarantined=outcome.quarantined
        )
        claim.keep(session, status.HTTP_201_CREATED, result.model_dump(mode="json"))
        session.commit()
    return result


@router.get(
    "/shipments/{shipment_id}/readings",
    summary="Read a shipment's temperatures",
    response_model=list[ReadingOut],
)
def read_readings(
    shipment_id: UUID, request: Request, response: Response, session: SessionDep, caller: Reader, page: Page
) -> list[ReadingOut]:
    """The shipment's temperature record, oldest first: the logger's readings and those of the scans, a
    page at a time (`limit`, `cursor`; the next page in `Link`)."""
    shipment = _visible(session, shipment_id, caller)
    query = select(TemperatureReading).where(TemperatureReading.shipment_id == shipment.id)
    key = (col(TemperatureReading.read_at), col(TemperatureReading.id))
    rows, next_cursor = page_of(session, query, TemperatureReading, page, key=key)
    link_next(request, response, next_cursor)
    return [ReadingOut(at=r.read_at, celsius=r.celsius, source=r.source) for r in rows]


class ContainerRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "container_id": "DS-4471",
                    "charged_at": "2026-12-01T03:00:00Z",
                    "validated_hold_hours": 240,
                    "seal_id": "SEAL-88123",
                    "logger_interval_minutes": 5,
                }
            ]
        }
    )

    container_id: Ident
    charged_at: AwareDatetime
    validated_hold_hours: Annotated[float, Field(gt=0, le=24 * 30)]
    seal_id: Ident | None = None
    logger_interval_minutes: Annotated[float | None, Field(gt=0, le=24 * 60)] = None


@router.put(
    "/shipments/{shipment_id}/container",
    summary="Declare the dry shipper",
    response_model=ShipmentView,
    responses=problems.documented(409),
)
def declare_container(
    shipment_id: UUID,
    body: ContainerRequest,
    session: SessionDep,
    caller: Annotated[Principal, Depends(require(Role.COURIER, Role.COORDINATOR))],
) -> ShipmentView:
    """Couriers (or coordinators) declare the dry shipper packed for the shipment, before pick-up: its
    id, when it was charged, its validated hold time, its seal and the logger's interval. Scans are then
    checked against this container and seal, and the shipment is quarantined when the hold time runs out.
    After pick-up, or with a container id declared for another shipment, it is 409."""
    shipment = _load_for_update(session, shipment_id)
    _check_may_write(shipment, caller)
    try:
        commands.declare_container(session, shipment, **body.model_dump())
        session.commit()
    except commands.Refused as refused:
        raise problems.conflict(str(refused)) from refused
    except IntegrityError as error:  # another shipment declared the same container id meanwhile
        raise problems.conflict("this container id is already declared for another shipment") from error
    return _view(session, shipment)


PinField = Annotated[SecretStr, Field(max_length=256)]
"""A signing PIN as sent: a secret (never in a log line, a repr or an answer), bounded in size; what makes
one acceptable is the domain's rule."""
SIGNATURE_REFUSED = f"{problems.TYPE_PREFIX}signature-refused"


class DispositionRequest(RequestModel):
    """A QA electronic signature: the decision, why (a code, and a note if need be), and what the signature
    means."""

    decision: domain.Disposition
    reason_code: QaReasonCode = Field(
        description="Why, from a closed list: a release gives product_within_limits, logger_fault, "
        "within_stability_data, identity_confirmed or record_corrected; a rejection "
        "temperature_compromised, identity_not_confirmed, container_compromised or product_damaged; "
        "either may give other (with a note). The code is what the other services are told."
    )
    note: Note | None = None
    meaning: domain.SignatureMeaning = Field(
        description="What the signature means: approval for a release, rejection for a rejection (required)"
    )
    signing_pin: PinField = Field(
        description="The signer's signing PIN, the signature's second identification component (required)"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decision": "release",
                    "reason_code": "product_within_limits",
                    "note": "logger spike during courier swap; product probe below -150 °C",
                    "meaning": "approval",
                    "signing_pin": "24681357",
                }
            ]
        }
    )


class DispositionView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "e4d3c2b1-a0f9-4e8d-b7c6-a5b4c3d2e1f0",
                    "decision": "release",
                    "reason_code": "product_within_limits",
                    "note": "logger spike during courier swap; product probe below -150 °C",
                    "meaning": "approval",
                    "signer_id": "qa-jr",
                    "signer_printed_name": "J. Rivera (QA)",
                    "signed_at": "2026-12-02T11:20:00Z",
                    "ledger_sequence": 4,
                }
            ]
        }
    )

    id: UUID
    decision: str
    reason_code: QaReasonCode = Field(description="Why (`other` for a disposition signed before codes)")
    note: str | None = Field(description="The signer's note, if any (before codes: the reason as typed)")
    meaning: str
    signer_id: str
    signer_printed_name: str
    signed_at: datetime
    ledger_sequence: int

    @classmethod
    def of(cls, row: QaDisposition) -> DispositionView:
        return cls(
            id=row.id,
            decision=row.decision,
            reason_code=QaReasonCode(row.reason_code) if row.reason_code else QaReasonCode.OTHER,
            note=row.reason or None,
            meaning=row.meaning,
            signer_id=row.signer_id,
            signer_printed_name=row.signer_printed_name,
            signed_at=row.signed_at,
            ledger_sequence=row.ledger_sequence,
        )


@router.post(
    "/shipments/{shipment_id}/dispositions",
    summary="Release or reject a quarantined shipment",
    status_code=status.HTTP_201_CREATED,
    response_model=DispositionView,
    responses=problems.documented(403, 409),
)
def post_disposition(
    shipment_id: UUID,
    body: DispositionRequest,
    request: Request,
    session: SessionDep,
    caller: Annotated[Principal, Depends(require(Role.QA))],
) -> DispositionView:
    """QA signs the disposition of a quarantined shipment: `release` or `reject`, why (`reason_code`, and a
    `note` if need be), and what the signature means. The printed name is the caller's registered identity
    and the time the server's (21 CFR Part 11 §11.50); the signature, its code and its note are chained into
    the custody ledger. A release publishes `shipment.released.v2` and the appointment resumes; a rejection
    publishes `shipment.rejected.v2` and the product must not be infused. Both carry the code, never the
    note: it is read here, with the disposition. A code the decision cannot give is 422 naming
    `reason_code`. Only QA signs (403), each time with their signing PIN (21 CFR Part 11 §11.200): a wrong
    one, or none enrolled, is 403 `urn:cgt:problem:signature-refused` and nothing is signed; five
    consecutive wrong PINs block the signer until a coordinator resets the enrolment. A shipment that is
    not quarantined is 409."""
    shipment = _load_for_update(session, shipment_id)
    try:
        disposition = commands.record_disposition(
            session,
            shipment,
            decision=body.decision,
            reason_code=body.reason_code,
            note=body.note,
            meaning=body.meaning,
            signer=_actor(caller),
            signing_pin=body.signing_pin.get_secret_value(),
            correlation_id=request.state.correlation_id,
        )
    except commands.SigningRefused as refused:
        session.commit()  # the wrong try is counted although nothing is signed
        raise _signature_refused(refused) from refused
    except commands.InvalidField as invalid:
        raise problems.invalid("body", invalid.field, invalid.detail) from invalid
    except commands.Refused as refused:
        raise problems.conflict(str(refused)) from refused
    session.commit()
    return DispositionView.of(disposition)


@router.get(
    "/shipments/{shipment_id}/dispositions",
    summary="List a shipment's dispositions",
    response_model=list[DispositionView],
)
def list_dispositions(shipment_id: UUID, session: SessionDep, caller: Reader) -> list[DispositionView]:
    """QA's signed releases and rejections of the shipment, oldest first."""
    shipment = _visible(session, shipment_id, caller)
    rows = session.exec(
        select(QaDisposition)
        .where(QaDisposition.shipment_id == shipment.id)
        .order_by(col(QaDisposition.signed_at))
    )
    return [DispositionView.of(r) for r in rows]


def _signature_refused(refused: commands.SigningRefused) -> ProblemError:
    # 403, not 401: the bearer token did authenticate the caller, and a 401 asks for HTTP authentication
    # again (with a WWW-Authenticate challenge). What failed is the signature's own second component, sent
    # in the body: the server understood the request and refuses to sign (RFC 9110 §15.5.4).
    refusal = refused.check.refusal
    return ProblemError(
        status.HTTP_403_FORBIDDEN,
        refused.check.detail,
        type=SIGNATURE_REFUSED,
        title="The signature was refused",
        extensions={"refusal": refusal.value if refusal else None},
    )


class SigningPinRequest(RequestModel):
    """A QA signer's own signing PIN: the first one alone; a new one with the current one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"signing_pin": "97315864"},
                {"signing_pin": "97315864", "current_signing_pin": "24681357"},
            ]
        }
    )

    signing_pin: PinField = Field(
        description="The new PIN: 8 to 128 printable characters, not one repeated, not a run such as "
        "12345678, not holding the signer's id"
    )
    current_signing_pin: PinField | None = Field(
        default=None, description="The PIN enrolled now (required to change it)"
    )


class SigningPinView(BaseModel):
    """Whether a QA signer has a signing PIN and since when (never the PIN, nor its hash)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"signer_id": "qa-jr", "enrolled": True, "pin_set_at": "2026-12-02T11:20:00Z"},
                {"signer_id": "qa-mk", "enrolled": False, "pin_set_at": None},
            ]
        }
    )

    signer_id: str
    enrolled: bool
    pin_set_at: datetime | None


@router.put(
    "/qa-signers/me/signing-pin",
    summary="Set my signing PIN",
    tags=["qa-signers"],
    response_model=SigningPinView,
    responses=problems.documented(409),
)
def put_signing_pin(
    body: SigningPinRequest, session: SessionDep, caller: Annotated[Principal, Depends(require(Role.QA))]
) -> SigningPinView:
    """A QA signer enrols the signing PIN every disposition of theirs then needs (21 CFR Part 11 §11.200:
    the second identification component beside the bearer token), or changes it with the current one. Only
    a salted hash is kept; the PIN is never shown again. A weak PIN, or a change without the current PIN,
    is 422 naming the field; a wrong current PIN counts as a wrong signature and is 403, as is a blocked
    signer's (a coordinator resets the enrolment first). A concurrent first enrolment is 409."""
    current = body.current_signing_pin.get_secret_value() if body.current_signing_pin else None
    try:
        signer = commands.set_signing_pin(
            session, _actor(caller), current, body.signing_pin.get_secret_value()
        )
        session.commit()
    except commands.SigningRefused as refused:
        session.commit()  # a wrong current PIN is counted like a wrong signature
        raise _signature_refused(refused) from refused
    except commands.SigningPinInvalid as invalid:
        raise problems.invalid("body", invalid.field, invalid.detail) from invalid
    except IntegrityError as error:  # the signer's first enrolment, twice at once
        raise problems.conflict("a signing PIN was enrolled for this signer meanwhile; try again") from error
    return SigningPinView(signer_id=signer.signer_id, enrolled=True, pin_set_at=signer.pin_set_at)


@router.delete(
    "/qa-signers/{signer_id}/signing-pin",
    summary="Reset a QA signer's signing PIN",
    tags=["qa-signers"],
    response_model=SigningPinView,
)
def reset_signing_pin(
    signer_id: Annotated[str, FastApiPath(min_length=1, max_length=64, pattern=IDENT_PATTERN)],
    session: SessionDep,
    caller: Annotated[Principal, Depends(require(Role.COORDINATOR))],
) -> SigningPinView:
    """A coordinator withdraws a QA signer's signing PIN, when it is forgotten or signing was blocked
    after five consecutive wrong PINs (21 CFR Part 11 §11.300(d)); the signer then sets a new one and signs
    again. A signer without a PIN is 404."""
    if not commands.reset_signing_pin(session, signer_id, _actor(caller)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this signer has no signing PIN to reset")
    session.commit()
    return SigningPinView(signer_id=signer_id, enrolled=False, pin_set_at=None)


def _visible(session: Session, shipment_id: UUID, caller: Principal) -> Shipment:
    """The shipment the caller may read: a missing one, another site's (a treatment center) and another
    company's (a courier) are the same 404, word for word, naming no id."""
    shipment = commands.visible_shipment(session, shipment_id, caller.site_scope, caller.company_scope)
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("shipment"))
    return shipment


SCAN_RECORD_EXAMPLE: JsonDict = {
    "id": "0b7e4c2a-1d3f-4a5b-8c6d-9e0f1a2b3c4d",
    "shipment_id": SHIPMENT_ID,
    "scan_type": "pick_up",
    "bag_cois": [COI],
    "container_id": "DS-4471",
    "seal_id": "SEAL-88123",
    "location": "AGC Biologics, Milan",
    "scanned_by": "courier-ben",
    "handed_to": None,
    "device_time": "2026-12-01T09:00:00Z",
    "received_at": "2026-12-01T09:00:01.250000Z",
    "temperature_celsius": -182.5,
    "accepted": True,
    "refusal_reason": None,
    "coi_verified": True,
    "epcis_event_id": None,
    "epcis_event_hash": None,
    "retracted_at": None,
    "retraction_reason": None,
}


@router.get(
    "/shipments/{shipment_id}/scans",
    summary="List a shipment's scans",
    responses={200: {"content": {"application/json": {"example": [SCAN_RECORD_EXAMPLE]}}}},
)
def list_scans(shipment_id: UUID, session: SessionDep, caller: Reader) -> list[dict[str, Any]]:
    """Every scan of the shipment in the order received, accepted or refused (with why), including those
    that came from EPCIS capture (`epcis_event_id`)."""
    _visible(session, shipment_id, caller)
    rows = session.exec(
        select(ScanRecord).where(ScanRecord.shipment_id == shipment_id).order_by(col(ScanRecord.received_at))
    )
    return [row.model_dump(mode="json") | {"bag_cois": json.loads(row.bag_cois)} for row in rows]


@router.get(
    "/shipments/{shipment_id}/ledger", summary="Read and verify the custody ledger", response_model=LedgerView
)
def read_ledger(shipment_id: UUID, session: SessionDep, caller: Reader) -> LedgerView:
    """Every change of custody, quarantine and QA signature of the shipment, in order. Each read verifies
    the SHA-256 chain, every entry's Ed25519 signature and the last signed head recorded for publication:
    `valid` is false when an entry was changed (even with its hashes recomputed), removed, reordered or
    signed by an unknown key, and `broken_at_sequence` names the first. The command line verifier also
    checks the heads published on the broker (docs/ledger.md)."""
    shipment = _visible(session, shipment_id, caller)
    verification = verify_shipment_ledger(session, shipment)
    return LedgerView(
        shipment_id=shipment.id,
        entries=[
            LedgerEntryView.model_validate(e, from_attributes=True) for e in read_entries(session, shipment)
        ],
        valid=verification.valid,
        broken_at_sequence=verification.broken_at_sequence,
        problem=verification.problem,
    )


MAX_CAPTURE_BYTES = epcis_binding.MAX_CAPTURE_BYTES
EPCIS_INVALID = epcis_binding.VALIDATION


class CaptureEventResult(BaseModel):
    event_index: int
    event_id: str | None
    outcome: Literal["applied", "duplicate", "refused", "not_applied"] = Field(
        description="applied (a scan, readings, an aggregation or a retraction), duplicate (its eventID was "
        "captured before with the same event hash, or the same scan was recorded before under another eventID: "
        "stored once), refused (with the reason; its temperatures are judged all "
        "the same), or not_applied (rolled back)"
    )
    reason: str | None
    shipment_id: UUID | None
    scan: ScanResult | None


class CaptureError(BaseModel):
    """One refused event of a capture as the binding's RFC 7807 problem: where it was and why, not what
    it held."""

    model_config = ConfigDict(populate_by_name=True)

    type: str = Field(examples=[epcis_binding.EVENT_REFUSED])
    title: str
    status: int
    detail: str
    event_index: int | None = Field(
        default=None, alias="eventIndex", description="Its place in the document's events"
    )
    event_id: str | None = Field(default=None, alias="eventID")


CAPTURE_EVENT_ID = "urn:uuid:5f0c6e1a-2b3d-4c5e-8f9a-0b1c2d3e4f5a"
CAPTURE_EXAMPLE: JsonDict = {
    "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
    "type": "EPCISDocument",
    "schemaVersion": "2.0",
    "creationDate": "2026-12-02T15:05:00Z",
    "epcisBody": {
        "eventList": [
            {
                "type": "ObjectEvent",
                "eventID": CAPTURE_EVENT_ID,
                "action": "OBSERVE",
                "bizStep": "accepting",
                "epcList": [f"urn:epc:id:giai:4012345.{COI}"],
                "eventTime": "2026-12-02T15:00:00Z",
                "eventTimeZoneOffset": "+00:00",
                "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
                "sensorElementList": [
                    {"sensorReport": [{"type": "Temperature", "value": -178.0, "uom": "CEL"}]}
                ],
            }
        ]
    },
}


class CaptureJobView(BaseModel):
    """The binding's CaptureJob; `events` is COI tracking's extension (the binding allows more members)."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "captureID": "7c6b5a49-3827-4165-9f0e-d1c2b3a4f5e6",
                    "createdAt": "2026-12-02T15:05:01.120000Z",
                    "finishedAt": "2026-12-02T15:05:01.180000Z",
                    "running": False,
                    "success": True,
                    "captureErrorBehaviour": "rollback",
                    "errors": [],
                    "events": [
                        {
                            "event_index": 0,
                            "event_id": CAPTURE_EVENT_ID,
                            "outcome": "applied",
                            "reason": None,
                            "shipment_id": SHIPMENT_ID,
                            "scan": SCAN_RESULT_EXAMPLE | {"shipment_status": "received"},
                        }
                    ],
                }
            ]
        },
    )

    capture_id: UUID = Field(alias="captureID")
    created_at: datetime = Field(alias="createdAt", description="When the document was admitted")
    finished_at: datetime = Field(alias="finishedAt", description="When its events were applied")
    running: bool = Field(description="Always false: a capture is applied before it is answered")
    success: bool = Field(description="False when any event was refused (or the document had none)")
    capture_error_behaviour: Literal["rollback", "proceed"] = Field(alias="captureErrorBehaviour")
    errors: list[CaptureError] = Field(description="One problem per refused event; empty on success")
    events: list[CaptureEventResult] = Field(description="Extension: what became of each event")


EpcisVersion = Annotated[str | None, Header(alias=epcis_binding.EPCIS_VERSION_HEADER, max_length=64)]
CbvVersion = Annotated[str | None, Header(alias=epcis_binding.CBV_VERSION_HEADER, max_length=64)]


def _gs1_versions(epcis_version: EpcisVersion = None, cbv_version: CbvVersion = None) -> None:
    """A request may name the EPCIS and CBV versions it speaks: 2.0.0, else the binding's refusal."""
    for header, value, supported in (
        (epcis_binding.EPCIS_VERSION_HEADER, epcis_version, epcis_binding.EPCIS_VERSION),
        (epcis_binding.CBV_VERSION_HEADER, cbv_version, epcis_binding.CBV_VERSION),
    ):
        refusal = epcis_binding.version_refusal(header, value, supported)
        if refusal is not None:
            raise _binding_problem(refusal, location="header")


def _binding_problem(refusal: epcis_binding.Refusal, *, location: str = "body") -> ProblemError:
    headers = epcis_binding.response_headers()
    if refusal.status == 413:
        headers |= epcis_binding.limit_headers()
    return ProblemError(
        refusal.status,
        refusal.detail,
        type=refusal.type,
        title=HTTPStatus(refusal.status).phrase,
        errors=[
            FieldError(
                location=location, pointer=problems.pointer(refusal.field.split("/")), detail=refusal.detail
            )
        ],
        headers=headers,
    )


Gs1Versions = Annotated[None, Depends(_gs1_versions)]
_EDGE_HEADERS = {status: epcis_binding.response_headers() for status in (400, 415)} | {
    413: epcis_binding.response_headers() | epcis_binding.limit_headers()
}


@router.post(
    "/capture",
    summary="Capture EPCIS events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CaptureJobView,
    tags=["epcis"],
    responses=problems.documented(406),
    openapi_extra=json_body(
        limit=MAX_CAPTURE_BYTES,
        media_types=("application/json", "application/ld+json"),
        schema={
            "type": "object",
            "description": "An EPCIS 2.0 EPCISDocument (JSON / JSON-LD)",
            "examples": [CAPTURE_EXAMPLE],
        },
        problem_types={
            400: epcis_binding.VALIDATION,
            413: epcis_binding.CAPTURE_LIMIT_EXCEEDED,
            415: epcis_binding.UNSUPPORTED_MEDIA_TYPE,
        },
        problem_headers=_EDGE_HEADERS,
    ),
)
async def epcis_capture(
    request: Request,
    response: Response,
    caller: Courier,
    runtime: RuntimeDep,
    _versions: Gs1Versions,
    capture_error_behaviour: Annotated[
        Literal["rollback", "proceed"], Header(alias=epcis_binding.ERROR_BEHAVIOUR_HEADER)
    ] = "rollback",
) -> CaptureJobView:
    """Couriers' systems post a GS1 EPCIS 2.0 document (JSON or JSON-LD, at most 2 MB and 10,000 events:
    413 `epcisException:CaptureLimitExceededException` beyond; `OPTIONS /capture` tells both). It must pass the
    EPCIS 2.0 JSON Schema (400 `epcisException:ValidationException` lists every problem), in any form the
    simplified context allows (`@type` for `type`, a blank-node document `id`). `GS1-EPCIS-Version` and
    `GS1-CBV-Version` are 2.0.0 (another: 406). Its events are applied in eventTime order, each under
    the same rules as `POST /shipments/{shipment_id}/scans` and `/readings`: an ObjectEvent OBSERVE with
    bizStep `shipping` is a pick-up, `departing`/`arriving`/… a checkpoint, `receiving` a delivery,
    `accepting` a receipt; `inspecting` and `sensor_reporting` events, TransactionEvents and
    AggregationEvents (bags packed into or unpacked from the shipper) carry readings; every temperature of
    every event that names a shipment (its bags, its container as parentID, or urn:uuid:<shipment id> as
    bizTransaction) is judged, a sensor alarm quarantines. An eventID captured before is a duplicate when
    its EPCIS event hash is the same and a conflict (refused, the shipment put before QA) when it is not;
    an errorDeclaration retracts the event it declares and puts the shipment before QA. Other events are
    refused. With `GS1-Capture-Error-Behaviour: rollback` (the default) no event is applied if any is
    refused (temperatures and conflicts are still judged); with `proceed` the others are. The answer is
    202 with `Location: /capture/{captureID}` and the capture job (the binding's shape: `errors` holds a
    problem per refused event; `events` what became of each), which can be read again there."""
    created_at = utc_now()
    document = await request.json()  # admitted by the edge: UTF-8, within the limit, finite, not too deep
    too_many = epcis_binding.capture_limit_refusal(document)
    if too_many is not None:
        raise _binding_problem(too_many)
    document, errors = epcis_binding.jsonld_forms(document)
    errors += epcis.validate_document(document, runtime.epcis_validator, limit=50)
    if errors:
        raise ProblemError(
            400,
            f"the document fails the EPCIS 2.0 JSON Schema ({len(errors)} problems)",
            type=EPCIS_INVALID,
            title="EPCIS document fails the EPCIS 2.0 JSON Schema",
            errors=[_schema_error(line) for line in errors],
            headers=epcis_binding.response_headers(),
        )
    assert isinstance(document, dict)  # validate_document refuses anything else
    outcomes = epcis.interpret(document)
    job = await run_in_threadpool(
        _apply_capture, runtime, request, caller, outcomes, capture_error_behaviour, created_at
    )
    response.headers["Location"] = f"/capture/{job.capture_id}"
    response.headers.update(epcis_binding.response_headers())
    return job


def _schema_error(line: str) -> FieldError:
    """`$.epcisBody.eventList[0].bizStep: message` as a field error with a JSON pointer."""
    path, _, message = line.partition(": ")
    segments = [s for s in re.split(r"\.|\[|\]", path.removeprefix("$")) if s]
    return FieldError(pointer=problems.pointer([s.strip("'") for s in segments]), detail=message)


def _apply_capture(
    runtime: TrackingRuntime,
    request: Request,
    caller: Principal,
    outcomes: list[epcis.Outcome],
    behaviour: Literal["rollback", "proceed"],
    created_at: datetime,
) -> CaptureJobView:
    with session_factory(runtime.engine)() as session:
        results = commands.capture(
            session,
            outcomes,
            _actor(caller),
            caller.courier_company,
            rollback_on_error=behaviour == "rollback",
            correlation_id=request.state.correlation_id,
        )
        success = all(r.outcome in ("applied", "duplicate") for r in results) and bool(results)
        view_events = [
            CaptureEventResult(
                event_index=r.event_index,
                event_id=r.event_id,
                outcome=r.outcome,
                reason=r.reason,
                shipment_id=r.shipment_id,
                scan=ScanResult.model_validate(r.scan, from_attributes=True) if r.scan else None,
            )
            for r in results
        ]
        job = CaptureJob(
            captured_by=caller.subject,
            received_at=created_at,
            finished_at=utc_now(),
            status="succeeded" if success else "failed",
            result=json.dumps(
                {
                    "capture_error_behaviour": behaviour,
                    "events": [e.model_dump(mode="json") for e in view_events],
                }
            ),
        )
        session.add(job)
        session.commit()
        return _job_view(job)


def _job_view(job: CaptureJob) -> CaptureJobView:
    """The stored job in the binding's shape; `errors` derived from the stored outcomes, so a job kept
    before they were problems reads the same way."""
    result = json.loads(job.result)
    events = result["events"]
    return CaptureJobView(
        capture_id=job.id,
        created_at=job.received_at,
        finished_at=job.finished_at or job.received_at,
        running=False,
        success=job.status == "succeeded",
        capture_error_behaviour=result["capture_error_behaviour"],
        errors=[CaptureError.model_validate(e) for e in epcis_binding.job_errors(events)],
        events=[CaptureEventResult.model_validate(e) for e in events],
    )


def _own_job(session: Session, capture_id: UUID, caller: Principal) -> CaptureJob:
    job = session.get(CaptureJob, capture_id)
    if job is None or job.captured_by != caller.subject:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("capture"))
    return job


@router.get(
    "/capture/{capture_id}",
    summary="Read a capture's result",
    response_model=CaptureJobView,
    tags=["epcis"],
    responses=problems.documented(400, 406),  # the GS1 version headers, as on the capture
)
def read_capture(
    capture_id: UUID, response: Response, session: SessionDep, caller: Courier, _versions: Gs1Versions
) -> CaptureJobView:
    """The capture job: what became of each event of a capture: applied (with its scan's result),
    duplicate, refused with the reason (also in `errors`), or not applied (rolled back). Only the courier
    who posted it reads it (404 otherwise)."""
    job = _own_job(session, capture_id, caller)
    response.headers.update(epcis_binding.response_headers())
    return _job_view(job)


def _discovery(*names: str) -> dict[int | str, dict[str, Any]]:
    """The 204 of a discovery: no body, its headers documented."""
    headers = {name: {"schema": {"type": "string"}, "description": DISCOVERY_HEADERS[name]} for name in names}
    return {204: {"description": "What the resource supports, in the headers", "headers": headers}}


DISCOVERY_HEADERS = {
    "Allow": "The methods of the resource",
    epcis_binding.EPCIS_VERSION_HEADER: f"The EPCIS version ({epcis_binding.EPCIS_VERSION})",
    epcis_binding.CBV_VERSION_HEADER: f"The CBV version ({epcis_binding.CBV_VERSION})",
    epcis_binding.CAPTURE_LIMIT_HEADER: f"Events per capture ({epcis_binding.MAX_CAPTURE_EVENTS})",
    epcis_binding.FILE_SIZE_LIMIT_HEADER: f"Bytes per capture ({epcis_binding.MAX_CAPTURE_BYTES})",
    epcis_binding.ERROR_BEHAVIOUR_HEADER: "all: rollback and proceed are both supported",
}


@router.options(
    "/capture",
    summary="Discover what capture supports",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_discovery(*DISCOVERY_HEADERS),
    tags=["epcis"],
)
def discover_capture(_: Courier) -> Response:
    """The binding's discovery: `Allow`, the EPCIS and CBV versions (`GS1-EPCIS-Version`, `GS1-CBV-Version`),
    the limits (`GS1-EPCIS-Capture-Limit` events, `GS1-EPCIS-Capture-File-Size-Limit` bytes) and
    `GS1-Capture-Error-Behaviour: all` (rollback and proceed are both supported)."""
    headers = {"Allow": "OPTIONS, POST"} | epcis_binding.response_headers() | epcis_binding.limit_headers()
    headers[epcis_binding.ERROR_BEHAVIOUR_HEADER] = epcis_binding.ALL_BEHAVIOURS
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@router.options(
    "/capture/{capture_id}",
    summary="Discover a capture job's metadata",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_discovery("Allow", epcis_binding.EPCIS_VERSION_HEADER, epcis_binding.CBV_VERSION_HEADER),
    tags=["epcis"],
)
def discover_capture_job(capture_id: UUID, session: SessionDep, caller: Courier) -> Response:
    """`Allow` and the versions the capture job was made with; another courier's job is a 404."""
    _own_job(session, capture_id, caller)
    headers = {"Allow": "OPTIONS, GET"} | epcis_binding.response_headers()
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


# ---------------------------------------------------------------- the courier registry (I3)

Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]


class CourierBody(RequestModel):
    """A courier who may hold shipments of their company (custody passes only to a registered courier)."""

    company: Ident
    display_name: Annotated[str, Field(max_length=128)] = ""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"company": "CRYO-EXPRESS", "display_name": "Eve Courier"}]}
    )


class CourierView(BaseModel):
    id: str
    company: str
    display_name: str

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [{"id": "courier-eve", "company": "CRYO-EXPRESS", "display_name": "Eve Courier"}]
        },
    )


@router.put(
    "/couriers/{courier_id}", summary="Register a courier", response_model=CourierView, tags=["couriers"]
)
def register_courier(
    courier_id: Annotated[str, FastApiPath(pattern=IDENT_PATTERN, max_length=64)],
    body: CourierBody,
    session: SessionDep,
    _: Coordinator,
) -> CourierView:
    """Coordinators register a courier (the id their scans and hand-offs name) and the company they work
    for, or change it. A pick-up must come from, and a hand-off go to, a registered courier of the company
    that carries the shipment; the custody ledger names no one else."""
    courier = session.get(models.Courier, courier_id) or models.Courier(id=courier_id, company=body.company)
    courier.company = body.company
    courier.display_name = body.display_name
    session.add(courier)
    session.commit()
    return CourierView.model_validate(courier)


@router.get(
    "/couriers", summary="List the registered couriers", response_model=list[CourierView], tags=["couriers"]
)
def list_couriers(
    request: Request,
    response: Response,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Role.COORDINATOR, Role.QA))],
    page: Page,
) -> list[CourierView]:
    """Every registered courier and their company, by id, a page at a time (coordinators and QA)."""
    key = (col(models.Courier.id),)
    rows, next_cursor = page_of(session, select(models.Courier), models.Courier, page, key=key)
    link_next(request, response, next_cursor)
    return [CourierView.model_validate(row) for row in rows]
