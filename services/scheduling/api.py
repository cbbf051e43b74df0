"""Scheduling HTTP routes: webhook registration, appointments, and their delivery log."""

from __future__ import annotations

import secrets
from datetime import date, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from services.common.auth import Principal, Role, require
from services.common.service import db_session
from services.scheduling.domain import AppointmentState
from services.scheduling.models import Appointment, WebhookDelivery, WebhookEndpoint

router = APIRouter(tags=["scheduling"])
SessionDep = Annotated[Session, Depends(db_session)]
Reader = Annotated[Principal, Depends(require(Role.COORDINATOR, Role.TREATMENT_CENTER))]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class AppointmentView(BaseModel):
    id: UUID
    coi: str
    treatment_center_id: str
    state: AppointmentState
    conditioning_start_on: date
    infusion_on: date
    hold_reason: str | None
    confirmed_at: datetime | None


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
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, "treatment_center_id is required for a coordinator"
        )
    return requested


@router.post("/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookView)
def register_webhook(
    body: WebhookRequest, request: Request, session: SessionDep, caller: Reader
) -> WebhookView:
    """Register where a site receives proposals, confirmations, holds and cancellations."""
    site = _site_for(caller, body.treatment_center_id)
    endpoint = WebhookEndpoint(
        treatment_center_id=site, url=str(body.url), secret=body.secret or secrets.token_urlsafe(32)
    )
    session.add(endpoint)
    session.commit()
    return WebhookView(id=endpoint.id, treatment_center_id=site, url=endpoint.url, secret=endpoint.secret)


def _visible(query, caller: Principal):  # type: ignore[no-untyped-def]
    if caller.role is Role.TREATMENT_CENTER:
        return query.where(Appointment.treatment_center_id == caller.treatment_center_id)
    return query


@router.get("/appointments", response_model=list[AppointmentView])
def list_appointments(session: SessionDep, caller: Reader, coi: str | None = None) -> list[AppointmentView]:
    query = _visible(select(Appointment).order_by(col(Appointment.created_at)), caller)
    if coi:
        query = query.where(Appointment.coi == coi)
    return [AppointmentView.model_validate(a, from_attributes=True) for a in session.exec(query.limit(500))]


def _appointment(session: Session, appointment_id: UUID, caller: Principal) -> Appointment:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or (
        caller.role is Role.TREATMENT_CENTER and appointment.treatment_center_id != caller.treatment_center_id
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no appointment {appointment_id}")
    return appointment


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
