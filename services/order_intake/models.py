"""Order intake's tables. Patient-identifying data lives only here, encrypted (DESIGN I6)."""

from __future__ import annotations

from datetime import date, datetime
from uuid import UUID, uuid4

from cgt_contracts.envelope import COI_LENGTH, utc_now
from sqlalchemy import Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel, col

from services.common.db import UtcDateTime, tables_of
from services.order_intake.domain import ACTIVE, OrderStatus


class Therapy(SQLModel, table=True):
    __tablename__ = "therapy"

    code: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    vector_type: str = Field(max_length=64)
    long_term_follow_up: bool
    storage_limit_celsius: float
    conditioning_days: int


class TreatmentCenter(SQLModel, table=True):
    __tablename__ = "treatment_center"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    timezone: str = Field(max_length=64)
    fin: str | None = Field(default=None, max_length=5, description="ISBT 128 facility number, for DINs")
    contacts: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    country: str | None = Field(default=None, max_length=2)
    """ISO 3166-1 alpha-2 (`US`): says whether an out-of-specification product needs an IND reference.
    Nullable so that an existing table gets it; unknown is held to the US rule."""


class SiteCertification(SQLModel, table=True):
    """A manufacturer's qualification of a treatment center for one therapy, between two dates."""

    __tablename__ = "site_certification"

    id: int | None = Field(default=None, primary_key=True)
    treatment_center_id: str = Field(foreign_key="treatment_center.id", index=True)
    therapy_code: str = Field(foreign_key="therapy.code")
    effective_on: date
    expires_on: date | None = None


class Prescriber(SQLModel, table=True):
    __tablename__ = "prescriber"

    npi: str = Field(primary_key=True, max_length=10)
    name: str = Field(max_length=128)


class PrescriberSite(SQLModel, table=True):
    __tablename__ = "prescriber_site"

    npi: str = Field(foreign_key="prescriber.npi", primary_key=True)
    treatment_center_id: str = Field(foreign_key="treatment_center.id", primary_key=True)


class Order(SQLModel, table=True):
    __tablename__ = "therapy_order"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    patient_ref: str = Field(index=True, max_length=64)
    therapy_code: str = Field(max_length=64)
    treatment_center_id: str = Field(index=True, max_length=64)
    prescriber_npi: str = Field(max_length=10)
    consent_signed_on: date | None = None
    consent_form_version: str | None = Field(default=None, max_length=32)
    payer_authorization_reference: str | None = Field(default=None, max_length=64)
    payer_authorization_expires_on: date | None = None
    eligibility_attested_by: str | None = Field(default=None, max_length=64)
    status: OrderStatus = Field(default=OrderStatus.SUBMITTED, max_length=32)
    coi: str | None = Field(default=None, unique=True, max_length=COI_LENGTH)
    rejection_reasons: str | None = Field(default=None, sa_column=Column(Text))
    ordered_on: date
    """The server's date when the order was placed: the date every check is judged on."""
    stated_ordered_on: date | None = None
    """The clinical order date the caller stated, recorded beside `ordered_on`; no check uses it."""
    patient_match: str | None = Field(default=None, max_length=64)
    """`domain.patient_match` of the patient's identity (keyed hash): finds the same patient under any
    `patient_ref`. Never logged, never published, never returned."""
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    cancelled_reason: str | None = Field(default=None, max_length=500)
    """The coordinator's note on the cancellation (the reason as typed, for orders cancelled before reason
    codes): order intake's alone, returned with the order, never published (I6)."""
    cancelled_reason_code: str | None = Field(default=None, max_length=32)
    """A `CancellationReasonCode`; None on an order cancelled before reason codes (read as `other`)."""
    cancelled_by: str | None = Field(default=None, max_length=64)
    cancelled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    product_lot_number: str | None = Field(default=None, max_length=64)
    product_released_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When the manufacturer released the product for shipment (the return leg may be picked up)."""
    product_released_by: str | None = Field(default=None, max_length=64)
    product_out_of_specification: bool | None = None
    """Released out of specification (None on an order released before the flag: in specification)."""
    product_oos_code: str | None = Field(default=None, max_length=32)
    """An `OutOfSpecificationCode` when released out of specification."""


ONE_ACTIVE_ORDER_PER_PATIENT_AND_THERAPY = "uq_therapy_order_active_patient_match"
Index(
    ONE_ACTIVE_ORDER_PER_PATIENT_AND_THERAPY,
    col(Order.patient_match),
    col(Order.therapy_code),
    unique=True,
    postgresql_where=col(Order.status).in_(sorted(ACTIVE)),
    sqlite_where=col(Order.status).in_(sorted(ACTIVE)),
)
"""At most one active order per patient and therapy, kept by the database itself: two orders for the
same patient placed at the same moment cannot both be active (the second's insert fails, a 409)."""


class Collection(SQLModel, table=True):
    """One collection (apheresis) for an order: its own DIN, linked to the order's one COI identifier."""

    __tablename__ = "collection"
    __table_args__ = (UniqueConstraint("order_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: UUID = Field(foreign_key="therapy_order.id", index=True)
    number: int
    din: str = Field(unique=True, max_length=14)
    collected_at: datetime = Field(sa_type=UtcDateTime)
    recorded_by: str = Field(max_length=64)


class ManufacturingFailure(SQLModel, table=True):
    """A lot made from the order's cells that failed in manufacturing: why (a `ManufacturingFailureCode`,
    what is published), the coordinator's note (kept here only, I6), who recorded it and when (the
    server's time). The next attempt starts with a new collection under the same COI."""

    __tablename__ = "manufacturing_failure"

    id: int | None = Field(default=None, primary_key=True)
    order_id: UUID = Field(foreign_key="therapy_order.id", index=True)
    collection_number: int
    """The latest collection when the lot failed: the one it was made from."""
    reason_code: str = Field(max_length=40)
    note: str | None = Field(default=None, max_length=500)
    recorded_by: str = Field(max_length=64)
    failed_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class OosFile(SQLModel, table=True):
    """The file of a product released out of specification: references (identifiers, never free text)
    to the treating physician's request, the patient's consent, the manufacturer's risk assessment and,
    in the US, the expanded-access or single-patient IND. Kept here only; `completed_at` is set once it
    holds every document `domain.oos_documents_required` asks for."""

    __tablename__ = "oos_file"

    order_id: UUID = Field(foreign_key="therapy_order.id", primary_key=True)
    lot_number: str = Field(max_length=64)
    physician_request_ref: str | None = Field(default=None, max_length=64)
    patient_consent_ref: str | None = Field(default=None, max_length=64)
    risk_assessment_ref: str | None = Field(default=None, max_length=64)
    ind_ref: str | None = Field(default=None, max_length=64)
    updated_by: str | None = Field(default=None, max_length=64)
    updated_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    completed_by: str | None = Field(default=None, max_length=64)


class ManufacturingDelay(SQLModel, table=True):
    """A lot in manufacturing now expected later: the new release day, why (a `ManufacturingDelayCode`,
    what is published), the coordinator's note (kept here only, I6), who recorded it and when."""

    __tablename__ = "manufacturing_delay"

    id: int | None = Field(default=None, primary_key=True)
    order_id: UUID = Field(foreign_key="therapy_order.id", index=True)
    collection_number: int | None = None
    expected_release_on: date
    reason_code: str = Field(max_length=40)
    note: str | None = Field(default=None, max_length=500)
    recorded_by: str = Field(max_length=64)
    delayed_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class DinCounter(SQLModel, table=True):
    """The last DIN sequence issued per facility and year (six digits, never reused)."""

    __tablename__ = "din_counter"

    fin: str = Field(primary_key=True, max_length=5)
    year: int = Field(primary_key=True)
    last: int = 0


class PatientRecord(SQLModel, table=True):
    """Name, date of birth and record number, encrypted at rest; never leaves this service."""

    __tablename__ = "patient_record"

    order_id: UUID = Field(foreign_key="therapy_order.id", primary_key=True)
    encrypted_identity: str = Field(sa_column=Column(Text, nullable=False))


class CoiSequence(SQLModel, table=True):
    """One row per issued COI identifier: the row id is the sequence, so it is never reused."""

    __tablename__ = "coi_sequence"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_column_kwargs={"autoincrement": True})
    order_id: UUID = Field(unique=True)
    issued_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class OrderTransition(SQLModel, table=True):
    """The order's history: every transition, when, and who or which event caused it."""

    __tablename__ = "order_transition"

    id: int | None = Field(default=None, primary_key=True)
    order_id: UUID = Field(foreign_key="therapy_order.id", index=True)
    from_status: OrderStatus | None = Field(default=None, max_length=32)
    to_status: OrderStatus = Field(max_length=32)
    at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    actor: str = Field(max_length=64)
    cause_event_id: str | None = Field(default=None, max_length=36)


TABLES: tuple[Table, ...] = tables_of(
    Therapy,
    TreatmentCenter,
    SiteCertification,
    Prescriber,
    PrescriberSite,
    Order,
    PatientRecord,
    CoiSequence,
    OrderTransition,
    Collection,
    DinCounter,
    ManufacturingFailure,
    OosFile,
    ManufacturingDelay,
)
