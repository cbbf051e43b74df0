"""Scheduling HTTP routes: site calendars and availability, therapy protocols, options and bookings,
the coordinators' worklist, infusion and follow-up, webhooks and their delivery log, FHIR views."""

from __future__ import annotations

import secrets
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cgt_contracts.envelope import utc_now
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlmodel import Session, and_, col, or_, select

from services.common import problems
from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, RequestModel
from services.common.service import db_session
from services.scheduling import commands, domain, fhir
from services.scheduling.domain import ACTIVE_STATES, AppointmentState
from services.scheduling.models import (
    Appointment,
    Case,
    FollowUpVisit,
    OfferedOption,
    Site,
    TherapyProtocol,
    WebhookDelivery,
    WebhookEndpoint,
)

router = APIRouter(route_class=EdgeRoute, tags=["scheduling"])
START_FORMAT = "each value is ge, gt, le or lt followed by a date (YYYY-MM-DD)"
SessionDep = Annotated[Session, Depends(db_session)]
Reader = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.TREATMENT_CENTER))]
Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]


def _own_site(caller: Principal, site_id: str) -> None:
    if caller.role is Role.TREATMENT_CENTER and caller.treatment_center_id != site_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such site")


# ---------------------------------------------------------------- sites and protocols


class SiteBody(RequestModel):
    timezone: Annotated[str, Field(max_length=64, description="IANA name")]
    infusions_per_day: Annotated[int, Field(ge=0, le=500)]
    admissions_capacity: Annotated[int, Field(ge=0, le=5000, description="Beds for patients in conditioning")]
    working_weekdays: Annotated[
        list[Annotated[int, Field(ge=1, le=7)]], Field(min_length=1, max_length=7, default=[1, 2, 3, 4, 5])
    ]
    blackout_dates: Annotated[list[date], Field(max_length=366, default=[])]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError("not an IANA time zone name (such as Europe/Paris)") from error
        return value


class SiteView(SiteBody):
    id: str


def _site_view(site: Site) -> SiteView:
    calendar = commands.calendar_of(site)
    return SiteView(
        id=site.id,
        timezone=site.timezone,
        infusions_per_day=site.infusions_per_day,
        admissions_capacity=site.admissions_capacity,
        working_weekdays=sorted(calendar.working_weekdays),
        blackout_dates=sorted(calendar.blackout_dates),
    )


@router.put("/sites/{site_id}", response_model=SiteView)
def put_site(site_id: Ident, body: SiteBody, session: SessionDep, _: Coordinator) -> SiteView:
    """Set a treatment center's calendar: time zone, daily infusion capacity, beds, working days, blackouts."""
    site = session.get(Site, site_id) or Site(id=site_id, timezone=body.timezone)
    site.timezone = body.timezone
    site.infusions_per_day = body.infusions_per_day
    site.admissions_capacity = body.admissions_capacity
    site.working_weekdays = ",".join(str(d) for d in sorted(set(body.working_weekdays)))
    site.blackout_dates = ",".join(d.isoformat() for d in sorted(set(body.blackout_dates)))
    session.add(site)
    session.commit()
    return _site_view(site)


class DayAvailability(BaseModel):
    day: date
    open: bool
    infusions_booked: int
    infusions_capacity: int
    admissions_booked: int
    admissions_capacity: int


@router.get("/sites/{site_id}/availability", response_model=list[DayAvailability])
def availability(
    site_id: str,
    session: SessionDep,
    caller: Reader,
    start: Annotated[date, Query(alias="from")],
    end: Annotated[date, Query(alias="to")],
) -> list[DayAvailability]:
    """Capacity and bookings per day, site-local dates, for at most 92 days."""
    _own_site(caller, site_id)
    if end < start or (end - start).days > 92:
        raise problems.invalid("query", "to", "must be on or after from, at most 92 days later")
    site = session.get(Site, site_id)
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such site")
    calendar = commands.calendar_of(site)
    load = commands.load_of(session, site_id)
    days = [start + timedelta(days=d) for d in range((end - start).days + 1)]
    return [
        DayAvailability(
            day=day,
            open=calendar.is_open(day),
            infusions_booked=load.infusions.get(day, 0),
            infusions_capacity=calendar.infusions_per_day if calendar.is_open(day) else 0,
            admissions_booked=load.admissions.get(day, 0),
            admissions_capacity=0 if day in calendar.blackout_dates else calendar.admissions_capacity,
        )
        for day in days
    ]


class ProtocolBody(RequestModel):
    model_config = ConfigDict(from_attributes=True)
    conditioning_days: Annotated[
        int, Field(ge=0, le=30, description="Days of conditioning before infusion (day 0)")
    ]
    receipt_buffer_hours: Annotated[
        float, Field(ge=0, le=24 * 14, description="Product receipt to conditioning start")
    ]


@router.put("/therapies/{code}/protocol", response_model=ProtocolBody)
def put_protocol(code: Ident, body: ProtocolBody, session: SessionDep, _: Coordinator) -> ProtocolBody:
    protocol = session.get(TherapyProtocol, code) or TherapyProtocol(code=code, **body.model_dump())
    protocol.conditioning_days, protocol.receipt_buffer_hours = (
        body.conditioning_days,
        body.receipt_buffer_hours,
    )
    session.add(protocol)
    session.commit()
    return ProtocolBody.model_validate(protocol)


# ---------------------------------------------------------------- cases, options, bookings


class OptionView(BaseModel):
    option_id: UUID
    conditioning_start_on: date
    infusion_on: date


class AppointmentView(BaseModel):
    id: UUID
    coi: str
    treatment_center_id: str
    state: AppointmentState
    conditioning_start_on: date
    infusion_on: date
    hold_reason: str | None
    version: int
    confirmed_at: datetime | None
    infused_on: date | None


class CaseView(BaseModel):
    coi: str
    patient_ref: str
    therapy_code: str
    treatment_center_id: str
    eta_at: datetime | None
    product_delivered_at: datetime | None
    quarantined: bool
    cancelled: bool
    attention: str | None
    options: list[OptionView]
    appointment: AppointmentView | None


def _case(session: Session, coi: str, caller: Principal) -> Case:
    case = session.get(Case, coi)
    if case is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such case")
    _own_site(caller, case.treatment_center_id)
    return case


def _case_view(session: Session, case: Case) -> CaseView:
    options = session.exec(
        select(OfferedOption)
        .where(OfferedOption.coi == case.coi)
        .where(col(OfferedOption.current).is_(True))
        .order_by(col(OfferedOption.conditioning_start_on))
    ).all()
    appointment = commands.open_appointment(session, case.coi)
    return CaseView(
        coi=case.coi,
        patient_ref=case.patient_ref,
        therapy_code=case.therapy_code,
        treatment_center_id=case.treatment_center_id,
        eta_at=case.eta_at,
        product_delivered_at=case.product_delivered_at,
        quarantined=case.quarantined,
        cancelled=case.cancelled,
        attention=case.attention,
        options=[
            OptionView(
                option_id=o.id, conditioning_start_on=o.conditioning_start_on, infusion_on=o.infusion_on
            )
            for o in options
        ],
        appointment=AppointmentView.model_validate(appointment, from_attributes=True)
        if appointment
        else None,
    )


@router.get("/cases/{coi}", response_model=CaseView)
def read_case(coi: str, session: SessionDep, caller: Reader) -> CaseView:
    """The case with its current options and its appointment."""
    return _case_view(session, _case(session, coi, caller))


class BookingRequest(RequestModel):
    """Book one offered option, or name the conditioning start day yourself (checked the same way)."""

    option_id: UUID | None = None
    conditioning_start_on: date | None = None

    @model_validator(mode="after")
    def _one(self) -> BookingRequest:
        if (self.option_id is None) == (self.conditioning_start_on is None):
            raise ValueError("give exactly one of option_id and conditioning_start_on")
        return self


@router.post(
    "/cases/{coi}/bookings",
    status_code=status.HTTP_201_CREATED,
    response_model=AppointmentView,
    responses=problems.documented(409),
)
def book(
    coi: str, body: BookingRequest, request: Request, session: SessionDep, caller: Coordinator
) -> AppointmentView:
    """Book a tentative appointment. Capacity is checked under the site's lock: never overbooked (409)."""
    case = _case(session, coi, caller)
    if body.option_id is not None:
        offered = session.get(OfferedOption, body.option_id)
        if offered is None or offered.coi != coi or not offered.current:
            raise problems.invalid("body", "option_id", "not a current option of this case")
        option = domain.SlotOption(offered.conditioning_start_on, offered.infusion_on)
    else:
        assert body.conditioning_start_on is not None
        days = commands.conditioning_days(session, case)
        option = domain.SlotOption(
            body.conditioning_start_on, body.conditioning_start_on + timedelta(days=days)
        )
    settings = request.app.state.scheduling_settings
    try:
        appointment = commands.book(
            session,
            case,
            option,
            booked_by=caller.subject,
            default_buffer_hours=settings.receipt_buffer_hours,
            correlation_id=request.state.correlation_id,
        )
        session.commit()
    except commands.Refused as refused:
        session.rollback()
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    request.app.state.after_commit()
    return AppointmentView.model_validate(appointment, from_attributes=True)


class CancelRequest(RequestModel):
    reason: Annotated[str, Field(min_length=3, max_length=500)]


def _appointment(session: Session, appointment_id: UUID, caller: Principal) -> Appointment:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or (
        caller.role is Role.TREATMENT_CENTER and appointment.treatment_center_id != caller.treatment_center_id
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no appointment {appointment_id}")
    return appointment


def _appointment_to_change(
    session: Session, appointment_id: UUID, caller: Principal
) -> tuple[Appointment, Case]:
    """The appointment and its case under the case's lock (the one bookings and shipment events take), both
    read again: a cancellation is never overwritten by a confirmation that read the appointment before."""
    appointment = _appointment(session, appointment_id, caller)
    case = _case(session, appointment.coi, caller)
    commands.lock_case(session, case)
    session.refresh(appointment)
    return appointment, case


@router.post(
    "/appointments/{appointment_id}/cancel",
    response_model=AppointmentView,
    responses=problems.documented(409),
)
def cancel_appointment(
    appointment_id: UUID, body: CancelRequest, request: Request, session: SessionDep, caller: Coordinator
) -> AppointmentView:
    appointment, _ = _appointment_to_change(session, appointment_id, caller)
    try:
        commands.cancel(
            session, appointment, body.reason, correlation_id=request.state.correlation_id, causation_id=None
        )
    except commands.Refused as refused:
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    request.app.state.after_commit()
    return AppointmentView.model_validate(appointment, from_attributes=True)


class InfusionRequest(RequestModel):
    infused_on: date


class InfusionView(BaseModel):
    appointment: AppointmentView
    follow_up_visits: int


@router.post(
    "/appointments/{appointment_id}/infusion", response_model=InfusionView, responses=problems.documented(409)
)
def record_infusion(
    appointment_id: UUID, body: InfusionRequest, request: Request, session: SessionDep, caller: Coordinator
) -> InfusionView:
    """Record the infusion of a confirmed appointment; long-term follow-up visits are planned from it."""
    appointment, case = _appointment_to_change(session, appointment_id, caller)
    try:
        visits = commands.record_infusion(
            session, appointment, case, body.infused_on, correlation_id=request.state.correlation_id
        )
    except commands.Refused as refused:
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    request.app.state.after_commit()
    return InfusionView(
        appointment=AppointmentView.model_validate(appointment, from_attributes=True), follow_up_visits=visits
    )


class VisitView(BaseModel):
    number: int
    due_on: date
    window_start_on: date
    window_end_on: date
    completed_on: date | None


@router.get("/cases/{coi}/follow-up", response_model=list[VisitView])
def follow_up(coi: str, session: SessionDep, caller: Reader) -> list[VisitView]:
    _case(session, coi, caller)
    rows = session.exec(
        select(FollowUpVisit).where(FollowUpVisit.coi == coi).order_by(col(FollowUpVisit.number))
    )
    return [VisitView.model_validate(v, from_attributes=True) for v in rows]


# ---------------------------------------------------------------- worklist


class WorkItem(BaseModel):
    kind: str
    coi: str
    treatment_center_id: str
    since: datetime
    detail: str
    appointment_id: UUID | None = None


@router.get("/worklist", response_model=list[WorkItem])
def worklist(session: SessionDep, _: Coordinator) -> list[WorkItem]:
    """Every case needing a coordinator: to book, delayed or at risk, on hold, webhook failing, follow-up
    overdue — oldest first."""
    items: list[WorkItem] = []
    active = [s.value for s in ACTIVE_STATES]
    booked = set(session.exec(select(Appointment.coi).where(col(Appointment.state).in_(active))).all())
    for case in session.exec(select(Case).where(col(Case.cancelled).is_(False))):
        if case.attention:
            assert case.attention_since is not None
            items.append(
                WorkItem(
                    kind="attention",
                    coi=case.coi,
                    treatment_center_id=case.treatment_center_id,
                    since=case.attention_since,
                    detail=case.attention,
                )
            )
        elif case.coi not in booked and case.eta_at is not None and case.product_delivered_at is None:
            offered = session.exec(
                select(OfferedOption.offered_at)
                .where(OfferedOption.coi == case.coi)
                .where(col(OfferedOption.current).is_(True))
            ).first()
            if offered is not None:
                items.append(
                    WorkItem(
                        kind="to_book",
                        coi=case.coi,
                        treatment_center_id=case.treatment_center_id,
                        since=offered,
                        detail="options offered: book one",
                    )
                )
    for appointment in session.exec(select(Appointment).where(Appointment.state == AppointmentState.ON_HOLD)):
        items.append(
            WorkItem(
                kind="on_hold",
                coi=appointment.coi,
                treatment_center_id=appointment.treatment_center_id,
                since=appointment.updated_at,
                detail=appointment.hold_reason or "on hold",
                appointment_id=appointment.id,
            )
        )
    failing = session.exec(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(
            or_(
                col(WebhookDelivery.status) == "failed",
                and_(col(WebhookDelivery.status) == "pending", col(WebhookDelivery.attempts) >= 2),
            )
        )
    ).all()
    for delivery, endpoint in failing:
        items.append(
            WorkItem(
                kind="webhook_failing",
                coi=delivery.coi,
                treatment_center_id=endpoint.treatment_center_id,
                since=delivery.created_at,
                detail=f"{delivery.kind} to {endpoint.url}: {delivery.status} after {delivery.attempts} attempts ({delivery.last_error})",
                appointment_id=delivery.appointment_id,
            )
        )
    today = utc_now().date()
    for visit in session.exec(
        select(FollowUpVisit)
        .where(col(FollowUpVisit.window_end_on) < today)
        .where(col(FollowUpVisit.completed_on).is_(None))
    ):
        items.append(
            WorkItem(
                kind="follow_up_overdue",
                coi=visit.coi,
                treatment_center_id=visit.treatment_center_id,
                since=datetime.combine(visit.window_end_on, datetime.min.time(), tzinfo=ZoneInfo("UTC")),
                detail=f"follow-up visit {visit.number} was due {visit.due_on} (window closed {visit.window_end_on})",
            )
        )
    return sorted(items, key=lambda item: item.since)


# ---------------------------------------------------------------- appointments, webhooks, FHIR


class WebhookRequest(RequestModel):
    url: AnyHttpUrl
    secret: Annotated[str | None, Field(min_length=16, max_length=128)] = None
    treatment_center_id: Annotated[str | None, Field(max_length=64)] = Field(
        default=None, description="Coordinators name the site; a treatment center registers for its own"
    )


class WebhookView(BaseModel):
    id: UUID
    treatment_center_id: str
    url: str
    secret: str = Field(description="Shown once, at registration: verify X-CGT-Signature with it")


class DeliveryView(BaseModel):
    id: UUID
    kind: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


def _site_for(caller: Principal, requested: str | None) -> str:
    if caller.role is Role.TREATMENT_CENTER:
        assert caller.treatment_center_id is not None
        if requested not in (None, caller.treatment_center_id):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "a treatment center registers only for its own site"
            )
        return caller.treatment_center_id
    if requested is None:
        raise problems.invalid("body", "treatment_center_id", "required for a coordinator")
    return requested


@router.post("/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookView)
def register_webhook(body: WebhookRequest, session: SessionDep, caller: Reader) -> WebhookView:
    """Register where a site receives proposals, confirmations, changes and cancellations."""
    site = _site_for(caller, body.treatment_center_id)
    endpoint = WebhookEndpoint(
        treatment_center_id=site, url=str(body.url), secret=body.secret or secrets.token_urlsafe(32)
    )
    session.add(endpoint)
    session.commit()
    return WebhookView(id=endpoint.id, treatment_center_id=site, url=endpoint.url, secret=endpoint.secret)


@router.get("/appointments", response_model=list[AppointmentView])
def list_appointments(session: SessionDep, caller: Reader, coi: str | None = None) -> list[AppointmentView]:
    query = select(Appointment).order_by(col(Appointment.created_at))
    if caller.role is Role.TREATMENT_CENTER:
        query = query.where(Appointment.treatment_center_id == caller.treatment_center_id)
    if coi:
        query = query.where(Appointment.coi == coi)
    return [AppointmentView.model_validate(a, from_attributes=True) for a in session.exec(query.limit(500))]


@router.get("/appointments/{appointment_id}", response_model=AppointmentView)
def read_appointment(appointment_id: UUID, session: SessionDep, caller: Reader) -> AppointmentView:
    return AppointmentView.model_validate(_appointment(session, appointment_id, caller), from_attributes=True)


@router.get("/appointments/{appointment_id}/deliveries", response_model=list[DeliveryView])
def delivery_log(appointment_id: UUID, session: SessionDep, caller: Reader) -> list[DeliveryView]:
    """Every webhook message about this appointment and how its delivery went."""
    _appointment(session, appointment_id, caller)
    rows = session.exec(
        select(WebhookDelivery)
        .where(WebhookDelivery.appointment_id == appointment_id)
        .order_by(col(WebhookDelivery.created_at))
    )
    return [DeliveryView.model_validate(r, from_attributes=True) for r in rows]


@router.get("/fhir/Appointment/{appointment_id}")
def fhir_appointment(appointment_id: UUID, session: SessionDep, caller: Reader) -> dict[str, Any]:
    """The appointment as an HL7 FHIR R4 Appointment (pending while tentative, booked once confirmed)."""
    appointment = _appointment(session, appointment_id, caller)
    case = session.get(Case, appointment.coi)
    site = session.get(Site, appointment.treatment_center_id)
    return fhir.appointment_resource(appointment, case, commands.calendar_of(site))


@router.get("/fhir/Slot", responses=problems.documented(404))
def fhir_slots(
    session: SessionDep,
    caller: Reader,
    schedule: Annotated[str, Query(description="Schedule/<site id>")],
    start: Annotated[list[str], Query(description="ge<date> and/or lt<date>")] = [],  # noqa: B006
) -> dict[str, Any]:
    """Booked slots of a site as a FHIR R4 searchset Bundle of Slot resources."""
    site_id = schedule.removeprefix("Schedule/")
    _own_site(caller, site_id)
    site = session.get(Site, site_id)
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such schedule")
    query = (
        select(Appointment)
        .where(Appointment.treatment_center_id == site_id)
        .where(col(Appointment.state) != AppointmentState.CANCELLED)
    )
    for bound in start:
        prefix, value = bound[:2], bound[2:]
        try:
            day = date.fromisoformat(value[:10])
        except ValueError as error:
            raise problems.invalid("query", "start", START_FORMAT) from error
        column = col(Appointment.infusion_on)
        conditions = {"ge": column >= day, "gt": column > day, "le": column <= day, "lt": column < day}
        if prefix not in conditions:
            raise problems.invalid("query", "start", START_FORMAT)
        query = query.where(conditions[prefix])
    appointments = session.exec(query.order_by(col(Appointment.infusion_on)).limit(500)).all()
    return fhir.slot_bundle(site, appointments, commands.calendar_of(site))
