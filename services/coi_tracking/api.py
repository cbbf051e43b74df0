"""COI tracking HTTP routes: couriers' scans, shipments, the custody ledger."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import structlog
from cgt_contracts.events import (
    ScanType,
)
from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from services.coi_tracking import commands, domain, epcis
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
from services.coi_tracking.scan_writer import (
    OtherCourierCompany,
    ScanSubmission,
    ScanWriter,
    ShipmentNotFound,
)
from services.common.auth import Principal, Role, require
from services.common.db import locked
from services.common.service import db_session, runtime_of

SOURCE = "cgt/coi-tracking"
log = structlog.get_logger()
router = APIRouter(tags=["shipments"])

SessionDep = Annotated[Session, Depends(db_session)]
Reader = Annotated[
    Principal, Depends(require(Role.COORDINATOR, Role.COURIER, Role.TREATMENT_CENTER, Role.QA))
]
Courier = Annotated[Principal, Depends(require(Role.COURIER))]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]
Label = Annotated[str, Field(min_length=1, max_length=64)]


class ScanRequest(BaseModel):
    """One courier scan: what was read off the bag labels, where, when, and the logger's reading."""

    model_config = ConfigDict(extra="forbid")
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

    @model_validator(mode="after")
    def _eta_where_needed(self) -> ScanRequest:
        if self.scan_type in (ScanType.PICK_UP, ScanType.DELAY) and self.eta_at is None:
            raise ValueError(f"eta_at is required for a {self.scan_type} scan")
        return self


class ScanResult(BaseModel):
    scan_id: UUID
    accepted: bool
    refusal_reason: str | None
    coi_verified: bool
    shipment_status: ShipmentStatus
    quarantined: bool
    quarantine_reason: str | None


class ShipmentView(BaseModel):
    id: UUID
    order_id: UUID
    coi: str
    leg: str
    destination: str
    min_celsius: float | None
    max_transit_hours: float | None
    container: dict[str, Any] | None
    status: ShipmentStatus
    physical_status: ShipmentStatus
    treatment_center_id: str
    courier_company: str
    custodian: str
    storage_limit_celsius: float
    bags: list[dict[str, Any]]
    eta_at: datetime | None
    delivered_at: datetime | None
    quarantine_reason: str | None
    max_temperature_celsius: float | None


class LedgerEntryView(BaseModel):
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


class LedgerView(BaseModel):
    shipment_id: UUID
    entries: list[LedgerEntryView]
    valid: bool
    broken_at_sequence: int | None
    problem: str | None


def _load_for_update(session: Session, shipment_id: UUID) -> Shipment:
    shipment = session.exec(locked(session, select(Shipment).where(Shipment.id == shipment_id))).first()
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
    return shipment


def _check_visible(shipment: Shipment, caller: Principal) -> None:
    if caller.role is Role.COURIER and shipment.courier_company != caller.courier_company:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this shipment is assigned to another courier company")
    if caller.role is Role.TREATMENT_CENTER and shipment.treatment_center_id != caller.treatment_center_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment.id}")


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
    )


@router.get("/shipments", response_model=list[ShipmentView])
def list_shipments(session: SessionDep, caller: Reader, coi: str | None = None) -> list[ShipmentView]:
    """Couriers see their company's shipments, treatment centers their site's, coordinators and QA all."""
    query = select(Shipment).order_by(col(Shipment.created_at))
    if coi:
        query = query.where(Shipment.coi == coi)
    if caller.role is Role.COURIER:
        query = query.where(Shipment.courier_company == caller.courier_company)
    if caller.role is Role.TREATMENT_CENTER:
        query = query.where(Shipment.treatment_center_id == caller.treatment_center_id)
    return [_view(session, s) for s in session.exec(query.limit(500))]


@router.get("/shipments/{shipment_id}", response_model=ShipmentView)
def read_shipment(shipment_id: UUID, session: SessionDep, caller: Reader) -> ShipmentView:
    shipment = _visible(session, shipment_id, caller)
    return _view(session, shipment)


def _actor(caller: Principal) -> commands.Actor:
    return commands.Actor(subject=caller.subject, printed_name=caller.display_name or caller.subject)


@router.post("/shipments/{shipment_id}/scans", status_code=status.HTTP_201_CREATED, response_model=ScanResult)
async def post_scan(shipment_id: UUID, body: ScanRequest, request: Request, caller: Courier) -> ScanResult:
    """Record a courier's scan. It is always stored; the result says whether it was accepted and why not.
    Scans that arrive together are committed together (see `scan_writer`)."""
    writer: ScanWriter = request.app.state.scan_writer
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


class ReadingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: AwareDatetime
    celsius: Annotated[float, Field(ge=-273.15, le=100.0)]


class ReadingsRequest(BaseModel):
    """A batch from the shipment's data logger."""

    model_config = ConfigDict(extra="forbid")
    logger_id: Ident
    readings: Annotated[list[ReadingIn], Field(min_length=1, max_length=5000)]


class ReadingsResult(BaseModel):
    stored: int
    excursions: list[str]
    quarantined: bool


class ReadingOut(BaseModel):
    at: datetime
    celsius: float
    source: str


@router.post(
    "/shipments/{shipment_id}/readings", status_code=status.HTTP_201_CREATED, response_model=ReadingsResult
)
def post_readings(
    shipment_id: UUID, body: ReadingsRequest, request: Request, session: SessionDep, caller: Courier
) -> ReadingsResult:
    """Store a logger batch; a reading out of range, a gap or a shipment past its hold time quarantines it."""
    shipment = _load_for_update(session, shipment_id)
    _check_visible(shipment, caller)
    outcome = commands.record_readings(
        session,
        shipment,
        [domain.Reading(r.at, r.celsius) for r in body.readings],
        f"logger:{body.logger_id}",
        request.state.correlation_id,
    )
    session.commit()
    runtime_of(request).relay.notify()
    return ReadingsResult(
        stored=outcome.stored, excursions=outcome.excursions, quarantined=outcome.quarantined
    )


@router.get("/shipments/{shipment_id}/readings", response_model=list[ReadingOut])
def read_readings(shipment_id: UUID, session: SessionDep, caller: Reader) -> list[ReadingOut]:
    """The temperature series, oldest first."""
    shipment = _visible(session, shipment_id, caller)
    rows = session.exec(
        select(TemperatureReading)
        .where(TemperatureReading.shipment_id == shipment.id)
        .order_by(col(TemperatureReading.read_at))
    )
    return [ReadingOut(at=r.read_at, celsius=r.celsius, source=r.source) for r in rows]


class ContainerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    container_id: Ident
    charged_at: AwareDatetime
    validated_hold_hours: Annotated[float, Field(gt=0, le=24 * 30)]
    seal_id: Ident | None = None
    logger_interval_minutes: Annotated[float | None, Field(gt=0, le=24 * 60)] = None


@router.put("/shipments/{shipment_id}/container", response_model=ShipmentView)
def declare_container(
    shipment_id: UUID,
    body: ContainerRequest,
    session: SessionDep,
    caller: Annotated[Principal, Depends(require(Role.COURIER, Role.COORDINATOR))],
) -> ShipmentView:
    """Declare the dry shipper packed for this shipment: id, charge time, validated hold time, seal."""
    shipment = _load_for_update(session, shipment_id)
    _check_visible(shipment, caller)
    try:
        commands.declare_container(session, shipment, **body.model_dump())
    except commands.Refused as refused:
        raise HTTPException(status.HTTP_409_CONFLICT, str(refused)) from refused
    session.commit()
    return _view(session, shipment)


class DispositionRequest(BaseModel):
    """A QA electronic signature: the decision, why, and what the signature means."""

    model_config = ConfigDict(extra="forbid")
    decision: domain.Disposition
    reason: Annotated[str, Field(min_length=10, max_length=500)]
    meaning: Annotated[str, Field(min_length=3, max_length=64)] = "approval"


class DispositionView(BaseModel):
    id: UUID
    decision: str
    reason: str
    meaning: str
    signer_id: str
    signer_printed_name: str
    signed_at: datetime
    ledger_sequence: int


@router.post(
    "/shipments/{shipment_id}/dispositions",
    status_code=status.HTTP_201_CREATED,
    response_model=DispositionView,
)
def post_disposition(
    shipment_id: UUID,
    body: DispositionRequest,
    request: Request,
    session: SessionDep,
    caller: Annotated[Principal, Depends(require(Role.QA))],
) -> DispositionView:
    """Release or reject a quarantined shipment. Only QA signs; the signer's printed name comes from the
    caller's configured identity, the time from the server."""
    shipment = _load_for_update(session, shipment_id)
    try:
        disposition = commands.record_disposition(
            session,
            shipment,
            decision=body.decision,
            reason=body.reason,
            meaning=body.meaning,
            signer=_actor(caller),
            correlation_id=request.state.correlation_id,
        )
    except commands.Refused as refused:
        raise HTTPException(status.HTTP_409_CONFLICT, str(refused)) from refused
    session.commit()
    runtime_of(request).relay.notify()
    return DispositionView.model_validate(disposition, from_attributes=True)


@router.get("/shipments/{shipment_id}/dispositions", response_model=list[DispositionView])
def list_dispositions(shipment_id: UUID, session: SessionDep, caller: Reader) -> list[DispositionView]:
    shipment = _visible(session, shipment_id, caller)
    rows = session.exec(
        select(QaDisposition)
        .where(QaDisposition.shipment_id == shipment.id)
        .order_by(col(QaDisposition.signed_at))
    )
    return [DispositionView.model_validate(r, from_attributes=True) for r in rows]


def _visible(session: Session, shipment_id: UUID, caller: Principal) -> Shipment:
    shipment = session.get(Shipment, shipment_id)
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
    _check_visible(shipment, caller)
    return shipment


@router.get("/shipments/{shipment_id}/scans")
def list_scans(shipment_id: UUID, session: SessionDep, caller: Reader) -> list[dict[str, Any]]:
    _visible(session, shipment_id, caller)
    rows = session.exec(
        select(ScanRecord).where(ScanRecord.shipment_id == shipment_id).order_by(col(ScanRecord.received_at))
    )
    return [row.model_dump(mode="json") | {"bag_cois": json.loads(row.bag_cois)} for row in rows]


@router.get("/shipments/{shipment_id}/ledger", response_model=LedgerView)
def read_ledger(shipment_id: UUID, session: SessionDep, caller: Reader) -> LedgerView:
    """The custody ledger with a fresh verification of every hash link."""
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


MAX_CAPTURE_BYTES = 2_000_000


class CaptureEventResult(BaseModel):
    event_index: int
    event_id: str | None
    outcome: str = Field(description="applied, duplicate, refused, or not_applied (rolled back)")
    reason: str | None
    shipment_id: UUID | None
    scan: ScanResult | None


class CaptureJobView(BaseModel):
    capture_id: UUID
    running: bool
    success: bool
    capture_error_behaviour: str
    errors: list[str]
    events: list[CaptureEventResult]


@router.post("/capture", status_code=status.HTTP_202_ACCEPTED, response_model=CaptureJobView, tags=["epcis"])
async def epcis_capture(
    request: Request,
    response: Response,
    caller: Courier,
    capture_error_behaviour: Annotated[str, Header(alias="GS1-Capture-Error-Behaviour")] = "rollback",
) -> CaptureJobView:
    """GS1 EPCIS 2.0 capture (JSON / JSON-LD): 202 with `Location: /capture/{captureID}` to poll. Each
    ObjectEvent becomes a scan under the same rules as `POST /shipments/{id}/scans`."""
    if capture_error_behaviour not in ("rollback", "proceed"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "GS1-Capture-Error-Behaviour: rollback or proceed")
    raw = await request.body()
    if len(raw) > MAX_CAPTURE_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"an EPCIS document may be {MAX_CAPTURE_BYTES} bytes"
        )
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body: not JSON ({error})") from error
    errors = epcis.validate_document(document, request.app.state.epcis_validator, limit=50)
    if errors:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            {"title": "EPCIS document fails the EPCIS 2.0 JSON Schema", "errors": errors},
        )
    outcomes = epcis.interpret(document)
    job = await run_in_threadpool(
        _apply_capture, request, caller, outcomes, capture_error_behaviour == "rollback"
    )
    response.headers["Location"] = f"/capture/{job.capture_id}"
    return job


def _apply_capture(
    request: Request, caller: Principal, outcomes: list[epcis.Outcome], rollback: bool
) -> CaptureJobView:
    runtime = runtime_of(request)
    with Session(runtime.engine) as session:
        results = commands.capture(
            session,
            outcomes,
            _actor(caller),
            caller.courier_company,
            rollback_on_error=rollback,
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
            status="succeeded" if success else "failed",
            result=json.dumps(
                {
                    "capture_error_behaviour": "rollback" if rollback else "proceed",
                    "errors": [] if results else ["the document has no events"],
                    "events": [e.model_dump(mode="json") for e in view_events],
                }
            ),
        )
        session.add(job)
        session.commit()
        runtime.relay.notify()
        return _job_view(job)


def _job_view(job: CaptureJob) -> CaptureJobView:
    result = json.loads(job.result)
    return CaptureJobView(
        capture_id=job.id,
        running=False,
        success=job.status == "succeeded",
        capture_error_behaviour=result["capture_error_behaviour"],
        errors=result["errors"],
        events=[CaptureEventResult.model_validate(e) for e in result["events"]],
    )


@router.get("/capture/{capture_id}", response_model=CaptureJobView, tags=["epcis"])
def read_capture(capture_id: UUID, session: SessionDep, caller: Courier) -> CaptureJobView:
    job = session.get(CaptureJob, capture_id)
    if job is None or job.captured_by != caller.subject:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no capture {capture_id}")
    return _job_view(job)
