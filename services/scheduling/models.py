"""Scheduling's tables: site calendars, therapy protocols, collection centers, manufacturing sites and
their slots, cases, their plans, offered options, appointments, follow-up visits, webhook endpoints and
their delivery log."""

from __future__ import annotations

from datetime import date, datetime
from uuid import UUID, uuid4

from cgt_contracts.envelope import COI_LENGTH, utc_now
from sqlalchemy import Column, Table, Text
from sqlmodel import Field, SQLModel

from services.common.db import UtcDateTime, tables_of
from services.scheduling.domain import AppointmentState, PlanState


class Site(SQLModel, table=True):
    """A treatment center's calendar, in its own time zone."""

    __tablename__ = "site"

    id: str = Field(primary_key=True, max_length=64)
    timezone: str = Field(max_length=64)
    infusions_per_day: int = 1
    admissions_capacity: int = 2
    working_weekdays: str = Field(default="1,2,3,4,5", max_length=20)
    blackout_dates: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    booking_version: int = 0
    """Bumped by every booking: the update takes the row lock that serialises concurrent bookings."""
    # Added with plans; nullable so that an existing table gets it (see create_tables).
    collection_center_id: str | None = Field(default=None, max_length=64)
    """Where its patients' cells are collected (a `CollectionCenter`, which may be the site itself)."""


class TherapyProtocol(SQLModel, table=True):
    __tablename__ = "therapy_protocol"

    code: str = Field(primary_key=True, max_length=64)
    conditioning_days: int
    receipt_buffer_hours: float
    # Added with plans (domain.ManufacturingProtocol); nullable so that an existing table gets them. A
    # therapy without them is not planned.
    manufacturing_days: int | None = None
    """Vein to release, in days."""
    starting_material: str | None = Field(default=None, max_length=16)
    """`fresh` or `cryopreserved` (domain.StartingMaterial)."""
    outbound_transit_hours: float | None = None
    max_fresh_transit_hours: float | None = None
    max_cryopreserved_age_days: int | None = None
    return_transit_hours: float | None = None


class CollectionCenter(SQLModel, table=True):
    """An apheresis center's calendar, in its own time zone (a treatment center may be its own)."""

    __tablename__ = "collection_center"

    id: str = Field(primary_key=True, max_length=64)
    timezone: str = Field(max_length=64)
    chairs_per_day: int = 1
    working_weekdays: str = Field(default="1,2,3,4,5", max_length=20)
    blackout_dates: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    booking_version: int = 0
    """Bumped by every plan booked here: the update takes the lock that serialises them."""


class ManufacturingSite(SQLModel, table=True):
    """A manufacturing site, in its own time zone; its slots per therapy are `ManufacturingCapacity`."""

    __tablename__ = "manufacturing_site"

    id: str = Field(primary_key=True, max_length=64)
    timezone: str = Field(max_length=64)
    blackout_weeks: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    """Comma-separated ISO weeks, `2026-W52`."""
    booking_version: int = 0
    """Bumped by every plan booked here: the update takes the lock that serialises them."""


class ManufacturingCapacity(SQLModel, table=True):
    """Slots per ISO week a manufacturing site has for one therapy."""

    __tablename__ = "manufacturing_capacity"

    site_id: str = Field(primary_key=True, max_length=64)
    therapy_code: str = Field(primary_key=True, max_length=64)
    slots_per_week: int


class CasePlan(SQLModel, table=True):
    """One vein-to-vein plan of a case (domain.Plan): offered, then booked as one, every leg at once. A
    collection exists only in a plan, beside its manufacturing slot."""

    __tablename__ = "case_plan"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    coi: str = Field(index=True, max_length=COI_LENGTH)
    state: PlanState = Field(default=PlanState.OFFERED, max_length=16)
    therapy_code: str = Field(max_length=64)
    collection_center_id: str = Field(index=True, max_length=64)
    collection_on: date
    collected_at: datetime = Field(sa_type=UtcDateTime)
    manufacturing_site_id: str = Field(index=True, max_length=64)
    manufacturing_week: str = Field(max_length=8)
    manufacturing_start_at: datetime = Field(sa_type=UtcDateTime)
    manufacturing_start_on: date
    released_at: datetime = Field(sa_type=UtcDateTime)
    release_on: date
    eta_at: datetime = Field(sa_type=UtcDateTime)
    treatment_center_id: str = Field(max_length=64)
    conditioning_start_on: date
    infusion_on: date
    appointment_id: UUID | None = None
    offered_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    booked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    booked_by: str | None = Field(default=None, max_length=64)
    # Added with the legs' events and re-planning; nullable so that an existing table gets them.
    collection_done_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """`collection.recorded`: the collection's own instant."""
    manufacturing_started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """`manufacturing.started`."""
    product_released_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """`product.released_for_shipment`."""
    product_delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """`shipment.delivered` of the return leg (clean: it alone confirms the infusion, I4)."""
    replanned_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    replan_cause: str | None = Field(default=None, max_length=32)
    """The latest slip's `PlanReplanCause`."""
    postponement_reason_code: str | None = Field(default=None, max_length=32)
    postponement_note: str | None = Field(default=None, max_length=500)
    """The coordinator's note with the latest postponement: scheduling's alone, never published (I6)."""


class Case(SQLModel, table=True):
    """One patient's therapy as scheduling knows it: a COI and a pseudonymous reference, nothing more."""

    __tablename__ = "case"

    coi: str = Field(primary_key=True, max_length=COI_LENGTH)
    order_id: UUID
    patient_ref: str = Field(max_length=64)
    therapy_code: str = Field(max_length=64)
    treatment_center_id: str = Field(index=True, max_length=64)
    conditioning_days: int
    long_term_follow_up: bool = False
    cancelled: bool = False
    shipment_id: UUID | None = None
    eta_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    product_delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """Set only by a clean (or QA-released) delivery: the I4 gate for confirmation."""
    quarantined: bool = False
    attention: str | None = Field(default=None, sa_column=Column(Text))
    """Why a coordinator must act (no option fits a delay, conditioning already started...)."""
    attention_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    # Added with the chain's permissions (domain.ChainFacts); None: not known (an order.accepted.v1).
    site_qualifications: str | None = Field(default=None, sa_column=Column(Text))
    """JSON `[[effective_on, expires_on or null], ...]`: the site's windows for the therapy, as order
    intake last published them."""
    payer_authorization_expires_on: date | None = None
    # Added with out-of-specification releases; nullable so that an existing table gets them.
    out_of_specification: bool | None = None
    """The current lot was released out of specification (`product.released_for_shipment.v2`)."""
    oos_code: str | None = Field(default=None, max_length=32)
    oos_documents_required: str | None = Field(default=None, max_length=200)
    """Comma-separated `OosDocument` codes its file must hold."""
    oos_file_completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ParkedEvent(SQLModel, table=True):
    """A shipment event that arrived before its order (the two come on different topics, with no order
    between them). It is applied as soon as the order's case exists."""

    __tablename__ = "parked_event"

    id: int | None = Field(default=None, primary_key=True)
    coi: str = Field(index=True, max_length=COI_LENGTH)
    event_id: str = Field(unique=True, max_length=36)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    parked_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class OfferedOption(SQLModel, table=True):
    __tablename__ = "offered_option"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    coi: str = Field(index=True, max_length=COI_LENGTH)
    conditioning_start_on: date
    infusion_on: date
    offered_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    current: bool = True


class Appointment(SQLModel, table=True):
    __tablename__ = "appointment"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    coi: str = Field(index=True, max_length=COI_LENGTH)
    treatment_center_id: str = Field(index=True, max_length=64)
    state: AppointmentState = Field(default=AppointmentState.TENTATIVE, max_length=16)
    conditioning_start_on: date
    infusion_on: date = Field(index=True)
    shipment_id: UUID | None = None
    hold_reason: str | None = Field(default=None, sa_column=Column(Text))
    booked_by: str = Field(default="", max_length=64)
    version: int = 1
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    updated_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    confirmed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    infused_on: date | None = None
    hold_cause: str | None = Field(default=None, max_length=32)
    """What holds it (a `RiskCause`: quarantine, temperature_excursion, coi_break); None when not held."""
    reason_code: str | None = Field(default=None, max_length=32)
    """The `SlotReasonCode` of its latest hold, move, resumption or cancellation (what the site was told)."""
    note: str | None = Field(default=None, max_length=500)
    """The note a coordinator gave with their latest change of it (a cancellation or a move): scheduling's
    alone, returned with the appointment, never in an event or a webhook (I6)."""
    out_of_specification: bool | None = None
    """Its product was released out of specification (the API view, the webhooks and FHIR say so)."""


class FollowUpVisit(SQLModel, table=True):
    __tablename__ = "follow_up_visit"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    coi: str = Field(index=True, max_length=COI_LENGTH)
    treatment_center_id: str = Field(max_length=64)
    number: int
    due_on: date
    window_start_on: date
    window_end_on: date = Field(index=True)
    completed_on: date | None = None
    overdue_published_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoint"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    treatment_center_id: str = Field(index=True, max_length=64)
    url: str = Field(max_length=2048)
    secret: str = Field(max_length=256)
    """Encrypted (a Fernet token under WEBHOOK_SECRET_KEY); empty once the endpoint is deleted."""
    active: bool = True
    """Receives deliveries: neither paused, nor disabled, nor deleted."""
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    # Added with endpoint management; nullable so that an existing table gets them (see create_tables).
    event_types: str | None = Field(default=None, sa_column=Column(Text))
    """Comma-separated message kinds the site subscribed to; None for every kind."""
    consecutive_failures: int | None = 0
    paused_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """Set when consecutive failures disabled the endpoint; cleared when it is resumed."""
    disabled_reason: str | None = Field(default=None, sa_column=Column(Text))
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    previous_secret: str | None = Field(default=None, max_length=256)
    previous_secret_valid_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    channel: str | None = Field(default=None, max_length=16)
    """None for the site's own webhook; `fhir` for a FHIR Subscription's rest-hook channel (hidden from
    `/webhooks`: the Subscription manages it; it shares the deliveries, retries and failure policy)."""


class FhirSubscription(SQLModel, table=True):
    """A FHIR R4 Subscription (the subscriptions backport, topic-based, rest-hook) to a site's appointment
    changes. Its channel is a `WebhookEndpoint` (`channel` `fhir`): notifications are its deliveries."""

    __tablename__ = "fhir_subscription"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    endpoint_id: UUID = Field(foreign_key="webhook_endpoint.id", index=True)
    treatment_center_id: str = Field(index=True, max_length=64)
    payload_content: str = Field(max_length=16)
    """empty, id-only or full-resource."""
    headers: str | None = Field(default=None, sa_column=Column(Text))
    """The channel's headers (JSON list of [name, value]) encrypted under WEBHOOK_SECRET_KEY: they may carry
    the subscriber's credentials. None when there are none."""
    header_names: str = Field(default="", sa_column=Column(Text, nullable=False))
    """Comma-separated names of those headers: what a read shows (never the values)."""
    reason: str = Field(sa_column=Column(Text, nullable=False))
    end_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    fhir_base: str = Field(max_length=2048)
    """The absolute FHIR base the notifications' `fullUrl`s and references are under."""
    events_since_start: int = 0
    version: int = 1
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    updated_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class WebhookDelivery(SQLModel, table=True):
    """A message to a treatment center, written with the change it reports; retried until delivered.
    Status: pending, delivered, failed, suspended (its endpoint is paused or disabled: it goes out when
    the endpoint is resumed) or discarded (its endpoint was deleted)."""

    __tablename__ = "webhook_delivery"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    endpoint_id: UUID = Field(foreign_key="webhook_endpoint.id", index=True)
    appointment_id: UUID = Field(index=True)
    coi: str = Field(default="", max_length=COI_LENGTH)
    kind: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", index=True, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now, index=True)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class SlotAlert(SQLModel, table=True):
    """An appointment the site may act on is threatened (it was confirmed, or conditioning may have
    started): on the coordinators' worklist until one of them resolves it, whatever happens meanwhile."""

    __tablename__ = "slot_alert"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    appointment_id: UUID = Field(index=True)
    coi: str = Field(index=True, max_length=16)
    treatment_center_id: str = Field(max_length=64)
    cause: str = Field(max_length=32)
    detail: str = Field(sa_column=Column(Text, nullable=False))
    conditioning_may_have_started: bool = False
    raised_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    resolved_at: datetime | None = Field(default=None, sa_type=UtcDateTime, index=True)
    resolved_by: str | None = Field(default=None, max_length=64)
    resolution: str | None = Field(default=None, sa_column=Column(Text))


TABLES: tuple[Table, ...] = tables_of(
    Site,
    TherapyProtocol,
    Case,
    ParkedEvent,
    OfferedOption,
    Appointment,
    FollowUpVisit,
    WebhookEndpoint,
    WebhookDelivery,
    FhirSubscription,
    SlotAlert,
    CollectionCenter,
    ManufacturingSite,
    ManufacturingCapacity,
    CasePlan,
)
