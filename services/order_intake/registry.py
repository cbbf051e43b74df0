"""Registry HTTP routes (coordinator role): therapies, treatment centers with their qualifications per
therapy, prescribers and the sites they may order for."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import ConfigDict, EmailStr, Field, field_validator, model_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.common import problems
from services.common.auth import Principal, Role, require
from services.common.edge import EdgeRoute, RequestModel
from services.common.service import db_session
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
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]


class TherapyBody(RequestModel):
    model_config = ConfigDict(from_attributes=True)
    code: Ident = Field(description="Product code")
    name: Annotated[str, Field(min_length=1, max_length=128)]
    vector_type: Annotated[str, Field(min_length=1, max_length=64)]
    long_term_follow_up: bool
    storage_limit_celsius: Annotated[float, Field(le=-60.0, ge=-273.15)] = -150.0
    conditioning_days: Annotated[int, Field(ge=0, le=30)]


class Contact(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    role: Annotated[str, Field(min_length=1, max_length=64)]
    email: EmailStr | None = None
    phone: Annotated[str | None, Field(max_length=32)] = None


class CertificationBody(RequestModel):
    model_config = ConfigDict(from_attributes=True)
    therapy_code: Ident
    effective_on: date
    expires_on: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> CertificationBody:
        if self.expires_on is not None and self.expires_on < self.effective_on:
            raise ValueError("expires_on is before effective_on")
        return self


class TreatmentCenterBody(RequestModel):
    id: Ident
    name: Annotated[str, Field(min_length=1, max_length=128)]
    timezone: Annotated[
        str, Field(min_length=1, max_length=64, description="IANA name, e.g. America/New_York")
    ]
    fin: Annotated[str | None, Field(pattern=r"^[A-NP-Z][0-9]{4}$")] = None
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
    certifications: list[CertificationBody]


class PrescriberBody(RequestModel):
    npi: Annotated[str, Field(pattern=r"^[0-9]{10}$")]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    treatment_center_ids: Annotated[list[Ident], Field(max_length=50, default=[])]

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
    status_code=status.HTTP_201_CREATED,
    response_model=TherapyBody,
    responses=problems.documented(409),
)
def create_therapy(body: TherapyBody, session: SessionDep, _: Coordinator) -> TherapyBody:
    session.add(Therapy(**body.model_dump()))
    _commit_or_conflict(session, f"therapy {body.code}")
    return body


@router.get("/therapies", response_model=list[TherapyBody])
def list_therapies(session: SessionDep, _: Coordinator) -> list[TherapyBody]:
    return [TherapyBody.model_validate(t) for t in session.exec(select(Therapy).order_by(col(Therapy.code)))]


@router.get("/therapies/{code}", response_model=TherapyBody)
def read_therapy(code: str, session: SessionDep, _: Coordinator) -> TherapyBody:
    therapy = session.get(Therapy, code)
    if therapy is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such therapy")
    return TherapyBody.model_validate(therapy)


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
        contacts=[Contact(**c) for c in json.loads(center.contacts)],
        certifications=[CertificationBody.model_validate(c) for c in certifications],
    )


@router.post(
    "/treatment-centers",
    status_code=status.HTTP_201_CREATED,
    response_model=TreatmentCenterView,
    responses=problems.documented(409),
)
def create_treatment_center(
    body: TreatmentCenterBody, session: SessionDep, _: Coordinator
) -> TreatmentCenterView:
    center = TreatmentCenter(
        id=body.id,
        name=body.name,
        timezone=body.timezone,
        fin=body.fin,
        contacts=json.dumps([c.model_dump(mode="json") for c in body.contacts]),
    )
    session.add(center)
    _commit_or_conflict(session, f"treatment center {body.id}")
    return _center_view(session, center)


@router.get("/treatment-centers", response_model=list[TreatmentCenterView])
def list_treatment_centers(session: SessionDep, _: Coordinator) -> list[TreatmentCenterView]:
    centers = session.exec(select(TreatmentCenter).order_by(col(TreatmentCenter.id))).all()
    return [_center_view(session, c) for c in centers]


@router.get("/treatment-centers/{center_id}", response_model=TreatmentCenterView)
def read_treatment_center(center_id: str, session: SessionDep, _: Coordinator) -> TreatmentCenterView:
    center = session.get(TreatmentCenter, center_id)
    if center is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such treatment center")
    return _center_view(session, center)


@router.post(
    "/treatment-centers/{center_id}/certifications",
    status_code=status.HTTP_201_CREATED,
    response_model=TreatmentCenterView,
    responses=problems.documented(409),
)
def add_certification(
    center_id: str, body: CertificationBody, session: SessionDep, _: Coordinator
) -> TreatmentCenterView:
    """Record the manufacturer's qualification of the site for a therapy, between two dates."""
    center = session.get(TreatmentCenter, center_id)
    if center is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such treatment center")
    if session.get(Therapy, body.therapy_code) is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, f"therapy_code: no therapy {body.therapy_code}"
        )
    session.add(SiteCertification(treatment_center_id=center_id, **body.model_dump()))
    _commit_or_conflict(session, "certification")
    return _center_view(session, center)


def _prescriber_view(session: Session, prescriber: Prescriber) -> PrescriberBody:
    sites = session.exec(
        select(PrescriberSite.treatment_center_id).where(PrescriberSite.npi == prescriber.npi)
    ).all()
    return PrescriberBody(npi=prescriber.npi, name=prescriber.name, treatment_center_ids=sorted(sites))


@router.post(
    "/prescribers",
    status_code=status.HTTP_201_CREATED,
    response_model=PrescriberBody,
    responses=problems.documented(409),
)
def create_prescriber(body: PrescriberBody, session: SessionDep, _: Coordinator) -> PrescriberBody:
    if session.get(Prescriber, body.npi) is not None:
        raise problems.conflict(f"prescriber {body.npi} already exists")
    missing = [site for site in body.treatment_center_ids if session.get(TreatmentCenter, site) is None]
    if missing:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"treatment_center_ids: unknown {missing}")
    prescriber = Prescriber(npi=body.npi, name=body.name)
    session.add(prescriber)
    session.flush()
    for site in body.treatment_center_ids:
        session.add(PrescriberSite(npi=body.npi, treatment_center_id=site))
    _commit_or_conflict(session, f"prescriber {body.npi}")
    return _prescriber_view(session, prescriber)


@router.get("/prescribers", response_model=list[PrescriberBody])
def list_prescribers(session: SessionDep, _: Coordinator) -> list[PrescriberBody]:
    return [
        _prescriber_view(session, p) for p in session.exec(select(Prescriber).order_by(col(Prescriber.npi)))
    ]


@router.get("/prescribers/{npi}", response_model=PrescriberBody)
def read_prescriber(npi: str, session: SessionDep, _: Coordinator) -> PrescriberBody:
    prescriber = session.get(Prescriber, npi)
    if prescriber is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such prescriber")
    return _prescriber_view(session, prescriber)
