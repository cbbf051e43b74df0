"""Scheduling's tables: site calendars, cases, appointments, webhook endpoints and their delivery log."""

from __future__ import annotations

from datetime import date, datetime
from uuid import UUID, uuid4

from cgt_contracts.envelope import utc_now
from sqlalchemy import Column, Table, Text
from sqlmodel import Field, SQLModel

from services.common.db import UtcDateTime, tables_of
from services.scheduling.domain import AppointmentState


class Site(SQLModel, table=True):
    __tablename__ = "site"

    id: str = Field(primary_key=True, max_length=64)
    timezone: str = Field(max_length=64)
    infusions_per_day: int = 1
    working_weekdays: str = Field(default="1,2,3,4,5", max_length=20)
    blackout_dates: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class Case(SQLModel, table=True):
    """One patient's therapy as scheduling knows it: a COI and a pseudonymous reference, nothing more."""

    __tablename__ = "case"

    coi: str = Field(primary_key=True, max_length=16)
    order_id: UUID
    patient_ref: str = Field(max_length=64)
    therapy_code: str = Field(max_length=64)
    treatment_center_id: str = Field(index=True, max_length=64)
    conditioning_days: int
    cancelled: bool = False


class Appointment(SQLModel, table=True):
    __tablename__ = "appointment"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    coi: str = Field(index=True, max_length=16)
    treatment_center_id: str = Field(index=True, max_length=64)
    state: AppointmentState = Field(default=AppointmentState.TENTATIVE, max_length=16)
    conditioning_start_on: date
    infusion_on: date = Field(index=True)
    shipment_id: UUID | None = None
    hold_reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    confirmed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoint"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    treatment_center_id: str = Field(index=True, max_length=64)
    url: str = Field(max_length=2000)
    secret: str = Field(max_length=128)
    active: bool = True
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class WebhookDelivery(SQLModel, table=True):
    """A message to a treatment center, written with the change it reports; retried until delivered."""

    __tablename__ = "webhook_delivery"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    endpoint_id: UUID = Field(foreign_key="webhook_endpoint.id", index=True)
    appointment_id: UUID = Field(index=True)
    kind: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", index=True, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now, index=True)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


TABLES: tuple[Table, ...] = tables_of(Site, Case, Appointment, WebhookEndpoint, WebhookDelivery)
