"""Registry HTTP routes (coordinator role): therapies, treatment centers with their qualifications per
therapy, prescribers and the sites they may order for."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cgt_contracts.envelope import Identifier
from cgt_contracts.events import QualificationWindow
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import ConfigDict, EmailStr, Field, field_validator, model_validator
from pydantic.config import JsonDict
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.common import problems
from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, RequestModel
from services.common.paging import Page, link_next, page_of
from services.common.problems import FieldError
from services.common.service import db_session
from services.order_intake import commands
from services.order_intake.domain import npi_is_valid
from services.order_intake.models import (
    Prescriber,
    PrescriberSite,
    SiteCertification,
    Therapy,
    TreatmentCenter,
)

router = APIRouter(route_class=EdgeRoute, tags=["registry"])
SessionDep = Annotated[Session, Depends(db_session)]
Coordinator = Annotated[Principal, Depends(require(Role.COORDINATOR))]
Ident = Identifier


class TherapyBody(RequestModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "code": "EXAMPLE-THERAPY",
                    "name": "Example autologous gene therapy",
                    "vector_type": "lentiviral",
                    "long_term_follow_up": True,
                    "storage_limit_celsius": -150.0,
                    "conditioning_days": 4,
                }
            ]
        },
    )
    code: Ident = Field(description="Product code")
    name: Annotated[str, Field(min_length=1, max_length=128)]
    vector_type: Annotated[str, Field(min_length=1, max_length=64)]
    long_term_follow_up: bool = Field(description="Whether patients are followed up for years after infusion")
    storage_limit_celsius: Annotated[
        float, Field(le=-60.0, ge=-273.15, description="Warmest temperature the product may reach in transit")
    ] = -150.0
    conditioning_days: Annotated[int, Field(ge=0, le=30, description="Days of conditioning before infusion")]


class Contact(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    role: Annotated[str, Field(min_length=1, max_length=64)]
    email: EmailStr | None = None
    phone: Annotated[str | None, Field(max_length=32)] = None


CERTIFICATION_EXAMPLE: JsonDict = {
    "therapy_code": "WASKYRA",
    "effective_on": "2026-06-01",
    "expires_on": "2028-05-31",
}


class CertificationWindow(RequestModel):
    effective_on: date
    expires_on: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> CertificationWindow:
        if self.expires_on is not None and self.expires_on < self.effective_on:
            raise ValueError("expires_on is before effective_on")
        return self


class CertificationBody(CertificationWindow):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [CERTIFICATION_EXAMPLE]})
    therapy_code: Ident


CENTER_EXAMPLE: JsonDict = {
    "id": "TC-EXAMPLE",
    "name": "Example QTC",
    "timezone": "America/Los_Angeles",
    "fin": "S1234",
    "country": "US",
    "contacts": [{"name": "Cell lab", "role": "cell_lab", "email": "lab@example.org"}],
}


class TreatmentCenterBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [CENTER_EXAMPLE]})

    id: Ident
    name: Annotated[str, Field(min_length=1, max_length=128)]
    timezone: Annotated[
        str, Field(min_length=1, max_length=64, description="IANA name, e.g. America/New_York")
    ]
    fin: Annotated[
        str | None,
        Field(
            pattern=r"^[A-NP-Z][0-9]{4}$",
            description="ISBT 128 facility identification number: the site's own DINs are issued under it",
        ),
    ] = None
    country: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Z]{2}$",
            description="ISO 3166-1 alpha-2 country code: in the US an out-of-specification product also "
            "needs its IND reference (a site without one is held to that rule)",
        ),
    ] = None
    contacts: Annotated[list[Contact], Field(max_length=20, default=[])]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError("not an IANA time zone name (such as Europe/Paris)") from error
        return value


class TreatmentCenterView(TreatmentCenterBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [CENTER_EXAMPLE | {"certifications": [CERTIFICATION_EXAMPLE]}]}
    )

    certifications: list[CertificationBody] = Field(description="The site's qualifications per therapy")


class PrescriberBody(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"npi": "1245319599", "name": "Dr. R. Okafor", "treatment_center_ids": ["TC-EXAMPLE"]}
            ]
        }
    )

    npi: Annotated[str, Field(pattern=r"^[0-9]{10}$", description="National Provider Identifier")]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    treatment_center_ids: Annotated[
        list[Ident], Field(max_length=50, default=[], description="The sites the prescriber may order for")
    ]

    @field_validator("npi")
    @classmethod
    def _check_digit(cls, value: str) -> str:
        if not npi_is_valid(value):
            raise ValueError("the NPI fails its check digit (Luhn over 80840 and the first nine digits)")
        return value


def _commit_or_conflict(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise problems.conflict(f"{what} already exists or refers to a missing record") from error


@router.post(
    "/therapies",
    summary="Add a therapy",
    status_code=status.HTTP_201_CREATED,
    response_model=TherapyBody,
    responses=problems.documented(409),
)
def create_therapy(body: TherapyBody, session: SessionDep, _: Coordinator) -> TherapyBody:
    """Coordinators add a therapy product: its code, vector type, whether long-term follow-up is required,
    the warmest temperature it may reach in transit and its days of conditioning. Orders may then name it,
    at treatment centers qualified for it. A code already registered is 409."""
    session.add(Therapy(**body.model_dump()))
    _commit_or_conflict(session, f"therapy {body.code}")
    return body


@router.get("/therapies", summary="List therapies", response_model=list[TherapyBody])
def list_therapies(
    request: Request, response: Response, session: SessionDep, _: Coordinator, page: Page
) -> list[TherapyBody]:
    """Every therapy in the registry, by code, a page at a time (`limit`, `cursor`; the next in `Link`)
    (coordinators)."""
    rows, next_cursor = page_of(session, select(Therapy), Therapy, page, key=(col(Therapy.code),))
    link_next(request, response, next_cursor)
    return [TherapyBody.model_validate(t) for t in rows]


@router.get("/therapies/{code}", summary="Read a therapy", response_model=TherapyBody)
def read_therapy(code: str, session: SessionDep, _: Coordinator) -> TherapyBody:
    """One therapy of the registry (coordinators); an unknown code is 404."""
    therapy = session.get(Therapy, code)
    if therapy is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such therapy")
    return TherapyBody.model_validate(therapy)


class QualificationsBody(RequestModel):
    """Every qualification window of the site for one therapy, replacing those on file; none: withdrawn."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"qualifications": [{"effective_on": "2026-06-01", "expires_on": "2027-01-31"}]},
                {"qualifications": []},
            ]
        }
    )
    qualifications: Annotated[list[CertificationWindow], Field(max_length=50)]


def _center_view(session: Session, center: TreatmentCenter) -> TreatmentCenterView:
    certifications = session.exec(
        select(SiteCertification)
        .where(SiteCertification.treatment_center_id == center.id)
        .order_by(col(SiteCertification.effective_on))
    ).all()
    return TreatmentCenterView(
        id=center.id,
        name=center.name,
        timezone=center.timezone,
        fin=center.fin,
        country=center.country,
        contacts=[Contact(**c) for c in json.loads(center.contacts)],
        certifications=[CertificationBody.model_validate(c) for c in certifications],
    )


@router.post(
    "/treatment-centers",
    summary="Add a treatment center",
    status_code=status.HTTP_201_CREATED,
    response_model=TreatmentCenterView,
    responses=problems.documented(409),
)
def create_treatment_center(
    body: TreatmentCenterBody, session: SessionDep, _: Coordinator
) -> TreatmentCenterView:
    """Coordinators add a treatment center: its id, name, IANA time zone, optional facility identification
    number (FIN) and contacts. It takes orders once qualified for a therapy (`POST
    /treatment-centers/{center_id}/certifications`). An id already registered is 409."""
    center = TreatmentCenter(
        id=body.id,
        name=body.name,
        timezone=body.timezone,
        fin=body.fin,
        country=body.country,
        contacts=json.dumps([c.model_dump(mode="json") for c in body.contacts]),
    )
    session.add(center)
    _commit_or_conflict(session, f"treatment center {body.id}")
    return _center_view(session, center)


@router.get("/treatment-centers", summary="List treatment centers", response_model=list[TreatmentCenterView])
def list_treatment_centers(
    request: Request, response: Response, session: SessionDep, _: Coordinator, page: Page
) -> list[TreatmentCenterView]:
    """Every treatment center with its qualifications, by id, a page at a time (coordinators)."""
    key = (col(TreatmentCenter.id),)
    centers, next_cursor = page_of(session, select(TreatmentCenter), TreatmentCenter, page, key=key)
    link_next(request, response, next_cursor)
    return [_center_view(session, c) for c in centers]


@router.get(
    "/treatment-centers/{center_id}", summary="Read a treatment center", response_model=TreatmentCenterView
)
def read_treatment_center(center_id: str, session: SessionDep, _: Coordinator) -> TreatmentCenterView:
    """One treatment center with its contacts and qualifications (coordinators); an unknown id is 404."""
    center = session.get(TreatmentCenter, center_id)
    if center is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such treatment center")
    return _center_view(session, center)


@router.post(
    "/treatment-centers/{center_id}/certifications",
    summary="Qualify a treatment center for a therapy",
    status_code=status.HTTP_201_CREATED,
    response_model=TreatmentCenterView,
    responses=problems.documented(409),
)
def add_certification(
    center_id: str, body: CertificationBody, request: Request, session: SessionDep, _: Coordinator
) -> TreatmentCenterView:
    """Coordinators record the manufacturer's qualification of the site for a therapy, from `effective_on`
    to `expires_on` (open-ended without it): orders for the therapy at the site are accepted on dates
    within it, and the site's orders whose chain still runs are told (`site.qualification_changed.v1`).
    An unknown site is 404, an unknown therapy 422, the same qualification twice 409."""
    center = session.get(TreatmentCenter, center_id)
    if center is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such treatment center")
    if session.get(Therapy, body.therapy_code) is None:
        raise problems.invalid("body", "therapy_code", "no such therapy in the registry")
    session.add(SiteCertification(treatment_center_id=center_id, **body.model_dump()))
    try:
        commands.qualifications_changed(session, center_id, body.therapy_code, request.state.correlation_id)
    except IntegrityError as error:
        session.rollback()
        raise problems.conflict("certification already exists or refers to a missing record") from error
    _commit_or_conflict(session, "certification")
    return _center_view(session, center)


@router.put(
    "/treatment-centers/{center_id}/certifications/{therapy_code}",
    summary="Replace a treatment center's qualifications for a therapy",
    response_model=TreatmentCenterView,
    responses=problems.documented(404, 409),
)
def replace_certifications(
    center_id: str,
    therapy_code: str,
    body: QualificationsBody,
    request: Request,
    session: SessionDep,
    _: Coordinator,
) -> TreatmentCenterView:
    """Coordinators change the manufacturer's qualification of the site for a therapy: every window, whole
    (an expiry brought forward or moved, a renewal; an empty list withdraws it). New orders are judged on
    it, and the site's orders whose chain still runs are told (`site.qualification_changed.v1`): scheduling
    refuses to book, or holds at confirmation, an infusion on a day no window covers. An unknown site or
    therapy is 404."""
    center = session.get(TreatmentCenter, center_id)
    if center is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such treatment center")
    if session.get(Therapy, therapy_code) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such therapy")
    windows = [QualificationWindow(**w.model_dump()) for w in body.qualifications]
    commands.replace_qualifications(session, center_id, therapy_code, windows, request.state.correlation_id)
    _commit_or_conflict(session, "certification")
    return _center_view(session, center)


def _prescriber_view(session: Session, prescriber: Prescriber) -> PrescriberBody:
    sites = session.exec(
        select(PrescriberSite.treatment_center_id).where(PrescriberSite.npi == prescriber.npi)
    ).all()
    return PrescriberBody(npi=prescriber.npi, name=prescriber.name, treatment_center_ids=sorted(sites))


@router.post(
    "/prescribers",
    summary="Add a prescriber",
    status_code=status.HTTP_201_CREATED,
    response_model=PrescriberBody,
    responses=problems.documented(409),
)
def create_prescriber(body: PrescriberBody, session: SessionDep, _: Coordinator) -> PrescriberBody:
    """Coordinators add a prescriber by NPI (its check digit is verified) with the treatment centers they
    may order for. An NPI already registered is 409, an unknown treatment center 422."""
    if session.get(Prescriber, body.npi) is not None:
        raise problems.conflict(f"prescriber {body.npi} already exists")
    missing = [
        FieldError(
            pointer=f"/treatment_center_ids/{index}", detail="no such treatment center in the registry"
        )
        for index, site in enumerate(body.treatment_center_ids)
        if session.get(TreatmentCenter, site) is None
    ]
    if missing:
        raise problems.validation_problem(missing)
    prescriber = Prescriber(npi=body.npi, name=body.name)
    session.add(prescriber)
    session.flush()
    for site in body.treatment_center_ids:
        session.add(PrescriberSite(npi=body.npi, treatment_center_id=site))
    _commit_or_conflict(session, f"prescriber {body.npi}")
    return _prescriber_view(session, prescriber)


@router.get("/prescribers", summary="List prescribers", response_model=list[PrescriberBody])
def list_prescribers(
    request: Request, response: Response, session: SessionDep, _: Coordinator, page: Page
) -> list[PrescriberBody]:
    """Every prescriber with the sites they may order for, by NPI, a page at a time (coordinators)."""
    rows, next_cursor = page_of(session, select(Prescriber), Prescriber, page, key=(col(Prescriber.npi),))
    link_next(request, response, next_cursor)
    return [_prescriber_view(session, p) for p in rows]


@router.get("/prescribers/{npi}", summary="Read a prescriber", response_model=PrescriberBody)
def read_prescriber(npi: str, session: SessionDep, _: Coordinator) -> PrescriberBody:
    """One prescriber with the sites they may order for (coordinators); an unknown NPI is 404."""
    prescriber = session.get(Prescriber, npi)
    if prescriber is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such prescriber")
    return _prescriber_view(session, prescriber)
