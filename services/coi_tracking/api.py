"""COI tracking HTTP routes: couriers' scans, shipments, the custody ledger."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope, utc_now
from cgt_contracts.events import (
    CoiBreak,
    CoiBreakData,
    CustodyTransferred,
    CustodyTransferredData,
    ScanType,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentQuarantined,
    ShipmentQuarantinedData,
    ShipmentScanned,
    ShipmentScannedData,
    TemperatureExcursion,
    TemperatureExcursionData,
)
from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from services.coi_tracking import domain
from services.coi_tracking.domain import LedgerKind, ShipmentStatus
from services.coi_tracking.ledger import append_entry, read_entries, verify_shipment_ledger
from services.coi_tracking.models import Bag, Container, ScanRecord, Shipment, TemperatureReading
from services.common.auth import Principal, Role, require
from services.common.db import is_postgres
from services.common.outbox import enqueue
from services.common.service import db_session, runtime_of
from services.common.topics import SHIPMENTS

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
    status: ShipmentStatus
    physical_status: ShipmentStatus
    treatment_center_id: str
    courier_company: str
    custodian: str
    storage_limit_celsius: float
    container_ids: list[str]
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
    query = select(Shipment).where(Shipment.id == shipment_id)
    if is_postgres(session.get_bind()):  # type: ignore[arg-type]
        query = query.with_for_update()
    shipment = session.exec(query).first()
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
    return shipment


def _check_visible(shipment: Shipment, caller: Principal) -> None:
    if caller.role is Role.COURIER and shipment.courier_company != caller.courier_company:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this shipment is assigned to another courier company")
    if caller.role is Role.TREATMENT_CENTER and shipment.treatment_center_id != caller.treatment_center_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment.id}")


def _view(session: Session, shipment: Shipment) -> ShipmentView:
    containers = session.exec(select(Container.id).where(Container.shipment_id == shipment.id)).all()
    bags = session.exec(select(Bag).where(Bag.shipment_id == shipment.id).order_by(col(Bag.number))).all()
    return ShipmentView(
        id=shipment.id,
        order_id=shipment.order_id,
        coi=shipment.coi,
        leg=shipment.leg,
        status=shipment.status,
        physical_status=shipment.physical_status,
        treatment_center_id=shipment.treatment_center_id,
        courier_company=shipment.courier_company,
        custodian=shipment.custodian,
        storage_limit_celsius=shipment.storage_limit_celsius,
        container_ids=list(containers),
        bags=[{"number": b.number, "of": b.of, "coi": b.coi} for b in bags],
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
    shipment = session.get(Shipment, shipment_id)
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
    _check_visible(shipment, caller)
    return _view(session, shipment)


@router.post("/shipments/{shipment_id}/scans", status_code=status.HTTP_201_CREATED, response_model=ScanResult)
def post_scan(
    shipment_id: UUID, body: ScanRequest, request: Request, session: SessionDep, caller: Courier
) -> ScanResult:
    """Record a courier's scan. It is always stored; the result says whether it was accepted and why not."""
    shipment = _load_for_update(session, shipment_id)
    _check_visible(shipment, caller)
    state = domain.ShipmentState(
        status=shipment.status,
        physical_status=shipment.physical_status,
        expected_coi=shipment.coi,
        bag_count=len(session.exec(select(Bag.id).where(Bag.shipment_id == shipment.id)).all()),
        storage_limit_celsius=shipment.storage_limit_celsius,
        custodian=shipment.custodian,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
    )
    scan = domain.Scan(
        scan_type=body.scan_type,
        bag_cois=tuple(body.bag_cois),
        temperature_celsius=body.temperature_celsius,
        scanned_by=caller.subject,
        handed_to=body.handed_to,
        treatment_center_id=shipment.treatment_center_id,
    )
    decision = domain.evaluate_scan(state, scan)
    record = ScanRecord(
        shipment_id=shipment.id,
        scan_type=body.scan_type,
        bag_cois=json.dumps(body.bag_cois),
        container_id=body.container_id,
        seal_id=body.seal_id,
        location=body.location,
        scanned_by=caller.subject,
        handed_to=body.handed_to,
        device_time=body.device_time,
        temperature_celsius=body.temperature_celsius,
        accepted=decision.accepted,
        refusal_reason=decision.refusal_reason,
        coi_verified=not decision.coi_break,
    )
    session.add(record)
    events: list[EventEnvelope] = []
    common = {"source": SOURCE, "subject": shipment.coi, "correlationid": request.state.correlation_id}
    now = utc_now()
    if body.temperature_celsius is not None:
        session.add(
            TemperatureReading(
                shipment_id=shipment.id,
                read_at=body.device_time,
                celsius=body.temperature_celsius,
                source="scan",
            )
        )
        if (
            shipment.max_temperature_celsius is None
            or body.temperature_celsius > shipment.max_temperature_celsius
        ):
            shipment.max_temperature_celsius = body.temperature_celsius
    events.append(
        ShipmentScanned(
            **common,
            data=ShipmentScannedData(
                shipment_id=shipment.id,
                scan_id=record.id,
                coi=shipment.coi,
                scan_type=body.scan_type,
                location=body.location,
                scanned_at=body.device_time,
                temperature_celsius=body.temperature_celsius,
                accepted=decision.accepted,
                refusal_reason=decision.refusal_reason,
            ),
        )
    )
    if decision.accepted:
        shipment.physical_status = decision.physical_status
        if shipment.status is not ShipmentStatus.QUARANTINED:
            shipment.status = decision.physical_status
        if body.eta_at is not None:
            shipment.eta_at = body.eta_at
    if decision.custody is not None:
        entry = append_entry(
            session,
            shipment,
            kind=LedgerKind.CUSTODY,
            from_party=decision.custody.from_party,
            to_party=decision.custody.to_party,
            location=body.location,
            at=body.device_time,
            signer=caller.display_name or caller.subject,
            meaning=f"{body.scan_type.value}: custody handed over",
        )
        shipment.custodian = decision.custody.to_party
        events.append(
            CustodyTransferred(
                **common,
                data=CustodyTransferredData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    from_party=entry.from_party,
                    to_party=entry.to_party,
                    location=entry.location,
                    transferred_at=entry.at,
                    ledger_sequence=entry.sequence,
                    entry_sha256=entry.entry_sha256,
                ),
            )
        )
    if decision.dispatched:
        assert body.eta_at is not None
        shipment.dispatched_at = body.device_time
        events.append(
            ShipmentDispatched(
                **common,
                data=ShipmentDispatchedData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    treatment_center_id=shipment.treatment_center_id,
                    dispatched_at=body.device_time,
                    eta_at=body.eta_at,
                ),
            )
        )
    if decision.coi_break:
        events.append(
            CoiBreak(
                **common,
                data=CoiBreakData(
                    shipment_id=shipment.id,
                    scan_id=record.id,
                    expected_coi=shipment.coi,
                    read_cois=body.bag_cois,
                    detected_at=now,
                ),
            )
        )
    if decision.temperature_excursion:
        assert body.temperature_celsius is not None
        events.append(
            TemperatureExcursion(
                **common,
                data=TemperatureExcursionData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    reading_celsius=body.temperature_celsius,
                    limit_celsius=shipment.storage_limit_celsius,
                    read_at=body.device_time,
                ),
            )
        )
    if decision.quarantine:
        reason = " | ".join(decision.quarantine_reasons)
        events.extend(
            quarantine(
                session,
                shipment,
                reason=reason,
                location=body.location,
                correlation_id=common["correlationid"],
            )
        )
    if decision.accepted and body.scan_type is ScanType.DELIVERY:
        shipment.delivered_at = body.device_time
        if decision.delivered_clean:
            events.append(
                ShipmentDelivered(
                    **common,
                    data=ShipmentDeliveredData(
                        shipment_id=shipment.id,
                        coi=shipment.coi,
                        treatment_center_id=shipment.treatment_center_id,
                        delivered_at=body.device_time,
                        coi_verified=True,
                        temperature_record_clean=True,
                        max_temperature_celsius=shipment.max_temperature_celsius
                        if shipment.max_temperature_celsius is not None
                        else shipment.storage_limit_celsius,
                    ),
                )
            )
    session.add(shipment)
    for event in events:
        enqueue(session, SHIPMENTS, event)
    session.commit()
    runtime_of(request).relay.notify()
    log.info(
        "scan.recorded",
        shipment_id=str(shipment.id),
        scan_type=body.scan_type.value,
        accepted=decision.accepted,
        coi_verified=not decision.coi_break,
        quarantined=decision.quarantine,
    )
    return ScanResult(
        scan_id=record.id,
        accepted=decision.accepted,
        refusal_reason=decision.refusal_reason,
        coi_verified=not decision.coi_break,
        shipment_status=shipment.status,
        quarantined=shipment.status is ShipmentStatus.QUARANTINED,
        quarantine_reason=shipment.quarantine_reason,
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
            source=SOURCE,
            subject=shipment.coi,
            correlationid=correlation_id,
            data=ShipmentQuarantinedData(
                shipment_id=shipment.id,
                coi=shipment.coi,
                treatment_center_id=shipment.treatment_center_id,
                reason=reason[:500],
                quarantined_at=now,
            ),
        )
    ]


@router.get("/shipments/{shipment_id}/scans")
def list_scans(shipment_id: UUID, session: SessionDep, caller: Reader) -> list[dict[str, Any]]:
    shipment = session.get(Shipment, shipment_id)
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
    _check_visible(shipment, caller)
    rows = session.exec(
        select(ScanRecord).where(ScanRecord.shipment_id == shipment_id).order_by(col(ScanRecord.received_at))
    )
    return [row.model_dump(mode="json") | {"bag_cois": json.loads(row.bag_cois)} for row in rows]


@router.get("/shipments/{shipment_id}/ledger", response_model=LedgerView)
def read_ledger(shipment_id: UUID, session: SessionDep, caller: Reader) -> LedgerView:
    """The custody ledger with a fresh verification of every hash link."""
    shipment = session.get(Shipment, shipment_id)
    if shipment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
    _check_visible(shipment, caller)
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
