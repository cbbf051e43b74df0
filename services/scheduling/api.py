"""Scheduling HTTP routes: site calendars and availability, therapy protocols, options and bookings,
the coordinators' worklist, infusion and follow-up, FHIR views (webhooks: webhook_api.py)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from datetime import date, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cgt_contracts.envelope import CoiIdentifier, Identifier, utc_now
from cgt_contracts.events import CollectionPostponementCode, PlanReplanCause, SlotReasonCode
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict
from sqlmodel import Session, col, select

from services.common import problems
from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, Note, RequestModel
from services.common.paging import Page, link_next, page_list
from services.common.scope import not_found
from services.common.service import db_session
from services.scheduling import commands, domain, plan_commands, webhook_commands
from services.scheduling.domain import ACTIVE_STATES, AppointmentState, PlanState
from services.scheduling.models import (
    Appointment,
    Case,
    CasePlan,
    FollowUpVisit,
    OfferedOption,
    Site,
    SlotAlert,
    TherapyProtocol,
)
from services.scheduling.runtime import RuntimeDep

router = APIRouter(route_class=EdgeRoute, tags=["scheduling"])
SessionDep = Annotated[Session, Depends(db_session)]
Reader = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.TREATMENT_CENTER))]
Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]
SiteReader = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.TREATMENT_CENTER, Role.QA))]
"""A site's calendar (its time zone above all) is read by QA too: QA shows its signatures in the site's zone."""
Ident = Identifier
COI = "CHW4321260000014"
APPOINTMENT_ID = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


def _site(session: Session, site_id: str, caller: Principal) -> Site:
    """The site the caller may read: a missing one and another site (for a treatment center) are the
    same 404, word for word."""
    site = commands.visible_site(session, site_id, caller.site_scope)
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("site"))
    return site


# ---------------------------------------------------------------- sites and protocols


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError("not an IANA time zone name (such as Europe/Paris)") from error
    return value


TimeZone = Annotated[str, Field(min_length=1, max_length=64, description="IANA name"), AfterValidator(_zone)]
Weekdays = Annotated[
    list[Annotated[int, Field(ge=1, le=7)]],
    Field(
        min_length=1, max_length=7, default=[1, 2, 3, 4, 5], description="ISO weekdays: 1 Monday, 7 Sunday"
    ),
]
"""A calendar's working days; every site's and center's calendar takes both."""

SITE_EXAMPLE: JsonDict = {
    "timezone": "America/New_York",
    "infusions_per_day": 2,
    "admissions_capacity": 4,
    "working_weekdays": [1, 2, 3, 4, 5],
    "blackout_dates": ["2026-12-25"],
}


class SiteBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SITE_EXAMPLE]})

    timezone: TimeZone
    infusions_per_day: Annotated[int, Field(ge=0, le=500, description="Infusion chairs per working day")]
    admissions_capacity: Annotated[int, Field(ge=0, le=5000, description="Beds for patients in conditioning")]
    working_weekdays: Weekdays
    blackout_dates: Annotated[list[date], Field(max_length=366, default=[])]


class SiteView(SiteBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "TC-BOSTON", **SITE_EXAMPLE}]})

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


@router.put("/sites/{site_id}", summary="Set a treatment center's calendar", response_model=SiteView)
def put_site(site_id: Ident, body: SiteBody, session: SessionDep, _: Coordinator) -> SiteView:
    """Coordinators set a site's time zone, infusions per day, beds for patients in conditioning, working
    weekdays and blackout dates; the whole calendar is replaced (a new site id creates it). Options are
    offered and bookings checked against it."""
    site = session.get(Site, site_id) or Site(id=site_id, timezone=body.timezone)
    site.timezone = body.timezone
    site.infusions_per_day = body.infusions_per_day
    site.admissions_capacity = body.admissions_capacity
    site.working_weekdays = ",".join(str(d) for d in sorted(set(body.working_weekdays)))
    site.blackout_dates = ",".join(d.isoformat() for d in sorted(set(body.blackout_dates)))
    session.add(site)
    session.commit()
    return _site_view(site)


@router.get("/sites", summary="List the treatment centers' calendars", response_model=list[SiteView])
def list_sites(session: SessionDep, caller: SiteReader) -> list[SiteView]:
    """Every site scheduling has a calendar of, by id (at most one per treatment center, so no paging), for
    coordinators and QA; a treatment center sees its own only."""
    return [_site_view(site) for site in commands.visible_sites(session, caller.site_scope)]


@router.get("/sites/{site_id}", summary="Read a treatment center's calendar", response_model=SiteView)
def read_site(site_id: Ident, session: SessionDep, caller: SiteReader) -> SiteView:
    """A site's time zone, infusions per day, beds for patients in conditioning, working weekdays and
    blackout dates (coordinators and QA). A treatment center reads only its own (another site's is the same
    404 as a missing one)."""
    return _site_view(_site(session, site_id, caller))


class DayAvailability(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "day": "2026-12-08",
                    "open": True,
                    "infusions_booked": 1,
                    "infusions_capacity": 2,
                    "admissions_booked": 3,
                    "admissions_capacity": 4,
                }
            ]
        }
    )

    day: date
    open: bool
    infusions_booked: int
    infusions_capacity: int
    admissions_booked: int
    admissions_capacity: int


@router.get(
    "/sites/{site_id}/availability",
    summary="Read a site's availability",
    response_model=list[DayAvailability],
)
def availability(
    site_id: str,
    session: SessionDep,
    caller: Reader,
    start: Annotated[date, Query(alias="from")],
    end: Annotated[date, Query(alias="to")],
) -> list[DayAvailability]:
    """For each day from `from` to `to` (site-local dates, at most 92 days): whether the site is open, and
    the infusions and admissions booked against its capacity. Coordinators read any site, a treatment
    center its own."""
    site = _site(session, site_id, caller)
    if end < start or (end - start).days > 92:
        raise problems.invalid("query", "to", "must be on or after from, at most 92 days later")
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
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={"examples": [{"conditioning_days": 4, "receipt_buffer_hours": 24.0}]},
    )
    conditioning_days: Annotated[
        int, Field(ge=0, le=30, description="Days of conditioning before infusion (day 0)")
    ]
    receipt_buffer_hours: Annotated[
        float, Field(ge=0, le=24 * 14, description="Product receipt to conditioning start")
    ]


@router.put(
    "/therapies/{code}/protocol", summary="Set a therapy's scheduling protocol", response_model=ProtocolBody
)
def put_protocol(code: Ident, body: ProtocolBody, session: SessionDep, _: Coordinator) -> ProtocolBody:
    """Coordinators set how many days of conditioning precede the infusion (day 0) of a therapy, and how
    many hours after the product's receipt conditioning may start. Options offered from then on follow it."""
    protocol = session.get(TherapyProtocol, code) or TherapyProtocol(code=code, **body.model_dump())
    protocol.conditioning_days, protocol.receipt_buffer_hours = (
        body.conditioning_days,
        body.receipt_buffer_hours,
    )
    session.add(protocol)
    session.commit()
    return ProtocolBody.model_validate(protocol)


# ---------------------------------------------------------------- cases, options, bookings


OPTION_EXAMPLE: JsonDict = {
    "option_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "conditioning_start_on": "2026-12-04",
    "infusion_on": "2026-12-08",
}
APPOINTMENT_EXAMPLE: JsonDict = {
    "id": APPOINTMENT_ID,
    "coi": COI,
    "treatment_center_id": "TC-BOSTON",
    "state": "tentative",
    "conditioning_start_on": "2026-12-04",
    "infusion_on": "2026-12-08",
    "hold_reason": None,
    "hold_cause": None,
    "reason_code": None,
    "note": None,
    "version": 1,
    "confirmed_at": None,
    "infused_on": None,
    "out_of_specification": False,
}


class OptionView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [OPTION_EXAMPLE]})

    option_id: UUID
    conditioning_start_on: date
    infusion_on: date


class AppointmentView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                APPOINTMENT_EXAMPLE,
                APPOINTMENT_EXAMPLE
                | {"state": "confirmed", "version": 2, "confirmed_at": "2026-12-03T08:15:00Z"},
                APPOINTMENT_EXAMPLE
                | {
                    "state": "on_hold",
                    "version": 3,
                    "hold_reason": "temperature excursion: -120.0 °C above the -150.0 °C limit",
                    "hold_cause": "temperature_excursion",
                    "reason_code": "temperature_excursion",
                },
            ]
        }
    )

    id: UUID
    coi: str
    treatment_center_id: str
    state: AppointmentState
    conditioning_start_on: date
    infusion_on: date
    hold_reason: str | None = Field(description="Why it is on hold or was cancelled")
    hold_cause: str | None = Field(
        default=None,
        description="While on hold, what holds it: quarantine, temperature_excursion or coi_break",
    )
    reason_code: SlotReasonCode | None = Field(
        default=None, description="The code of its latest hold, move, resumption or cancellation"
    )
    note: str | None = Field(
        default=None, description="The note a coordinator gave with their latest cancellation or move"
    )
    version: int = Field(description="Increases with every change of the appointment")
    confirmed_at: datetime | None
    infused_on: date | None
    out_of_specification: bool = Field(
        default=False,
        description="Its product was released out of specification (booked once its file was complete)",
    )

    @field_validator("out_of_specification", mode="before")
    @classmethod
    def _unset_is_false(cls, value: object) -> object:
        return False if value is None else value  # appointments from before the flag


class CaseView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "coi": COI,
                    "patient_ref": "PSN-7F3A",
                    "therapy_code": "WASKYRA",
                    "treatment_center_id": "TC-BOSTON",
                    "eta_at": "2026-12-03T09:00:00Z",
                    "product_delivered_at": None,
                    "quarantined": False,
                    "cancelled": False,
                    "attention": None,
                    "out_of_specification": False,
                    "oos_file_complete": False,
                    "options": [OPTION_EXAMPLE],
                    "appointment": APPOINTMENT_EXAMPLE,
                }
            ]
        }
    )

    coi: str
    patient_ref: str
    therapy_code: str
    treatment_center_id: str
    eta_at: datetime | None
    product_delivered_at: datetime | None
    quarantined: bool
    cancelled: bool
    attention: str | None = Field(description="What needs a coordinator (a delay, a risk to the slot)")
    out_of_specification: bool = Field(
        default=False, description="The current lot was released out of specification"
    )
    oos_file_complete: bool = Field(
        default=False, description="Its out-of-specification file is complete: the infusion may be booked"
    )
    options: list[OptionView] = Field(description="The options currently offered, earliest first")
    appointment: AppointmentView | None


def _case(session: Session, coi: str, caller: Principal) -> Case:
    """The case the caller may read: a missing one and another site's are the same 404, word for word
    (anything else would tell a treatment center that the COI exists, and where)."""
    case = commands.visible_case(session, coi, caller.site_scope)
    if case is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("case"))
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
        out_of_specification=bool(case.out_of_specification),
        oos_file_complete=case.oos_file_completed_at is not None,
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


@router.get("/cases/{coi}", summary="Read a case", response_model=CaseView)
def read_case(coi: str, session: SessionDep, caller: Reader) -> CaseView:
    """The scheduling case of one COI: the product's ETA and delivery, whether it is quarantined or
    cancelled, what needs a coordinator, the options offered and the appointment. A treatment center
    reads only its own site's cases."""
    return _case_view(session, _case(session, coi, caller))


class BookingRequest(RequestModel):
    """Book one offered option, or name the conditioning start day yourself (checked the same way)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"option_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"},
                {"conditioning_start_on": "2026-12-07"},
            ]
        }
    )

    option_id: UUID | None = None
    conditioning_start_on: date | None = None

    @model_validator(mode="after")
    def _one(self) -> BookingRequest:
        if (self.option_id is None) == (self.conditioning_start_on is None):
            raise ValueError("give exactly one of option_id and conditioning_start_on")
        return self


@router.post(
    "/cases/{coi}/bookings",
    summary="Book an infusion appointment",
    status_code=status.HTTP_201_CREATED,
    response_model=AppointmentView,
    responses=problems.documented(409),
)
def book(
    coi: str,
    body: BookingRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
    runtime: RuntimeDep,
) -> AppointmentView:
    """Coordinators book one of the case's offered options (`option_id`), or name the conditioning start
    day (`conditioning_start_on`), checked the same way: working days, a free infusion chair, beds through
    conditioning, no blackout, after the product's receipt. The appointment is tentative and the site gets
    `slot.proposed` by webhook; it is confirmed (`slot.confirmed`) only once the product is delivered with
    every COI verified and a clean temperature record. A site is never overbooked: no capacity, a case
    that already has an appointment or a cancelled order is 409 with the reasons; an option that is not
    offered now, or a conditioning start before today at the site, is 422 naming the field."""
    case = _case(session, coi, caller)
    settings = runtime.settings
    try:
        option, field = commands.choose_option(
            session, case, option_id=body.option_id, conditioning_start_on=body.conditioning_start_on
        )
        appointment = commands.book(
            session,
            case,
            option,
            booked_by=caller.subject,
            default_buffer_hours=settings.receipt_buffer_hours,
            correlation_id=request.state.correlation_id,
            field=field,
        )
        session.commit()
    except commands.Invalid as invalid:
        session.rollback()
        raise problems.invalid("body", invalid.field, invalid.detail) from invalid
    except commands.Refused as refused:
        session.rollback()
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    return AppointmentView.model_validate(appointment, from_attributes=True)


# ---------------------------------------------------------------- vein-to-vein plans


PLAN_EXAMPLE: JsonDict = {
    "plan_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
    "state": "offered",
    "collection_center_id": "TC-BOSTON",
    "collection_on": "2026-12-07",
    "manufacturing_site_id": "MFG-AGC-MILAN",
    "manufacturing_week": "2026-W50",
    "manufacturing_start_on": "2026-12-09",
    "release_on": "2027-01-21",
    "eta_at": "2027-01-23T21:00:00Z",
    "treatment_center_id": "TC-BOSTON",
    "conditioning_start_on": "2027-01-25",
    "infusion_on": "2027-01-29",
    "appointment_id": None,
}


class PlanRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"count": 3}, {}]})

    count: Annotated[
        int, Field(ge=1, le=plan_commands.MAX_PLANS, description="How many plans, earliest first")
    ] = 3


class PlanView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                PLAN_EXAMPLE,
                PLAN_EXAMPLE | {"state": "booked", "appointment_id": APPOINTMENT_ID},
            ]
        }
    )

    plan_id: UUID
    state: PlanState = Field(description="offered, booked (every leg held tentatively) or withdrawn")
    collection_center_id: str
    collection_on: date = Field(description="Apheresis day, at the collection center")
    manufacturing_site_id: str
    manufacturing_week: str = Field(description="The manufacturing slot's ISO week, at the site")
    manufacturing_start_on: date = Field(description="At the manufacturing site")
    release_on: date = Field(description="Expected release of the product, at the manufacturing site")
    eta_at: datetime = Field(description="Expected delivery of the product at the treatment center")
    treatment_center_id: str
    conditioning_start_on: date = Field(description="At the treatment center")
    infusion_on: date = Field(description="Day 0, at the treatment center")
    appointment_id: UUID | None = Field(description="The tentative infusion appointment, once booked")
    collection_done_at: datetime | None = Field(default=None, description="collection.recorded")
    manufacturing_started_at: datetime | None = Field(default=None, description="manufacturing.started")
    product_released_at: datetime | None = Field(default=None, description="product.released_for_shipment")
    product_delivered_at: datetime | None = Field(
        default=None, description="shipment.delivered (clean; it alone confirms the infusion)"
    )
    replanned_at: datetime | None = Field(default=None, description="The latest re-plan after a slip")
    replan_cause: PlanReplanCause | None = Field(default=None, description="Which leg slipped")
    postponement_reason_code: CollectionPostponementCode | None = None
    postponement_note: str | None = Field(
        default=None, description="The coordinator's note with the latest postponement (never published)"
    )


class PostponementRequest(RequestModel):
    """A booked plan's collection moved to a later day, why, and a note if need be."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"collection_on": "2026-12-14", "reason_code": "patient_condition"}]}
    )

    collection_on: date = Field(description="The new collection day, at the collection center")
    reason_code: CollectionPostponementCode = Field(
        description="Why, from a closed list: the code is what the sites are told"
    )
    note: Note | None = None


class BookPlanRequest(RequestModel):
    """Nothing to say: the plan is the one named in the path (send `{}`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}]})


def _plan_view(row: CasePlan) -> PlanView:
    return PlanView(plan_id=row.id, **row.model_dump(exclude={"id"}))


@router.post(
    "/cases/{coi}/plans",
    summary="Offer a case's vein-to-vein plans",
    response_model=list[PlanView],
    responses=problems.documented(409),
)
def offer_plans(
    coi: str,
    body: PlanRequest,
    session: SessionDep,
    caller: Coordinator,
    runtime: RuntimeDep,
) -> list[PlanView]:
    """Coordinators ask for the earliest plans (`count`, default 3) of an accepted order's case, one per
    collection day: a free apheresis chair at the treatment center's collection center (working day, no
    blackout), the earliest manufacturing slot (ISO week, no blackout week, slots for the therapy) the
    starting material can make within its limits (fresh: hours from collection to manufacturing start;
    cryopreserved: its age), the expected release, the return shipment's transit, and the first infusion
    option after the product's delivery (receipt buffer, chairs, beds, working days). Each leg is judged
    in its own site's calendar and time zone. Nothing is held until one is booked; the plans offered
    before are withdrawn. A cancelled order, a case already planned or booked, or a collection center,
    manufacturing protocol or site missing is 409 with the reasons; an empty list means no plan fits."""
    case = _case(session, coi, caller)
    try:
        rows = plan_commands.offer_plans(
            session, case, count=body.count, default_buffer_hours=runtime.settings.receipt_buffer_hours
        )
    except commands.Refused as refused:
        session.rollback()
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return [_plan_view(row) for row in rows]


@router.get("/cases/{coi}/plans", summary="List a case's plans", response_model=list[PlanView])
def list_plans(coi: str, session: SessionDep, caller: Reader) -> list[PlanView]:
    """The case's plans, oldest first: each leg's day and, for the booked one, when each leg's event
    confirmed it and its latest re-plan. A treatment center reads only its own site's cases."""
    case = _case(session, coi, caller)
    rows = session.exec(
        select(CasePlan).where(CasePlan.coi == case.coi).order_by(col(CasePlan.offered_at))
    ).all()
    return [_plan_view(row) for row in rows]


@router.post(
    "/cases/{coi}/plans/{plan_id}/collection-postponement",
    summary="Postpone a booked plan's collection",
    response_model=PlanView,
    responses=problems.documented(409),
)
def postpone_collection(
    coi: str,
    plan_id: UUID,
    body: PostponementRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
    runtime: RuntimeDep,
) -> PlanView:
    """Coordinators move a booked plan's collection to a later day: the collection center's calendar
    and every later leg (manufacturing slot, release, return, infusion) are re-planned within capacity,
    held as a booking holds them; the infusion appointment moves (`slot.rescheduled`) and every site
    is told (`plan.replanned.v1`, the treatment center's webhook). No chair, no slot or no infusion left,
    a recorded collection, a plan not booked: 409 with every reason, nothing changes. A day not after the
    planned one or not ahead: 422 naming `collection_on`. The note stays here."""
    case = _case(session, coi, caller)
    try:
        row = plan_commands.postpone_collection(
            session,
            case,
            plan_id,
            body.collection_on,
            body.reason_code,
            body.note,
            default_buffer_hours=runtime.settings.receipt_buffer_hours,
            correlation_id=request.state.correlation_id,
        )
    except plan_commands.UnknownPlan as unknown:
        session.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("plan")) from unknown
    except commands.Invalid as invalid:
        session.rollback()
        raise problems.invalid("body", invalid.field, invalid.detail) from invalid
    except commands.Refused as refused:
        session.rollback()
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return _plan_view(row)


@router.post(
    "/cases/{coi}/plans/{plan_id}/book",
    summary="Book a vein-to-vein plan",
    status_code=status.HTTP_201_CREATED,
    response_model=PlanView,
    responses=problems.documented(409),
)
def book_plan(
    coi: str,
    plan_id: UUID,
    body: BookPlanRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
    runtime: RuntimeDep,
) -> PlanView:
    """Coordinators book one offered plan (the body is `{}`): every leg is held tentatively at once, or none is. The
    manufacturing slot is taken first, and a collection is never booked without one; each leg is judged
    again on what is booked now, so two coordinators never take the same last slot, chair or bed. The
    infusion leg becomes a tentative appointment (the site gets `slot.proposed`), confirmed only once the
    product is delivered clean. A leg whose capacity went, a plan no longer offered, a cancelled order or
    a case already booked is 409 with every reason; another case's or an unknown plan is 404."""
    case = _case(session, coi, caller)
    try:
        row = plan_commands.book_plan(
            session,
            case,
            plan_id,
            booked_by=caller.subject,
            default_buffer_hours=runtime.settings.receipt_buffer_hours,
            correlation_id=request.state.correlation_id,
        )
    except plan_commands.UnknownPlan as unknown:
        session.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("plan")) from unknown
    except commands.Refused as refused:
        session.rollback()
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return _plan_view(row)


def _coordinators_reason(code: SlotReasonCode) -> SlotReasonCode:
    problem = domain.coordinator_reason_problem(code)
    if problem is not None:
        raise ValueError(problem)
    return code


CoordinatorReason = Annotated[
    SlotReasonCode,
    AfterValidator(_coordinators_reason),
    Field(
        description="Why, from a closed list: site_request, patient_request, patient_condition, "
        "clinical_decision, site_capacity, delay or other (the others are the system's). The code is what "
        "the site is told; the note stays here."
    ),
]


class CancelRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"reason_code": "patient_condition", "note": "febrile on admission; reassess next week"},
                {"reason_code": "clinical_decision"},
            ]
        }
    )

    reason_code: CoordinatorReason
    note: Note | None = None


def _appointment(session: Session, appointment_id: UUID, caller: Principal) -> Appointment:
    """The appointment the caller may read: a missing one and another site's are the same 404, which
    names no id."""
    appointment = commands.visible_appointment(session, appointment_id, caller.site_scope)
    if appointment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("appointment"))
    return appointment


def _appointment_to_change(
    session: Session, appointment_id: UUID, caller: Principal
) -> tuple[Appointment, Case]:
    """The appointment and its case under the case's lock (the one bookings and shipment events take), both
    read again: a cancellation is never overwritten by a confirmation that read the appointment before."""
    appointment = _appointment(session, appointment_id, caller)
    case = _case(session, appointment.coi, caller)
    commands.lock_appointment(session, appointment, case)
    return appointment, case


@router.post(
    "/appointments/{appointment_id}/cancel",
    summary="Cancel an appointment",
    response_model=AppointmentView,
    responses=problems.documented(409),
)
def cancel_appointment(
    appointment_id: UUID, body: CancelRequest, request: Request, session: SessionDep, caller: Coordinator
) -> AppointmentView:
    """Coordinators cancel an appointment, giving the reason as a code (and a note if need be); the site
    gets `slot.cancelled` by webhook with the code. The note is kept with the appointment and returned
    with it, never sent. An appointment already cancelled or infused is 409."""
    appointment, _ = _appointment_to_change(session, appointment_id, caller)
    try:
        commands.cancel_by_coordinator(
            session, appointment, body.reason_code, body.note, correlation_id=request.state.correlation_id
        )
    except commands.Refused as refused:
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return AppointmentView.model_validate(appointment, from_attributes=True)


class RescheduleRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "option_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
                    "reason_code": "site_request",
                    "note": "the site asked for a Tuesday",
                }
            ]
        }
    )

    option_id: UUID = Field(description="One of the case's current options")
    reason_code: CoordinatorReason
    note: Note | None = None


@router.post(
    "/appointments/{appointment_id}/reschedule",
    summary="Move an appointment to another option",
    response_model=AppointmentView,
    responses=problems.documented(409),
)
def reschedule_appointment(
    appointment_id: UUID,
    body: RescheduleRequest,
    request: Request,
    session: SessionDep,
    caller: Coordinator,
    runtime: RuntimeDep,
) -> AppointmentView:
    """Coordinators move a tentative or held appointment to another of the case's current options, checked
    as a booking is (working day, chair, beds, blackouts, after the product's receipt; the days it leaves
    are free for it); it keeps its state and the site gets `slot.rescheduled` with the old and new days and
    the reason's code (the note stays with the appointment).
    A confirmed, cancelled or infused appointment, the same days or no capacity is 409 with the reasons;
    an option that is not current, or that would start conditioning before today at the site, is 422."""
    appointment, case = _appointment_to_change(session, appointment_id, caller)
    settings = runtime.settings
    try:
        option, field = commands.choose_option(
            session, case, option_id=body.option_id, conditioning_start_on=None
        )
        commands.reschedule(
            session,
            appointment,
            case,
            option,
            body.reason_code,
            note=body.note,
            default_buffer_hours=settings.receipt_buffer_hours,
            correlation_id=request.state.correlation_id,
            field=field,
        )
    except commands.Invalid as invalid:
        raise problems.invalid("body", invalid.field, invalid.detail) from invalid
    except commands.Refused as refused:
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return AppointmentView.model_validate(appointment, from_attributes=True)


ALERT_EXAMPLE: JsonDict = {
    "id": "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e",
    "appointment_id": APPOINTMENT_ID,
    "coi": COI,
    "treatment_center_id": "TC-BOSTON",
    "cause": "quarantine",
    "detail": "temperature excursion at receipt; the confirmed appointment is on hold: the site must not "
    "start conditioning",
    "conditioning_may_have_started": False,
    "raised_at": "2026-12-03T09:40:00Z",
    "resolved_at": "2026-12-03T10:05:00Z",
    "resolved_by": "coord-ana",
    "resolution": "called the site: conditioning postponed until QA decides",
}


class AlertView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ALERT_EXAMPLE]})

    id: UUID
    appointment_id: UUID
    coi: str
    treatment_center_id: str
    cause: str = Field(
        description="quarantine, temperature_excursion, coi_break, qa_rejection, order_cancelled or delay"
    )
    detail: str
    conditioning_may_have_started: bool
    raised_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class ResolveRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"resolution": "called the site: conditioning postponed"}]}
    )

    resolution: Annotated[str, Field(min_length=3, max_length=500, description="What was done")]


@router.post(
    "/alerts/{alert_id}/resolve",
    summary="Resolve an alert about an appointment",
    response_model=AlertView,
    responses=problems.documented(409),
)
def resolve_alert(
    alert_id: UUID, body: ResolveRequest, session: SessionDep, caller: Coordinator
) -> AlertView:
    """An alert (`at_risk` on the worklist: a confirmed appointment held or cancelled, or a threat once
    conditioning may have started) stays until a coordinator has acted and says what was done here; it then
    leaves the worklist. An alert already resolved is 409."""
    alert = session.get(SlotAlert, alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("alert"))
    try:
        commands.resolve_alert(session, alert, body.resolution, resolved_by=caller.subject)
    except commands.Refused as refused:
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return AlertView.model_validate(alert, from_attributes=True)


class InfusionRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"infused_on": "2026-12-08"}]})

    infused_on: date


class InfusionView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "appointment": APPOINTMENT_EXAMPLE
                    | {
                        "state": "infused",
                        "version": 3,
                        "confirmed_at": "2026-12-03T08:15:00Z",
                        "infused_on": "2026-12-08",
                    },
                    "follow_up_visits": 19,
                }
            ]
        }
    )

    appointment: AppointmentView
    follow_up_visits: int = Field(description="Long-term follow-up visits planned from the infusion")


@router.post(
    "/appointments/{appointment_id}/infusion",
    summary="Record the infusion",
    response_model=InfusionView,
    responses=problems.documented(409),
)
def record_infusion(
    appointment_id: UUID, body: InfusionRequest, request: Request, session: SessionDep, caller: Coordinator
) -> InfusionView:
    """Coordinators record that a confirmed appointment's infusion took place on `infused_on`. For a
    therapy with long-term follow-up, the visits (15 years) are planned from that day; the site gets
    `infusion.recorded` by webhook and order intake moves the order to `infused`. An appointment that is
    not confirmed, or whose product was not received or is in quarantine, is 409; a day in the future
    (at the site), before conditioning started or before the product was received is 422."""
    appointment, case = _appointment_to_change(session, appointment_id, caller)
    try:
        visits = commands.record_infusion(
            session, appointment, case, body.infused_on, correlation_id=request.state.correlation_id
        )
    except commands.Invalid as invalid:
        raise problems.invalid("body", invalid.field, invalid.detail) from invalid
    except commands.Refused as refused:
        raise problems.conflict("; ".join(refused.reasons), refused.reasons) from refused
    session.commit()
    return InfusionView(
        appointment=AppointmentView.model_validate(appointment, from_attributes=True), follow_up_visits=visits
    )


class VisitView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "number": 1,
                    "due_on": "2027-01-08",
                    "window_start_on": "2027-01-01",
                    "window_end_on": "2027-01-15",
                    "completed_on": None,
                }
            ]
        }
    )

    number: int
    due_on: date
    window_start_on: date
    window_end_on: date
    completed_on: date | None


@router.get(
    "/cases/{coi}/follow-up", summary="List a case's follow-up visits", response_model=list[VisitView]
)
def follow_up(coi: str, session: SessionDep, caller: Reader) -> list[VisitView]:
    """The long-term follow-up visits planned from the infusion, in order: when each is due, its window
    and when it was done. A visit whose window closes undone is published and put on the worklist."""
    _case(session, coi, caller)
    rows = session.exec(
        select(FollowUpVisit).where(FollowUpVisit.coi == coi).order_by(col(FollowUpVisit.number))
    )
    return [VisitView.model_validate(v, from_attributes=True) for v in rows]


# ---------------------------------------------------------------- worklist


class WorkItem(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "to_book",
                    "coi": COI,
                    "treatment_center_id": "TC-BOSTON",
                    "since": "2026-12-01T09:00:03Z",
                    "detail": "options offered: book one",
                    "appointment_id": None,
                }
            ]
        }
    )

    kind: str = Field(
        description="at_risk, attention, to_book, on_hold, webhook_failing or follow_up_overdue",
        examples=["to_book", "on_hold", "at_risk"],
    )
    coi: str
    treatment_center_id: str
    since: datetime
    detail: str
    appointment_id: UUID | None = None
    alert_id: UUID | None = Field(
        default=None, description="An `at_risk` item's alert: resolve it with POST /alerts/{alert_id}/resolve"
    )


def _work_item_key(item: WorkItem) -> tuple[datetime, str, str]:
    """Oldest first; then by kind and a digest of the item, so that two at the same instant keep an order."""
    return item.since, item.kind, hashlib.sha256(item.model_dump_json().encode()).hexdigest()[:16]


def _at_risk_items(session: Session) -> list[WorkItem]:
    """Alerts no coordinator has resolved: they stay whatever the appointment became since."""
    return [
        WorkItem(
            kind="at_risk",
            coi=alert.coi,
            treatment_center_id=alert.treatment_center_id,
            since=alert.raised_at,
            detail=alert.detail,
            appointment_id=alert.appointment_id,
            alert_id=alert.id,
        )
        for alert in session.exec(select(SlotAlert).where(col(SlotAlert.resolved_at).is_(None)))
    ]


def _on_hold_items(session: Session) -> list[WorkItem]:
    return [
        WorkItem(
            kind="on_hold",
            coi=appointment.coi,
            treatment_center_id=appointment.treatment_center_id,
            since=appointment.updated_at,
            detail=f"on hold ({appointment.hold_cause or 'hold'}): {appointment.hold_reason or 'no reason given'}",
            appointment_id=appointment.id,
        )
        for appointment in session.exec(
            select(Appointment).where(Appointment.state == AppointmentState.ON_HOLD)
        )
    ]


WorkKind = Literal["at_risk", "attention", "to_book", "on_hold", "webhook_failing", "follow_up_overdue"]


def wanted_work(
    items: list[WorkItem], site_scope: str | None, kind: str | None, treatment_center_id: str | None
) -> list[WorkItem]:
    """The items a caller sees: a treatment center only its own site's; each filter given narrows them."""
    return [
        item
        for item in items
        if (site_scope is None or item.treatment_center_id == site_scope)
        and (kind is None or item.kind == kind)
        and (treatment_center_id is None or item.treatment_center_id == treatment_center_id)
    ]


@router.get("/worklist", summary="Read the coordinators' worklist", response_model=list[WorkItem])
def worklist(
    request: Request,
    response: Response,
    session: SessionDep,
    caller: Reader,
    page: Page,
    kind: WorkKind | None = None,
    treatment_center_id: Ident | None = None,
) -> list[WorkItem]:
    """Every case needing a coordinator, oldest first, a page at a time (`limit`, `cursor`; the next page
    in `Link`): an appointment the site may act on that is
    threatened (`at_risk`: it stays until resolved with POST /alerts/{alert_id}/resolve), options to book
    (`to_book`), a case to look at (`attention`: an ETA that has passed, no feasible option, a rejected
    product), an appointment on hold (`on_hold`, with its cause), a webhook the site is not receiving
    (`webhook_failing`), a follow-up visit overdue (`follow_up_overdue`). A coordinator sees every site's,
    a treatment center its own (read-only: the actions are the coordinators'). Each filter given narrows
    the list: `kind`, `treatment_center_id` (for a treatment center, another site's finds none)."""
    # Computed from open items only (each ends when it is handled); paged like every list, by when and what.
    items = wanted_work(work_items(session), caller.site_scope, kind, treatment_center_id)
    shown, next_cursor = page_list(items, _work_item_key, page)
    link_next(request, response, next_cursor)
    return shown


def work_items(session: Session) -> list[WorkItem]:
    """The whole worklist, unordered (the route orders and pages it)."""
    items: list[WorkItem] = [*_at_risk_items(session), *_on_hold_items(session)]
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
    for failing in webhook_commands.failing_work(session):
        items.append(WorkItem(kind="webhook_failing", **asdict(failing)))
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
    return items


# ---------------------------------------------------------------- appointments, FHIR


@router.get("/appointments", summary="List appointments", response_model=list[AppointmentView])
def list_appointments(
    request: Request,
    response: Response,
    session: SessionDep,
    caller: Reader,
    page: Page,
    coi: CoiIdentifier | None = None,
    treatment_center_id: Ident | None = None,
    state: AppointmentState | None = None,
) -> list[AppointmentView]:
    """The appointments, oldest first, one page at a time (`limit`, `cursor`; the next page in `Link`): a coordinator sees every site's, a treatment center
    its own. Each filter given narrows the list: `coi` (one chain-of-identity identifier),
    `treatment_center_id` (for a treatment center, another site's finds none), `state`; a parameter that
    is not one of these is 422."""
    wanted = commands.AppointmentFilter(coi=coi, treatment_center_id=treatment_center_id, state=state)
    appointments, next_cursor = commands.find_appointments(session, caller.site_scope, wanted, page)
    link_next(request, response, next_cursor)
    return [AppointmentView.model_validate(a, from_attributes=True) for a in appointments]


@router.get("/appointments/{appointment_id}", summary="Read an appointment", response_model=AppointmentView)
def read_appointment(appointment_id: UUID, session: SessionDep, caller: Reader) -> AppointmentView:
    """One appointment: its state (tentative, on hold, confirmed, cancelled, infused), its days and why
    it is held. A treatment center reads only its own site's (404 otherwise)."""
    return AppointmentView.model_validate(_appointment(session, appointment_id, caller), from_attributes=True)
