"""Every event that crosses a service boundary, with its versioned type and typed payload.

Minimum necessary (I6): an event says why with a code from a closed list (a `StrEnum` below) and names the
record that holds the rest (the order, scan, disposition or appointment id it already carries). Text a
person typed — a cancellation's note, a QA signer's note, a scan's location — stays in the service that
received it, readable through its API by those allowed; the `.v1` events that still carried it are read,
never written (docs/reason-codes.md).
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, get_args
from uuid import UUID

from pydantic import Field, TypeAdapter

from cgt_contracts.envelope import (
    CoiIdentifier,
    ContractModel,
    EventEnvelope,
    Identifier,
    UtcDatetime,
)

Celsius = Annotated[float, Field(ge=-273.15, le=100.0)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


# ---------------------------------------------------------------- order intake (orders.events)


class RejectionReason(ContractModel):
    code: Annotated[str, Field(min_length=1, max_length=64)]
    message: Reason


class OrderRejectionCode(StrEnum):
    """Each acceptance check an order can fail (order intake's `domain.acceptance_failures`)."""

    THERAPY_UNKNOWN = "therapy_unknown"
    SITE_UNKNOWN = "site_unknown"
    SITE_NOT_CERTIFIED = "site_not_certified"
    PRESCRIBER_NPI_INVALID = "prescriber_npi_invalid"
    PRESCRIBER_UNKNOWN = "prescriber_unknown"
    PRESCRIBER_NOT_AT_SITE = "prescriber_not_at_site"
    CONSENT_MISSING = "consent_missing"
    CONSENT_AFTER_ORDER = "consent_after_order"
    PAYER_AUTHORIZATION_MISSING = "payer_authorization_missing"
    PAYER_AUTHORIZATION_EXPIRED = "payer_authorization_expired"
    ELIGIBILITY_NOT_ATTESTED = "eligibility_not_attested"


class CancellationReasonCode(StrEnum):
    """Why an order was cancelled, as a coordinator states it (`POST /orders/{id}/cancel`); the note
    beside it stays in order intake."""

    PATIENT_INELIGIBLE = "patient_ineligible"
    PATIENT_WITHDREW = "patient_withdrew"
    PATIENT_DECEASED = "patient_deceased"
    PAYER_DENIED = "payer_denied"
    MANUFACTURING_FAILURE = "manufacturing_failure"
    DUPLICATE_ORDER = "duplicate_order"
    CLINICAL_DECISION = "clinical_decision"
    OTHER = "other"
    """Also what an `order.cancelled.v1` (free text) is read as."""


class ManufacturingFailureCode(StrEnum):
    """Why a lot failed in manufacturing, as a coordinator records it
    (`POST /orders/{id}/manufacturing-failure`); the note beside it stays in order intake."""

    OUT_OF_SPECIFICATION_POTENCY = "out_of_specification_potency"
    STERILITY_FAILURE = "sterility_failure"
    INSUFFICIENT_CELL_YIELD = "insufficient_cell_yield"
    PROCESS_DEVIATION = "process_deviation"
    OTHER = "other"


class OutOfSpecificationCode(StrEnum):
    """What a lot released out of specification missed (`POST /orders/{id}/manufacturing-release` with
    `out_of_specification`): a product that may still be infused, on a physician's request."""

    POTENCY = "potency"
    VIABILITY = "viability"
    CELL_DOSE = "cell_dose"
    PURITY = "purity"
    OTHER = "other"


class OosDocument(StrEnum):
    """A document an out-of-specification file must hold before the product is scheduled for infusion
    (order intake decides which, by the treatment center's country); the references themselves stay in
    order intake."""

    PHYSICIAN_REQUEST = "physician_request"
    """The treating physician's request to infuse the product."""
    PATIENT_CONSENT = "patient_consent"
    """The patient's consent to receive a product out of specification."""
    RISK_ASSESSMENT = "risk_assessment"
    """The manufacturer's risk assessment."""
    IND = "ind"
    """In the US: the expanded-access or single-patient IND."""


class ManufacturingDelayCode(StrEnum):
    """Why a lot's release is expected later than planned, as a coordinator records it
    (`POST /orders/{id}/manufacturing-delay`); the note beside it stays in order intake."""

    PROCESS_DEVIATION = "process_deviation"
    RELEASE_TESTING = "release_testing"
    """Release tests (sterility, potency...) take longer or are repeated."""
    SITE_CAPACITY = "site_capacity"
    MATERIAL_SUPPLY = "material_supply"
    """A reagent or the vector is late."""
    OTHER = "other"


class OrderAcceptedData(ContractModel):
    order_id: UUID
    coi: CoiIdentifier
    patient_ref: Identifier
    therapy_code: Identifier
    treatment_center_id: Identifier
    storage_limit_celsius: Celsius
    conditioning_days: Annotated[int, Field(ge=0, le=30)]
    accepted_at: UtcDatetime
    long_term_follow_up: bool = False


class QualificationWindow(ContractModel):
    """A manufacturer's qualification of a treatment center for a therapy: from `effective_on` through
    `expires_on` (both days included; open-ended without it)."""

    effective_on: date
    expires_on: date | None = None


class OrderAcceptedDataV2(OrderAcceptedData):
    """v2: what scheduling checks again when the plan is booked and the infusion confirmed: the site's
    qualification windows for the therapy when the order was accepted, and the last day the payer
    authorization covers (a date only: the authorization's reference stays in order intake)."""

    site_qualifications: Annotated[list[QualificationWindow], Field(max_length=50)]
    payer_authorization_expires_on: date


class SiteQualificationChangedData(ContractModel):
    """The site's qualification windows for the order's therapy were recorded, changed or withdrawn
    (an empty list) in order intake's registry: one event per active order there, keyed by its COI."""

    order_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    therapy_code: Identifier
    site_qualifications: Annotated[list[QualificationWindow], Field(max_length=50)]
    """Every window the site now has for the therapy (the whole list, replacing the one known before)."""
    changed_at: UtcDatetime


class PayerAuthorizationRenewedData(ContractModel):
    """A coordinator recorded a renewed payer authorization for the order: the last day it covers (the
    reference stays in order intake)."""

    order_id: UUID
    coi: CoiIdentifier
    expires_on: date
    renewed_at: UtcDatetime
    renewed_by: Identifier
    """The coordinator's user id (never a name)."""


class OrderRejectedData(ContractModel):
    order_id: UUID
    patient_ref: Identifier
    therapy_code: Identifier
    treatment_center_id: Identifier
    reasons: Annotated[list[RejectionReason], Field(min_length=1)]


class OrderRejectedDataV2(ContractModel):
    """v2: the failed checks as codes only; their explanations are order intake's (`GET /orders/{id}`)."""

    order_id: UUID
    patient_ref: Identifier
    therapy_code: Identifier
    treatment_center_id: Identifier
    reason_codes: Annotated[list[OrderRejectionCode], Field(min_length=1, max_length=20)]


class OrderCancelledData(ContractModel):
    order_id: UUID
    coi: CoiIdentifier
    reason: Reason
    cancelled_by: Identifier
    cancelled_at: UtcDatetime


class OrderCancelledDataV2(ContractModel):
    """v2: the reason as a code; the coordinator's note stays with the order (`GET /orders/{order_id}`)."""

    order_id: UUID
    coi: CoiIdentifier
    reason_code: CancellationReasonCode
    cancelled_by: Identifier
    cancelled_at: UtcDatetime


class CollectionRecordedData(ContractModel):
    """A collection (apheresis) made for an order: its own DIN, under the order's one COI identifier."""

    order_id: UUID
    coi: CoiIdentifier
    collection_number: Annotated[int, Field(ge=1, le=20)]
    din: Annotated[str, Field(pattern=r"^[A-NP-Z][0-9]{12}[0-9A-Z*]$")]
    collected_at: UtcDatetime
    treatment_center_id: Identifier


class ProductReleasedForShipmentData(ContractModel):
    """The manufacturer released the order's drug product (a lot) for shipment to the treatment center:
    only then may the return leg be picked up."""

    order_id: UUID
    coi: CoiIdentifier
    lot_number: Identifier
    """The manufacturer's lot (batch) number of the released product."""
    released_at: UtcDatetime
    released_by: Identifier
    """The releasing person's user id (never a name)."""


class ProductReleasedForShipmentDataV2(ProductReleasedForShipmentData):
    """v2: whether the lot was released out of specification, and if so what it missed and which
    documents its file must hold before the product is scheduled for infusion (none when in
    specification). A `.v1` is read as in specification."""

    out_of_specification: bool = False
    out_of_specification_code: OutOfSpecificationCode | None = None
    oos_documents_required: Annotated[list[OosDocument], Field(default_factory=list, max_length=8)]


class OosFileCompletedData(ContractModel):
    """The out-of-specification file of the order's released product holds every document it needs:
    the product may be scheduled for infusion. No reference is in it (they stay in order intake)."""

    order_id: UUID
    coi: CoiIdentifier
    lot_number: Identifier
    documents: Annotated[list[OosDocument], Field(min_length=1, max_length=8)]
    """The documents on file (codes only)."""
    completed_at: UtcDatetime
    completed_by: Identifier
    """The coordinator's user id (never a name)."""


class ManufacturingFailedData(ContractModel):
    """The lot made from the order's cells failed: a new collection (a new DIN under the same COI) may be
    recorded; the failed lot's return leg is closed and its infusion appointment released."""

    order_id: UUID
    coi: CoiIdentifier
    collection_number: Annotated[int, Field(ge=1, le=20)]
    """The latest collection before the failure: the one the failed lot was made from."""
    reason_code: ManufacturingFailureCode
    failed_at: UtcDatetime
    """When order intake recorded the failure (the server's time)."""
    recorded_by: Identifier
    """The recording coordinator's user id (never a name)."""


class ManufacturingStartedData(ContractModel):
    """Manufacturing started on the order's latest collection (a coordinator recorded the step)."""

    order_id: UUID
    coi: CoiIdentifier
    collection_number: Annotated[int, Field(ge=1, le=20)] | None
    """The collection the lot is made from (the latest); None when the cells were recorded as a step,
    without a collection and its DIN."""
    started_at: UtcDatetime


class ManufacturingDelayedData(ContractModel):
    """The lot in manufacturing is now expected to be released on `expected_release_on` (the
    manufacturing site's day): scheduling re-plans the release, the return and the infusion."""

    order_id: UUID
    coi: CoiIdentifier
    collection_number: Annotated[int, Field(ge=1, le=20)] | None
    """The collection the lot is made from, as in `manufacturing.started.v1`."""
    expected_release_on: date
    reason_code: ManufacturingDelayCode
    delayed_at: UtcDatetime
    recorded_by: Identifier
    """The recording coordinator's user id (never a name)."""


class OrderAccepted(EventEnvelope):
    type: Literal["order.accepted.v1"] = "order.accepted.v1"
    data: OrderAcceptedData


class OrderAcceptedV2(EventEnvelope):
    type: Literal["order.accepted.v2"] = "order.accepted.v2"
    data: OrderAcceptedDataV2


class SiteQualificationChanged(EventEnvelope):
    type: Literal["site.qualification_changed.v1"] = "site.qualification_changed.v1"
    data: SiteQualificationChangedData


class PayerAuthorizationRenewed(EventEnvelope):
    type: Literal["order.payer_authorization_renewed.v1"] = "order.payer_authorization_renewed.v1"
    data: PayerAuthorizationRenewedData


class OrderRejected(EventEnvelope):
    """Rejected orders have no COI yet: `subject` is the order id."""

    type: Literal["order.rejected.v1"] = "order.rejected.v1"
    data: OrderRejectedData


class OrderRejectedV2(EventEnvelope):
    """Rejected orders have no COI yet: `subject` is the order id."""

    type: Literal["order.rejected.v2"] = "order.rejected.v2"
    data: OrderRejectedDataV2


class OrderCancelled(EventEnvelope):
    """order.cancelled.v1, still read (as `other`): its reason was the coordinator's free text."""

    type: Literal["order.cancelled.v1"] = "order.cancelled.v1"
    data: OrderCancelledData


class OrderCancelledV2(EventEnvelope):
    type: Literal["order.cancelled.v2"] = "order.cancelled.v2"
    data: OrderCancelledDataV2


class CollectionRecorded(EventEnvelope):
    type: Literal["collection.recorded.v1"] = "collection.recorded.v1"
    data: CollectionRecordedData


class ProductReleasedForShipment(EventEnvelope):
    type: Literal["product.released_for_shipment.v1"] = "product.released_for_shipment.v1"
    data: ProductReleasedForShipmentData


class ProductReleasedForShipmentV2(EventEnvelope):
    type: Literal["product.released_for_shipment.v2"] = "product.released_for_shipment.v2"
    data: ProductReleasedForShipmentDataV2


class OosFileCompleted(EventEnvelope):
    type: Literal["product.oos_file_completed.v1"] = "product.oos_file_completed.v1"
    data: OosFileCompletedData


class ManufacturingFailed(EventEnvelope):
    type: Literal["manufacturing.failed.v1"] = "manufacturing.failed.v1"
    data: ManufacturingFailedData


class ManufacturingStarted(EventEnvelope):
    type: Literal["manufacturing.started.v1"] = "manufacturing.started.v1"
    data: ManufacturingStartedData


class ManufacturingDelayed(EventEnvelope):
    type: Literal["manufacturing.delayed.v1"] = "manufacturing.delayed.v1"
    data: ManufacturingDelayedData


# ---------------------------------------------------------------- COI tracking (shipments.events)


class ShipmentLeg(StrEnum):
    OUTBOUND = "outbound"
    RETURN = "return"


class ScanType(StrEnum):
    PICK_UP = "pick_up"
    HAND_OFF = "hand_off"
    CHECKPOINT = "checkpoint"
    DELAY = "delay"
    DELIVERY = "delivery"
    RECEIPT = "receipt"


class ScanRefusalCode(StrEnum):
    """Why a scan was refused (COI tracking's `domain.evaluate_scan`); the full sentence is on the scan's
    record (`GET /shipments/{id}/scans`)."""

    DEVICE_CLOCK_AHEAD = "device_clock_ahead"
    DATED_BEFORE_PLANNING = "dated_before_planning"
    ETA_MISSING = "eta_missing"
    ETA_IN_PAST = "eta_in_past"
    ORDER_CANCELLED = "order_cancelled"
    LOT_FAILED = "lot_failed"
    QA_REJECTED = "qa_rejected"
    PRODUCT_NOT_RELEASED = "product_not_released"
    OUT_OF_SEQUENCE = "out_of_sequence"
    """The scan cannot follow the shipment's status (a delivery before a pick-up...)."""
    NOT_CUSTODIAN = "not_custodian"
    HANDED_TO_MISSING = "handed_to_missing"
    ALREADY_IN_CUSTODY = "already_in_custody"
    UNREGISTERED_COURIER = "unregistered_courier"
    OTHER_COURIER_COMPANY = "other_courier_company"
    OTHER = "other"


class QuarantineReasonCode(StrEnum):
    """What put a shipment in quarantine (I1, I2); the details (which bag, which reading) stay on the
    shipment (`GET /shipments/{id}`: `quarantine_reason`) and its custody ledger."""

    COI_BREAK = "coi_break"
    """A bag's label reads another COI."""
    BAG_MISSING = "bag_missing"
    BAG_EXTRA = "bag_extra"
    CONTAINER_MISMATCH = "container_mismatch"
    """The bags seen in (or packed into) another dry shipper than the one declared."""
    SEAL_BROKEN = "seal_broken"
    """Another seal than the one applied at packing."""
    TEMPERATURE_EXCURSION = "temperature_excursion"
    """A reading above the leg's limit."""
    BELOW_MINIMUM_TEMPERATURE = "below_minimum_temperature"
    LOGGER_GAP = "logger_gap"
    HOLD_TIME_EXCEEDED = "hold_time_exceeded"
    TRANSIT_TIME_EXCEEDED = "transit_time_exceeded"
    SENSOR_ALARM = "sensor_alarm"
    TEMPERATURE_UNPROVEN = "temperature_unproven"
    """A temperature report that cannot prove the product cold (no value, only a minimum, no unit...)."""
    EVENT_CONFLICT = "event_conflict"
    """An EPCIS eventID captured before with other content."""
    ERROR_DECLARATION = "error_declaration"
    """A courier's system declared one of its EPCIS events erroneous."""
    OTHER = "other"
    """Also what a `shipment.quarantined.v1` (free text) is read as."""


class QaReasonCode(StrEnum):
    """Why QA released or rejected a quarantined shipment; the signer's note stays with the disposition
    (`GET /shipments/{id}/dispositions`) and in the custody ledger."""

    PRODUCT_WITHIN_LIMITS = "product_within_limits"
    """Release: the product itself stayed within its limits (a product probe, the full logger record)."""
    LOGGER_FAULT = "logger_fault"
    """Release: the logger failed, not the cold chain."""
    WITHIN_STABILITY_DATA = "within_stability_data"
    """Release: the excursion is covered by the product's stability data."""
    IDENTITY_CONFIRMED = "identity_confirmed"
    """Release: every bag's COI was confirmed against the order after a mis-scan."""
    RECORD_CORRECTED = "record_corrected"
    """Release: a data error (an EPCIS conflict or error declaration) was investigated and corrected."""
    TEMPERATURE_COMPROMISED = "temperature_compromised"
    """Reject."""
    IDENTITY_NOT_CONFIRMED = "identity_not_confirmed"
    """Reject."""
    CONTAINER_COMPROMISED = "container_compromised"
    """Reject: the dry shipper was swapped or opened."""
    PRODUCT_DAMAGED = "product_damaged"
    """Reject."""
    OTHER = "other"
    """Either decision; also what a `.v1` disposition (free text) is read as."""


class ShipmentCreatedData(ContractModel):
    shipment_id: UUID
    order_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg
    treatment_center_id: Identifier
    container_id: Identifier
    bag_count: Annotated[int, Field(ge=1, le=20)]
    courier_company: Identifier
    storage_limit_celsius: Celsius


class ShipmentDispatchedData(ContractModel):
    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg = ShipmentLeg.RETURN
    treatment_center_id: Identifier
    dispatched_at: UtcDatetime
    eta_at: UtcDatetime


class ShipmentScannedData(ContractModel):
    shipment_id: UUID
    scan_id: UUID
    coi: CoiIdentifier
    scan_type: ScanType
    location: Annotated[str, Field(min_length=1, max_length=128)]
    scanned_at: UtcDatetime
    temperature_celsius: Celsius | None
    accepted: bool
    refusal_reason: Reason | None = None


class ShipmentScannedDataV2(ContractModel):
    """v2: no location (COI tracking keeps it with the scan, `scan_id`), and a refusal as a code."""

    shipment_id: UUID
    scan_id: UUID
    coi: CoiIdentifier
    scan_type: ScanType
    scanned_at: UtcDatetime
    temperature_celsius: Celsius | None
    accepted: bool
    refusal_code: ScanRefusalCode | None = None


class CustodyTransferredData(ContractModel):
    shipment_id: UUID
    coi: CoiIdentifier
    from_party: Identifier
    to_party: Identifier
    location: Annotated[str, Field(min_length=1, max_length=128)]
    transferred_at: UtcDatetime
    ledger_sequence: Annotated[int, Field(ge=1)]
    entry_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class CustodyTransferredDataV2(ContractModel):
    """v2: no location; it is in the ledger entry (`GET /shipments/{id}/ledger`, `ledger_sequence`)."""

    shipment_id: UUID
    coi: CoiIdentifier
    from_party: Identifier
    to_party: Identifier
    transferred_at: UtcDatetime
    ledger_sequence: Annotated[int, Field(ge=1)]
    entry_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class LedgerHeadPublishedData(ContractModel):
    """The custody ledger's head after an entry, signed (Ed25519) by COI tracking's ledger key over
    `cgt.ledger.head.v1` + shipment, sequence, entry hash and key id: what the database must still end with."""

    shipment_id: UUID
    coi: CoiIdentifier
    sequence: Annotated[int, Field(ge=1)]
    entry_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    key_id: Identifier
    signature: Annotated[str, Field(min_length=1, max_length=128, description="base64 Ed25519 signature")]


class ShipmentDeliveredData(ContractModel):
    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg = ShipmentLeg.RETURN
    released_by_disposition_id: UUID | None = None
    """Set when the shipment had been quarantined and a signed QA release let it go on."""
    treatment_center_id: Identifier
    delivered_at: UtcDatetime
    coi_verified: Literal[True]
    temperature_record_clean: Literal[True]
    max_temperature_celsius: Celsius


class CoiBreakData(ContractModel):
    shipment_id: UUID
    scan_id: UUID
    expected_coi: CoiIdentifier
    read_cois: list[Annotated[str, Field(max_length=64)]]
    detected_at: UtcDatetime


class TemperatureExcursionData(ContractModel):
    shipment_id: UUID
    coi: CoiIdentifier
    reading_celsius: Celsius
    limit_celsius: Celsius
    read_at: UtcDatetime


class ShipmentQuarantinedData(ContractModel):
    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg = ShipmentLeg.RETURN
    treatment_center_id: Identifier
    reason: Reason
    quarantined_at: UtcDatetime


class ShipmentQuarantinedDataV2(ContractModel):
    """v2: what quarantined the shipment as codes, each once, in the order found."""

    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg
    treatment_center_id: Identifier
    reason_codes: Annotated[list[QuarantineReasonCode], Field(min_length=1, max_length=16)]
    quarantined_at: UtcDatetime


class ShipmentDelayedData(ContractModel):
    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg
    treatment_center_id: Identifier
    previous_eta_at: UtcDatetime | None
    eta_at: UtcDatetime
    location: Annotated[str, Field(min_length=1, max_length=128)]


class ShipmentDelayedDataV2(ContractModel):
    """v2: no location; `scan_id` names the delay scan, which COI tracking keeps with it."""

    shipment_id: UUID
    scan_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg
    treatment_center_id: Identifier
    previous_eta_at: UtcDatetime | None
    eta_at: UtcDatetime


class QaDispositionData(ContractModel):
    """A QA disposition as an electronic signature (21 CFR Part 11 §11.50): who, when, and what it means."""

    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg
    treatment_center_id: Identifier
    disposition_id: UUID
    signer_id: Identifier
    signer_printed_name: Annotated[str, Field(min_length=1, max_length=128)]
    signed_at: UtcDatetime
    meaning: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Reason
    ledger_sequence: Annotated[int, Field(ge=1)]


class QaDispositionDataV2(ContractModel):
    """v2: why as a code; the signer's note stays with the disposition (`disposition_id`)."""

    shipment_id: UUID
    coi: CoiIdentifier
    leg: ShipmentLeg
    treatment_center_id: Identifier
    disposition_id: UUID
    signer_id: Identifier
    signer_printed_name: Annotated[str, Field(min_length=1, max_length=128)]
    signed_at: UtcDatetime
    meaning: Annotated[str, Field(min_length=1, max_length=64)]
    reason_code: QaReasonCode
    ledger_sequence: Annotated[int, Field(ge=1)]


class CourierScanData(ContractModel):
    """A scan sent by a courier company's system over Kafka instead of HTTP (same meaning as POST .../scans)."""

    shipment_id: UUID
    scan_type: ScanType
    bag_cois: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)]
    location: Annotated[str, Field(min_length=1, max_length=128)]
    device_time: UtcDatetime
    temperature_celsius: Celsius | None = None
    handed_to: Identifier | None = None
    eta_at: UtcDatetime | None = None
    courier_id: Identifier
    courier_company: Identifier


class CourierScanDataV2(CourierScanData):
    """v2 adds what an HTTP scan can already say: the dry shipper's id and its seal, so that a courier's
    system on Kafka is judged on the same identity checks (a swapped shipper or a broken seal)."""

    container_id: Identifier | None = None
    seal_id: Identifier | None = None


class CourierScanSubmitted(EventEnvelope):
    """courier.scan.v1, still accepted: a scan without container and seal ids."""

    type: Literal["courier.scan.v1"] = "courier.scan.v1"
    data: CourierScanData


class CourierScanSubmittedV2(EventEnvelope):
    type: Literal["courier.scan.v2"] = "courier.scan.v2"
    data: CourierScanDataV2


class ShipmentCreated(EventEnvelope):
    type: Literal["shipment.created.v1"] = "shipment.created.v1"
    data: ShipmentCreatedData


class ShipmentDelayed(EventEnvelope):
    type: Literal["shipment.delayed.v1"] = "shipment.delayed.v1"
    data: ShipmentDelayedData


class ShipmentDelayedV2(EventEnvelope):
    type: Literal["shipment.delayed.v2"] = "shipment.delayed.v2"
    data: ShipmentDelayedDataV2


class ShipmentReleased(EventEnvelope):
    """QA released a quarantined shipment: it may go on to delivery confirmation."""

    type: Literal["shipment.released.v1"] = "shipment.released.v1"
    data: QaDispositionData


class ShipmentReleasedV2(EventEnvelope):
    """QA released a quarantined shipment: it may go on to delivery confirmation."""

    type: Literal["shipment.released.v2"] = "shipment.released.v2"
    data: QaDispositionDataV2


class ShipmentRejected(EventEnvelope):
    """QA rejected a quarantined shipment: its product must not be infused."""

    type: Literal["shipment.rejected.v1"] = "shipment.rejected.v1"
    data: QaDispositionData


class ShipmentRejectedV2(EventEnvelope):
    """QA rejected a quarantined shipment: its product must not be infused."""

    type: Literal["shipment.rejected.v2"] = "shipment.rejected.v2"
    data: QaDispositionDataV2


class ShipmentDispatched(EventEnvelope):
    type: Literal["shipment.dispatched.v1"] = "shipment.dispatched.v1"
    data: ShipmentDispatchedData


class ShipmentScanned(EventEnvelope):
    type: Literal["shipment.scanned.v1"] = "shipment.scanned.v1"
    data: ShipmentScannedData


class ShipmentScannedV2(EventEnvelope):
    type: Literal["shipment.scanned.v2"] = "shipment.scanned.v2"
    data: ShipmentScannedDataV2


class CustodyTransferred(EventEnvelope):
    type: Literal["custody.transferred.v1"] = "custody.transferred.v1"
    data: CustodyTransferredData


class CustodyTransferredV2(EventEnvelope):
    type: Literal["custody.transferred.v2"] = "custody.transferred.v2"
    data: CustodyTransferredDataV2


class LedgerHeadPublished(EventEnvelope):
    type: Literal["ledger.head_published.v1"] = "ledger.head_published.v1"
    data: LedgerHeadPublishedData


class ShipmentDelivered(EventEnvelope):
    type: Literal["shipment.delivered.v1"] = "shipment.delivered.v1"
    data: ShipmentDeliveredData


class CoiBreak(EventEnvelope):
    type: Literal["coi.break.v1"] = "coi.break.v1"
    data: CoiBreakData


class TemperatureExcursion(EventEnvelope):
    type: Literal["temperature.excursion.v1"] = "temperature.excursion.v1"
    data: TemperatureExcursionData


class ShipmentQuarantined(EventEnvelope):
    type: Literal["shipment.quarantined.v1"] = "shipment.quarantined.v1"
    data: ShipmentQuarantinedData


class ShipmentQuarantinedV2(EventEnvelope):
    type: Literal["shipment.quarantined.v2"] = "shipment.quarantined.v2"
    data: ShipmentQuarantinedDataV2


# ---------------------------------------------------------------- scheduling (scheduling.events)


class AppointmentStatus(StrEnum):
    """FHIR Appointment.status values that scheduling uses (pending = tentative, booked = confirmed)."""

    PENDING = "pending"
    BOOKED = "booked"
    CANCELLED = "cancelled"


class SlotProposedData(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    conditioning_start_on: date
    infusion_on: date
    status: Literal[AppointmentStatus.PENDING] = AppointmentStatus.PENDING


class SlotConfirmedData(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    conditioning_start_on: date
    infusion_on: date
    shipment_id: UUID
    confirmed_at: UtcDatetime
    status: Literal[AppointmentStatus.BOOKED] = AppointmentStatus.BOOKED


class SlotReasonCode(StrEnum):
    """Why an appointment was held, resumed, moved, cancelled or put at risk. The first fourteen are the
    system's (the product's trouble, its order's end, a delay, a QA release, a failed lot, an
    out-of-specification file pending or complete, a lapsed or renewed site qualification or payer
    authorization; the risks in the same words as `SlotRiskCause`); the others a coordinator states (`POST /appointments/{id}/cancel`, `.../reschedule`),
    whose note stays in scheduling (`GET /appointments/{appointment_id}`)."""

    QUARANTINE = "quarantine"
    TEMPERATURE_EXCURSION = "temperature_excursion"
    COI_BREAK = "coi_break"
    QA_REJECTION = "qa_rejection"
    QA_RELEASE = "qa_release"
    ORDER_CANCELLED = "order_cancelled"
    DELAY = "delay"
    MANUFACTURING_FAILURE = "manufacturing_failure"
    """The lot failed: its appointment is released; the case is booked again for the next product."""
    SITE_QUALIFICATION_LAPSED = "site_qualification_lapsed"
    """Held at confirmation: the site is not qualified for the therapy on every day of the appointment."""
    PAYER_AUTHORIZATION_LAPSED = "payer_authorization_lapsed"
    """Held at confirmation: the payer authorization ends before the infusion day."""
    SITE_QUALIFICATION_RENEWED = "site_qualification_renewed"
    PAYER_AUTHORIZATION_RENEWED = "payer_authorization_renewed"
    """Resumed: what held it at confirmation is covered again."""
    OUT_OF_SPECIFICATION = "out_of_specification"
    """Held: the product was released out of specification and its file is not complete yet."""
    OOS_FILE_COMPLETE = "oos_file_complete"
    """Resumed: the out-of-specification file is complete."""
    SITE_REQUEST = "site_request"
    PATIENT_REQUEST = "patient_request"
    PATIENT_CONDITION = "patient_condition"
    """The patient is not fit to start conditioning (an infection, abnormal labs...)."""
    CLINICAL_DECISION = "clinical_decision"
    SITE_CAPACITY = "site_capacity"
    """The site lost the chair, the beds or the staff for those days."""
    OTHER = "other"


class SlotHeldData(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    reason: Reason
    held_at: UtcDatetime


class SlotHeldDataV2(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    reason_code: SlotReasonCode
    held_at: UtcDatetime


class SlotProposed(EventEnvelope):
    type: Literal["slot.proposed.v1"] = "slot.proposed.v1"
    data: SlotProposedData


class SlotConfirmed(EventEnvelope):
    type: Literal["slot.confirmed.v1"] = "slot.confirmed.v1"
    data: SlotConfirmedData


class SlotHeld(EventEnvelope):
    type: Literal["slot.held.v1"] = "slot.held.v1"
    data: SlotHeldData


class SlotHeldV2(EventEnvelope):
    type: Literal["slot.held.v2"] = "slot.held.v2"
    data: SlotHeldDataV2


class SlotOption(ContractModel):
    option_id: UUID
    conditioning_start_on: date
    infusion_on: date


class SlotOptionsOfferedData(ContractModel):
    """The earliest feasible options for a coordinator to book, once the return shipment is dispatched."""

    coi: CoiIdentifier
    treatment_center_id: Identifier
    shipment_id: UUID
    eta_at: UtcDatetime
    options: Annotated[list[SlotOption], Field(max_length=10)]


class SlotRescheduledData(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    previous_conditioning_start_on: date
    previous_infusion_on: date
    conditioning_start_on: date
    infusion_on: date
    reason: Reason


class SlotRescheduledDataV2(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    previous_conditioning_start_on: date
    previous_infusion_on: date
    conditioning_start_on: date
    infusion_on: date
    reason_code: SlotReasonCode


class SlotChangedData(ContractModel):
    """An appointment that was cancelled, or resumed after a hold, and why."""

    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    reason: Reason
    at: UtcDatetime


class SlotChangedDataV2(ContractModel):
    """An appointment that was cancelled, or resumed after a hold, and why (a code)."""

    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    reason_code: SlotReasonCode
    at: UtcDatetime


class SlotRiskCause(StrEnum):
    """What threatens an appointment: the product's trouble, its order's end, or a delay."""

    QUARANTINE = "quarantine"
    TEMPERATURE_EXCURSION = "temperature_excursion"
    COI_BREAK = "coi_break"
    QA_REJECTION = "qa_rejection"
    ORDER_CANCELLED = "order_cancelled"
    DELAY = "delay"
    MANUFACTURING_FAILURE = "manufacturing_failure"


class SlotAtRiskData(ContractModel):
    """An appointment the site may already act on is threatened (it was confirmed, or conditioning may
    have started): the site and the coordinators are alerted, and the alert stays on the coordinators'
    worklist until one of them resolves it."""

    appointment_id: UUID
    alert_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    cause: SlotRiskCause
    appointment_state: Literal["tentative", "on_hold", "confirmed", "cancelled", "infused"]
    """The appointment's state after the change (a confirmed one is put on hold unless conditioning may
    have started: then it is left as it is, for the clinicians to decide)."""
    conditioning_start_on: date
    infusion_on: date
    conditioning_may_have_started: bool
    reason: Reason
    at: UtcDatetime


class SlotAtRiskDataV2(ContractModel):
    """v2: no text; `cause`, the state and whether conditioning may have started say it all, and the
    alert (`alert_id`) is on the coordinators' worklist."""

    appointment_id: UUID
    alert_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    cause: SlotRiskCause
    appointment_state: Literal["tentative", "on_hold", "confirmed", "cancelled", "infused"]
    conditioning_start_on: date
    infusion_on: date
    conditioning_may_have_started: bool
    at: UtcDatetime


class WebhookDeliveryFailedData(ContractModel):
    delivery_id: UUID
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    kind: Annotated[str, Field(max_length=64)]
    attempts: int
    last_error: Annotated[str, Field(max_length=1000)]


class WebhookDeliveryFailedV2Data(ContractModel):
    """A message a site did not get: it alone ran out of attempts, or its endpoint failed so many times
    in a row that it was disabled (`endpoint_disabled`; its waiting messages go out when it is resumed)."""

    delivery_id: UUID
    endpoint_id: UUID
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    kind: Annotated[str, Field(max_length=64)]
    attempts: int
    consecutive_failures: int
    endpoint_disabled: bool
    last_error: Annotated[str, Field(max_length=1000)]


class InfusionRecordedData(ContractModel):
    appointment_id: UUID
    coi: CoiIdentifier
    treatment_center_id: Identifier
    infused_on: date
    follow_up_visits: int


class FollowUpVisitOverdueData(ContractModel):
    coi: CoiIdentifier
    treatment_center_id: Identifier
    visit_number: int
    due_on: date
    window_end_on: date


class SlotOptionsOffered(EventEnvelope):
    type: Literal["slot.options_offered.v1"] = "slot.options_offered.v1"
    data: SlotOptionsOfferedData


class SlotRescheduled(EventEnvelope):
    type: Literal["slot.rescheduled.v1"] = "slot.rescheduled.v1"
    data: SlotRescheduledData


class SlotRescheduledV2(EventEnvelope):
    type: Literal["slot.rescheduled.v2"] = "slot.rescheduled.v2"
    data: SlotRescheduledDataV2


class SlotCancelled(EventEnvelope):
    type: Literal["slot.cancelled.v1"] = "slot.cancelled.v1"
    data: SlotChangedData


class SlotCancelledV2(EventEnvelope):
    type: Literal["slot.cancelled.v2"] = "slot.cancelled.v2"
    data: SlotChangedDataV2


class SlotResumed(EventEnvelope):
    type: Literal["slot.resumed.v1"] = "slot.resumed.v1"
    data: SlotChangedData


class SlotResumedV2(EventEnvelope):
    type: Literal["slot.resumed.v2"] = "slot.resumed.v2"
    data: SlotChangedDataV2


class SlotAtRisk(EventEnvelope):
    type: Literal["slot.at_risk.v1"] = "slot.at_risk.v1"
    data: SlotAtRiskData


class SlotAtRiskV2(EventEnvelope):
    type: Literal["slot.at_risk.v2"] = "slot.at_risk.v2"
    data: SlotAtRiskDataV2


class WebhookDeliveryFailed(EventEnvelope):
    type: Literal["webhook.delivery_failed.v1"] = "webhook.delivery_failed.v1"
    data: WebhookDeliveryFailedData


class WebhookDeliveryFailedV2(EventEnvelope):
    type: Literal["webhook.delivery_failed.v2"] = "webhook.delivery_failed.v2"
    data: WebhookDeliveryFailedV2Data


class CollectionPostponementCode(StrEnum):
    """Why a coordinator moves a booked plan's collection to a later day
    (`POST /cases/{coi}/plans/{plan_id}/collection-postponement`); the note stays in scheduling."""

    PATIENT_CONDITION = "patient_condition"
    """The patient is not fit for apheresis (an infection, low counts...)."""
    PATIENT_REQUEST = "patient_request"
    COLLECTION_CENTER_CAPACITY = "collection_center_capacity"
    CLINICAL_DECISION = "clinical_decision"
    OTHER = "other"


class PlanReplanCause(StrEnum):
    """Which leg slipped and made scheduling re-plan the later ones."""

    COLLECTION_POSTPONED = "collection_postponed"
    MANUFACTURING_DELAYED = "manufacturing_delayed"
    SHIPMENT_DELAYED = "shipment_delayed"


class PlanReplannedData(ContractModel):
    """A booked plan's legs after a slip, for every site on it: the collection center, the manufacturing
    site and the treatment center (also by webhook). `reason_code` is the code given with the slip (a
    `CollectionPostponementCode`, a `ManufacturingDelayCode`, or `delay` for a shipment)."""

    plan_id: UUID
    coi: CoiIdentifier
    cause: PlanReplanCause
    reason_code: CollectionPostponementCode | ManufacturingDelayCode | Literal["delay"]
    collection_center_id: Identifier
    collection_on: date
    manufacturing_site_id: Identifier
    manufacturing_week: Annotated[str, Field(pattern=r"^[0-9]{4}-W[0-9]{2}$")]
    manufacturing_start_on: date
    release_on: date
    eta_at: UtcDatetime
    treatment_center_id: Identifier
    appointment_id: UUID | None
    conditioning_start_on: date
    infusion_on: date
    previous_infusion_on: date
    replanned_at: UtcDatetime


class PlanReplanned(EventEnvelope):
    type: Literal["plan.replanned.v1"] = "plan.replanned.v1"
    data: PlanReplannedData


class InfusionRecorded(EventEnvelope):
    type: Literal["infusion.recorded.v1"] = "infusion.recorded.v1"
    data: InfusionRecordedData


class FollowUpVisitOverdue(EventEnvelope):
    type: Literal["followup.visit_overdue.v1"] = "followup.visit_overdue.v1"
    data: FollowUpVisitOverdueData


AnyEvent = Annotated[
    OrderAccepted
    | OrderAcceptedV2
    | SiteQualificationChanged
    | PayerAuthorizationRenewed
    | OrderRejected
    | OrderRejectedV2
    | OrderCancelled
    | OrderCancelledV2
    | CollectionRecorded
    | ProductReleasedForShipment
    | ProductReleasedForShipmentV2
    | OosFileCompleted
    | ManufacturingFailed
    | ManufacturingStarted
    | ManufacturingDelayed
    | CourierScanSubmitted
    | CourierScanSubmittedV2
    | ShipmentCreated
    | ShipmentDispatched
    | ShipmentDelayed
    | ShipmentDelayedV2
    | ShipmentReleased
    | ShipmentReleasedV2
    | ShipmentRejected
    | ShipmentRejectedV2
    | ShipmentScanned
    | ShipmentScannedV2
    | CustodyTransferred
    | CustodyTransferredV2
    | LedgerHeadPublished
    | ShipmentDelivered
    | CoiBreak
    | TemperatureExcursion
    | ShipmentQuarantined
    | ShipmentQuarantinedV2
    | SlotProposed
    | SlotConfirmed
    | SlotHeld
    | SlotHeldV2
    | SlotOptionsOffered
    | SlotRescheduled
    | SlotRescheduledV2
    | SlotCancelled
    | SlotCancelledV2
    | SlotResumed
    | SlotResumedV2
    | SlotAtRisk
    | SlotAtRiskV2
    | WebhookDeliveryFailed
    | WebhookDeliveryFailedV2
    | InfusionRecorded
    | FollowUpVisitOverdue
    | PlanReplanned,
    Field(discriminator="type"),
]
"""Any event on the bus, told apart by its versioned `type`."""

any_event_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

EVENT_TYPES: dict[str, type[EventEnvelope]] = {
    model.model_fields["type"].default: model for model in get_args(get_args(AnyEvent)[0])
}
"""Each event model by its `type`: the members of `AnyEvent`, listed once there."""

SUPERSEDED: dict[str, str] = {
    "order.accepted.v1": "order.accepted.v2",
    "product.released_for_shipment.v1": "product.released_for_shipment.v2",
    "order.rejected.v1": "order.rejected.v2",
    "order.cancelled.v1": "order.cancelled.v2",
    "shipment.scanned.v1": "shipment.scanned.v2",
    "custody.transferred.v1": "custody.transferred.v2",
    "shipment.delayed.v1": "shipment.delayed.v2",
    "shipment.quarantined.v1": "shipment.quarantined.v2",
    "shipment.released.v1": "shipment.released.v2",
    "shipment.rejected.v1": "shipment.rejected.v2",
    "slot.held.v1": "slot.held.v2",
    "slot.rescheduled.v1": "slot.rescheduled.v2",
    "slot.cancelled.v1": "slot.cancelled.v2",
    "slot.resumed.v1": "slot.resumed.v2",
    "slot.at_risk.v1": "slot.at_risk.v2",
    "webhook.delivery_failed.v1": "webhook.delivery_failed.v2",
}
"""Types still read (records already on the topics) but no longer written, and the type written instead."""


def parse_event(raw: bytes | str) -> AnyEvent:
    """Validate a JSON message into its typed event; raises pydantic.ValidationError otherwise."""
    return any_event_adapter.validate_json(raw)
