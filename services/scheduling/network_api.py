"""Planning network HTTP routes (coordinators): collection centers, manufacturing sites with their slots
per therapy, a therapy's manufacturing protocol, a treatment center's collection center. Rules and writes
are `network_commands`; these only translate."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from cgt_contracts.envelope import Identifier
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.config import JsonDict
from sqlmodel import Session, col, select

from services.common import problems
from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, RequestModel
from services.common.paging import Page, link_next, page_of
from services.common.scope import not_found
from services.common.service import db_session
from services.scheduling import commands, domain, network_commands, plan_commands
from services.scheduling.api import TimeZone, Weekdays
from services.scheduling.domain import IsoWeek, StartingMaterial
from services.scheduling.models import CollectionCenter, ManufacturingSite, Site, TherapyProtocol
from services.scheduling.runtime import WASKYRA_MANUFACTURING

router = APIRouter(route_class=EdgeRoute, tags=["planning network"])
SessionDep = Annotated[Session, Depends(db_session)]
Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]


def _week(value: str) -> str:
    try:
        return str(IsoWeek.parse(value))
    except ValueError as error:
        raise ValueError("not an ISO week such as 2026-W52") from error


Week = Annotated[
    str, Field(min_length=8, max_length=8, description="ISO week, `2026-W52`"), AfterValidator(_week)
]


def _refused(session: Session, refused: commands.Refused) -> problems.ProblemError:
    session.rollback()
    return problems.conflict("; ".join(refused.reasons), refused.reasons)


# ---------------------------------------------------------------- collection centers


COLLECTION_CENTER_EXAMPLE: JsonDict = {
    "timezone": "America/New_York",
    "chairs_per_day": 2,
    "working_weekdays": [1, 2, 3, 4, 5],
    "blackout_dates": ["2026-12-25"],
}


class CollectionCenterBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [COLLECTION_CENTER_EXAMPLE]})

    timezone: TimeZone
    chairs_per_day: Annotated[int, Field(ge=0, le=200, description="Apheresis chairs per working day")]
    working_weekdays: Weekdays
    blackout_dates: Annotated[list[date], Field(max_length=366, default=[])]


class CollectionCenterView(CollectionCenterBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "TC-BOSTON", **COLLECTION_CENTER_EXAMPLE}]}
    )

    id: str


def _center_view(center: CollectionCenter) -> CollectionCenterView:
    calendar = plan_commands.collection_calendar_of(center)
    return CollectionCenterView(
        id=center.id,
        timezone=center.timezone,
        chairs_per_day=center.chairs_per_day,
        working_weekdays=sorted(calendar.working_weekdays),
        blackout_dates=sorted(calendar.blackout_dates),
    )


@router.put(
    "/collection-centers/{center_id}",
    summary="Set a collection center's calendar",
    response_model=CollectionCenterView,
    responses=problems.documented(409),
)
def put_collection_center(
    center_id: Identifier, body: CollectionCenterBody, session: SessionDep, _: Coordinator
) -> CollectionCenterView:
    """Coordinators set an apheresis center's time zone, chairs per working day, working weekdays and
    blackout dates; the whole calendar is replaced (a new id creates it). Plans are offered and booked
    against it. A calendar that would strand a booked collection (its day closed, fewer chairs than are
    booked that day) is 409 with every such day: move or cancel those plans first."""
    calendar = network_commands.CollectionCenterCalendar(
        timezone=body.timezone,
        chairs_per_day=body.chairs_per_day,
        working_weekdays=frozenset(body.working_weekdays),
        blackout_dates=frozenset(body.blackout_dates),
    )
    try:
        center = network_commands.set_collection_center(session, center_id, calendar)
    except commands.Refused as refused:
        raise _refused(session, refused) from refused
    session.commit()
    return _center_view(center)


@router.get(
    "/collection-centers", summary="List collection centers", response_model=list[CollectionCenterView]
)
def list_collection_centers(
    request: Request, response: Response, session: SessionDep, _: Coordinator, page: Page
) -> list[CollectionCenterView]:
    """Every collection center, by id, a page at a time."""
    key = (col(CollectionCenter.id),)
    rows, cursor = page_of(session, select(CollectionCenter), CollectionCenter, page, key=key)
    link_next(request, response, cursor)
    return [_center_view(row) for row in rows]


@router.get(
    "/collection-centers/{center_id}", summary="Read a collection center", response_model=CollectionCenterView
)
def read_collection_center(center_id: str, session: SessionDep, _: Coordinator) -> CollectionCenterView:
    """One collection center's calendar (coordinators); an unknown id is 404."""
    center = session.get(CollectionCenter, center_id)
    if center is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("collection center"))
    return _center_view(center)


class CollectionCenterChoice(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"collection_center_id": "TC-BOSTON"}]})

    collection_center_id: Annotated[
        Identifier | None,
        Field(description="A collection center's id (the site's own may be one); null: none"),
    ]


@router.put(
    "/sites/{site_id}/collection-center",
    summary="Set where a treatment center's patients are collected",
    response_model=CollectionCenterChoice,
)
def put_site_collection_center(
    site_id: str, body: CollectionCenterChoice, session: SessionDep, _: Coordinator
) -> CollectionCenterChoice:
    """Coordinators name the collection center of a treatment center (it may be the site itself). A case
    at a site without one is not planned (409 on `POST /cases/{coi}/plans`). An unknown site is 404, an
    unknown collection center 422."""
    site = session.get(Site, site_id)
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("site"))
    try:
        network_commands.set_collection_center_of(session, site, body.collection_center_id)
    except network_commands.UnknownCollectionCenter as unknown:
        raise problems.invalid("body", "collection_center_id", "no such collection center") from unknown
    session.commit()
    return CollectionCenterChoice(collection_center_id=site.collection_center_id)


# ---------------------------------------------------------------- manufacturing sites


MANUFACTURING_SITE_EXAMPLE: JsonDict = {
    "timezone": "Europe/Rome",
    "blackout_weeks": ["2026-W52"],
    "slots_per_week": {"WASKYRA": 2},
}


class ManufacturingSiteBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [MANUFACTURING_SITE_EXAMPLE]})

    timezone: TimeZone
    blackout_weeks: Annotated[list[Week], Field(max_length=104, default=[])]
    slots_per_week: Annotated[
        dict[Identifier, Annotated[int, Field(ge=0, le=500)]],
        Field(max_length=100, description="Manufacturing slots per ISO week, by therapy code"),
    ]


class ManufacturingSiteView(ManufacturingSiteBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "MFG-AGC-MILAN", **MANUFACTURING_SITE_EXAMPLE}]}
    )

    id: str


def _site_view(session: Session, site: ManufacturingSite) -> ManufacturingSiteView:
    return ManufacturingSiteView(
        id=site.id,
        timezone=site.timezone,
        blackout_weeks=[w for w in site.blackout_weeks.split(",") if w],
        slots_per_week={
            c.therapy_code: c.slots_per_week for c in network_commands.capacities_of(session, site.id)
        },
    )


@router.put(
    "/manufacturing-sites/{site_id}",
    summary="Set a manufacturing site's calendar and slots",
    response_model=ManufacturingSiteView,
    responses=problems.documented(409),
)
def put_manufacturing_site(
    site_id: Identifier, body: ManufacturingSiteBody, session: SessionDep, _: Coordinator
) -> ManufacturingSiteView:
    """Coordinators set a manufacturing site's time zone, blackout ISO weeks and slots per week for each
    therapy it makes; the whole calendar is replaced (a therapy left out is no longer made there; a new id
    creates the site). A change that would strand a booked slot (its week a blackout, fewer slots than are
    booked that week) is 409 with every such week."""
    calendar = network_commands.ManufacturingSiteCalendar(
        timezone=body.timezone,
        blackout_weeks=frozenset(IsoWeek.parse(w) for w in body.blackout_weeks),
        slots_per_week=dict(body.slots_per_week),
    )
    try:
        site = network_commands.set_manufacturing_site(session, site_id, calendar)
    except commands.Refused as refused:
        raise _refused(session, refused) from refused
    session.commit()
    return _site_view(session, site)


@router.get(
    "/manufacturing-sites", summary="List manufacturing sites", response_model=list[ManufacturingSiteView]
)
def list_manufacturing_sites(
    request: Request, response: Response, session: SessionDep, _: Coordinator, page: Page
) -> list[ManufacturingSiteView]:
    """Every manufacturing site with its slots per therapy, by id, a page at a time."""
    key = (col(ManufacturingSite.id),)
    rows, cursor = page_of(session, select(ManufacturingSite), ManufacturingSite, page, key=key)
    link_next(request, response, cursor)
    return [_site_view(session, row) for row in rows]


@router.get(
    "/manufacturing-sites/{site_id}",
    summary="Read a manufacturing site",
    response_model=ManufacturingSiteView,
)
def read_manufacturing_site(site_id: str, session: SessionDep, _: Coordinator) -> ManufacturingSiteView:
    """One manufacturing site's calendar and slots per therapy (coordinators); an unknown id is 404."""
    site = session.get(ManufacturingSite, site_id)
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("manufacturing site"))
    return _site_view(session, site)


# ---------------------------------------------------------------- manufacturing protocol


class ManufacturingProtocolBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [WASKYRA_MANUFACTURING]})

    manufacturing_days: Annotated[int, Field(ge=1, le=365, description="Vein to release, in days")]
    starting_material: StartingMaterial
    outbound_transit_hours: Annotated[float, Field(gt=0, le=24 * 30, description="Collection center to site")]
    max_fresh_transit_hours: Annotated[
        float,
        Field(gt=0, le=24 * 30, description="Fresh material: collection to manufacturing start, at most"),
    ]
    max_cryopreserved_age_days: Annotated[
        int,
        Field(
            ge=1, le=3650, description="Cryopreserved material: collection to manufacturing start, at most"
        ),
    ]
    return_transit_hours: Annotated[float, Field(gt=0, le=24 * 30, description="Release to delivery")]


@router.put(
    "/therapies/{code}/manufacturing-protocol",
    summary="Set a therapy's manufacturing protocol",
    response_model=ManufacturingProtocolBody,
    responses=problems.documented(409),
)
def put_manufacturing_protocol(
    code: Identifier, body: ManufacturingProtocolBody, session: SessionDep, _: Coordinator
) -> ManufacturingProtocolBody:
    """Coordinators set a therapy's manufacturing time (vein to release), its starting material and that
    material's limits, and the transit allowances out and back. The therapy's scheduling protocol
    (`PUT /therapies/{code}/protocol`) must exist first (409 otherwise). Plans offered from then on follow
    it; booked plans keep their legs."""
    protocol = domain.ManufacturingProtocol(**body.model_dump())
    try:
        network_commands.set_manufacturing_protocol(session, code, protocol)
    except commands.Refused as refused:
        raise _refused(session, refused) from refused
    session.commit()
    return body


@router.get(
    "/therapies/{code}/manufacturing-protocol",
    summary="Read a therapy's manufacturing protocol",
    response_model=ManufacturingProtocolBody,
)
def read_manufacturing_protocol(code: str, session: SessionDep, _: Coordinator) -> ManufacturingProtocolBody:
    """A therapy's manufacturing protocol (coordinators); 404 while the therapy has none (or only part of
    one), so its cases are not planned."""
    protocol = plan_commands.manufacturing_protocol_of(session.get(TherapyProtocol, code))
    if protocol is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_found("manufacturing protocol"))
    return ManufacturingProtocolBody.model_validate(protocol, from_attributes=True)
