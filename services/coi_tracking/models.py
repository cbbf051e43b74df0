"""COI tracking's tables: shipments, containers, bags, scans, temperature readings, custody ledger."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

from cgt_contracts.envelope import COI_LENGTH, utc_now
from cgt_contracts.events import ScanType, ShipmentLeg
from sqlalchemy import Column, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.coi_tracking.domain import ShipmentStatus
from services.common.db import UtcDateTime, tables_of
from services.common.unit_of_work import AppendRow


class Shipment(SQLModel, table=True):
    __tablename__ = "shipment"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    order_id: UUID = Field(index=True)
    coi: str = Field(index=True, max_length=COI_LENGTH)
    leg: ShipmentLeg = Field(max_length=16)
    treatment_center_id: str = Field(index=True, max_length=64)
    courier_company: str = Field(index=True, max_length=64)
    storage_limit_celsius: float
    """The highest allowed temperature: the product's storage limit (cryo) or 8 °C (fresh)."""
    min_celsius: float | None = None
    max_transit_hours: float | None = None
    logger_interval_minutes: float | None = None
    destination: str = Field(max_length=64)
    status: ShipmentStatus = Field(default=ShipmentStatus.PLANNED, max_length=16)
    physical_status: ShipmentStatus = Field(default=ShipmentStatus.PLANNED, max_length=16)
    custodian: str = Field(max_length=64)
    quarantine_reason: str | None = Field(default=None, sa_column=Column(Text))
    eta_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    dispatched_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    max_temperature_celsius: float | None = None
    ledger_length: int = 0
    ledger_head_sha256: str | None = Field(default=None, max_length=64)
    product_released_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """Return leg: when the manufacturer released the product for shipment (None: not yet)."""
    product_lot_number: str | None = Field(default=None, max_length=64)
    order_cancelled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When order intake cancelled the order: the shipment takes no scan from then on."""
    lot_failed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """Return leg: when the lot it was planned for failed in manufacturing (closed: it takes no scan)."""
    last_scan_device_time: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """The latest device time of the shipment's scans: a scan dated later cannot be one sent again."""
    created_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)


class Container(SQLModel, table=True):
    """A liquid-nitrogen dry shipper, with its charge time and validated hold time."""

    __tablename__ = "container"

    id: str = Field(primary_key=True, max_length=64)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    kind: str = Field(default="dry_shipper", max_length=32)
    charged_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    validated_hold_hours: float | None = None
    seal_id: str | None = Field(default=None, max_length=64)


class Bag(SQLModel, table=True):
    __tablename__ = "bag"
    __table_args__ = (UniqueConstraint("shipment_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    coi: str = Field(max_length=COI_LENGTH)
    din: str | None = Field(default=None, max_length=14)
    number: int
    of: int


class ScanRecord(SQLModel, table=True):
    """Every scan a courier posts, refused or not, with what it was judged to mean."""

    __tablename__ = "scan"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    scan_type: ScanType = Field(max_length=16)
    bag_cois: str = Field(sa_column=Column(Text, nullable=False))
    container_id: str | None = Field(default=None, max_length=64)
    seal_id: str | None = Field(default=None, max_length=64)
    location: str = Field(max_length=128)
    scanned_by: str = Field(max_length=64)
    handed_to: str | None = Field(default=None, max_length=64)
    device_time: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    temperature_celsius: float | None = None
    accepted: bool
    refusal_reason: str | None = Field(default=None, sa_column=Column(Text))
    coi_verified: bool
    epcis_event_id: str | None = Field(default=None, unique=True, max_length=256)
    """The EPCIS eventID this scan came from: a repeated capture of the same event is a no-op."""
    epcis_event_hash: str | None = Field(default=None, max_length=128)
    """The EPCIS 2.0 event hash of that event: the same eventID with another hash is a conflict."""
    retracted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When an EPCIS error declaration retracted the event this scan came from (the scan stays, marked)."""
    retraction_reason: str | None = Field(default=None, sa_column=Column(Text))
    content_sha256: str | None = Field(default=None, max_length=64)
    """What the scan says (`commands.scan_content_sha256`): the same scan sent again is not stored twice."""


class TemperatureReading(SQLModel, table=True):
    __tablename__ = "temperature_reading"

    id: int | None = Field(default=None, primary_key=True)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    read_at: datetime = Field(sa_type=UtcDateTime)
    celsius: float
    source: str = Field(max_length=32)


class EpcisEventRecord(SQLModel, table=True):
    """An EPCIS event captured that is not a scan (readings, an aggregation, an error declaration): its
    eventID and hash, so that a repeat is a duplicate and a changed repeat a conflict. Scans keep theirs on
    ScanRecord."""

    __tablename__ = "epcis_event"

    event_id: str = Field(primary_key=True, max_length=256)
    event_hash: str = Field(max_length=128)
    kind: str = Field(max_length=16)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    captured_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    retracted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class LedgerEntry(SQLModel, table=True):
    """Append-only, hash-chained custody ledger; rows are only ever inserted."""

    __tablename__ = "custody_ledger"
    __table_args__ = (UniqueConstraint("shipment_id", "sequence"),)

    id: int | None = Field(default=None, primary_key=True)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    sequence: int
    kind: str = Field(max_length=16)
    from_party: str = Field(max_length=64)
    to_party: str = Field(max_length=64)
    location: str = Field(max_length=128)
    at: datetime = Field(sa_type=UtcDateTime)
    signer: str = Field(max_length=128)
    meaning: str = Field(max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    previous_sha256: str = Field(max_length=64)
    entry_sha256: str = Field(max_length=64)
    key_id: str = Field(max_length=64)
    """The ledger key that signed the entry (I3): a rotation leaves old entries verifiable by their key."""
    signature: str = Field(max_length=128)
    """Base64 Ed25519 signature over the entry's hash (domain.signed_bytes), by a key kept out of the database."""


class QaDisposition(SQLModel, table=True):
    """A QA release or rejection, signed: printed name, date and time, meaning (21 CFR Part 11 §11.50).
    The ledger entry it writes carries the same fields inside its hash, binding signature and record (§11.70)."""

    __tablename__ = "qa_disposition"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    shipment_id: UUID = Field(foreign_key="shipment.id", index=True)
    decision: str = Field(max_length=16)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    """The signer's note ("" for none); before reason codes, the reason as typed. COI tracking's alone:
    returned with the disposition, never published (I6)."""
    reason_code: str | None = Field(default=None, max_length=32)
    """A `QaReasonCode`; None on a disposition signed before reason codes (read as `other`)."""
    meaning: str = Field(max_length=64)
    signer_id: str = Field(max_length=64)
    signer_printed_name: str = Field(max_length=128)
    signed_at: datetime = Field(sa_type=UtcDateTime)
    ledger_sequence: int


class CaptureJob(SQLModel, table=True):
    """An EPCIS capture: the document's outcome per event, kept for the capturer to poll."""

    __tablename__ = "epcis_capture"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    captured_by: str = Field(max_length=64)
    received_at: datetime = Field(sa_type=UtcDateTime, default_factory=utc_now)
    """The binding's `createdAt`: when the document was admitted."""
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """The binding's `finishedAt` (None in a row written before it was kept: it finished as it was made)."""
    status: str = Field(max_length=16)
    result: str = Field(sa_column=Column(Text, nullable=False))


class Courier(SQLModel, table=True):
    """Someone who may hold a shipment (a courier's person or system), and the company they work for: the
    custody ledger names no one who is not here."""

    __tablename__ = "courier"

    id: str = Field(primary_key=True, max_length=64)
    company: str = Field(index=True, max_length=64)
    display_name: str = Field(default="", max_length=128)


class QaSigner(SQLModel, table=True):
    """A QA signer's signing PIN, the second identification component of their signatures (21 CFR Part 11
    §11.200(a)(1)): only its salted scrypt hash (`domain.hash_signing_pin`), never the PIN. Wrong PINs in a
    row are counted; at `domain.MAX_WRONG_SIGNING_PINS` the signer is blocked until a coordinator resets."""

    __tablename__ = "qa_signer"

    signer_id: str = Field(primary_key=True, max_length=64)
    """The bearer token's subject."""
    pin_hash: str | None = Field(default=None, max_length=256)
    wrong_attempts: int = 0
    blocked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    pin_set_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


TABLES: tuple[Table, ...] = tables_of(
    QaDisposition,
    QaSigner,
    CaptureJob,
    Shipment,
    Container,
    Bag,
    ScanRecord,
    TemperatureReading,
    EpcisEventRecord,
    LedgerEntry,
    Courier,
)


# Rows only ever appended, written by the unit of work at commit (`services.common.unit_of_work`).


class ScanRow(AppendRow, table=tables_of(ScanRecord)[0]):
    id: UUID
    shipment_id: UUID
    scan_type: ScanType
    bag_cois: str
    """The bag labels read, as a JSON list."""
    container_id: str | None
    seal_id: str | None
    location: str
    scanned_by: str
    handed_to: str | None
    device_time: datetime
    received_at: datetime
    temperature_celsius: float | None
    accepted: bool
    refusal_reason: str | None
    coi_verified: bool
    epcis_event_id: str | None
    epcis_event_hash: str | None
    content_sha256: str | None
    retracted_at: datetime | None = None
    retraction_reason: str | None = None


class ReadingRow(AppendRow, table=tables_of(TemperatureReading)[0]):
    shipment_id: UUID
    read_at: datetime
    celsius: float
    source: str


class LedgerRow(AppendRow, table=tables_of(LedgerEntry)[0]):
    shipment_id: UUID
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
    key_id: str
    signature: str
