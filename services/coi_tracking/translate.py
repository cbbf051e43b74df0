"""Facts to events: the one place that says which event each of the domain's facts publishes and what it
carries. The domain decides (`domain.evaluate_scan`), the command applies (`commands.record_scan`), this
module only translates — it reads the shipment as the command left it and writes nothing.

What it publishes is the minimum necessary (I6): why as codes, and ids that name the records COI tracking
keeps (the scan, the ledger entry, the shipment); never a location or a sentence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from cgt_contracts.envelope import EventEnvelope
from cgt_contracts.events import (
    CoiBreak,
    CoiBreakData,
    CustodyTransferredDataV2,
    CustodyTransferredV2,
    QuarantineReasonCode,
    ScanType,
    ShipmentDelayedDataV2,
    ShipmentDelayedV2,
    ShipmentDelivered,
    ShipmentDeliveredData,
    ShipmentDispatched,
    ShipmentDispatchedData,
    ShipmentQuarantinedDataV2,
    ShipmentQuarantinedV2,
    ShipmentScannedDataV2,
    ShipmentScannedV2,
    TemperatureExcursion,
    TemperatureExcursionData,
)

from services.coi_tracking.domain import (
    CoiBroken,
    CustodyChange,
    Delayed,
    Delivered,
    Dispatched,
    Fact,
    Moved,
    Quarantined,
    Reading,
    ScanDecision,
    StoredEntry,
    TemperatureExceeded,
)
from services.coi_tracking.models import Shipment
from services.common.topics import COI_TRACKING_SOURCE

SOURCE = COI_TRACKING_SOURCE


@dataclass(frozen=True)
class ScanRecorded:
    """The scan as stored, which every event of the scan refers to."""

    scan_id: UUID
    scan_type: ScanType
    scanned_at: datetime
    temperature_celsius: float | None
    detected_at: datetime
    """The server's clock when the scan was judged."""


@dataclass(frozen=True)
class Applied:
    """What applying a scan's facts wrote that its events carry: the custody ledger entry, the expected
    delivery time before the scan, and when a quarantine was entered."""

    previous_eta_at: datetime | None = None
    custody_entry: StoredEntry | None = None
    quarantined_at: datetime | None = None


def envelope(shipment: Shipment, correlation_id: str) -> dict[str, str]:
    return {"source": SOURCE, "subject": shipment.coi, "correlationid": correlation_id}


def scan_events(
    shipment: Shipment, decision: ScanDecision, scan: ScanRecorded, applied: Applied, correlation_id: str
) -> list[EventEnvelope]:
    """`shipment.scanned` for every scan, then one event per fact, in the decision's order."""
    scanned = ShipmentScannedV2(
        **envelope(shipment, correlation_id),
        data=ShipmentScannedDataV2(
            shipment_id=shipment.id,
            scan_id=scan.scan_id,
            coi=shipment.coi,
            scan_type=scan.scan_type,
            scanned_at=scan.scanned_at,
            temperature_celsius=scan.temperature_celsius,
            accepted=decision.accepted,
            refusal_code=decision.refusal_code,
        ),
    )
    events: list[EventEnvelope] = [scanned]
    for fact in decision.facts:
        event = fact_event(shipment, fact, scan, applied, correlation_id)
        if event is not None:
            events.append(event)
    return events


def fact_event(
    shipment: Shipment, fact: Fact, scan: ScanRecorded, applied: Applied, correlation_id: str
) -> EventEnvelope | None:
    """The event one fact publishes, or None for a fact nobody outside needs to hear of."""
    head = envelope(shipment, correlation_id)
    match fact:
        case Moved():
            return None  # shipment.scanned already says where the shipment is
        case CustodyChange():
            assert applied.custody_entry is not None, "a custody change is applied before it is published"
            return custody_transferred(shipment, applied.custody_entry, correlation_id)
        case Dispatched(at=at, eta_at=eta_at):
            return ShipmentDispatched(
                **head,
                data=ShipmentDispatchedData(
                    shipment_id=shipment.id,
                    coi=shipment.coi,
                    leg=shipment.leg,
                    treatment_center_id=shipment.treatment_center_id,
                    dispatched_at=at,
                    eta_at=eta_at,
                ),
            )
        case Delayed(eta_at=eta_at):
            return ShipmentDelayedV2(
                **head,
                data=ShipmentDelayedDataV2(
                    shipment_id=shipment.id,
                    scan_id=scan.scan_id,
                    coi=shipment.coi,
                    leg=shipment.leg,
                    treatment_center_id=shipment.treatment_center_id,
                    previous_eta_at=applied.previous_eta_at,
                    eta_at=eta_at,
                ),
            )
        case CoiBroken(read_cois=read_cois):
            return CoiBreak(
                **head,
                data=CoiBreakData(
                    shipment_id=shipment.id,
                    scan_id=scan.scan_id,
                    expected_coi=shipment.coi,
                    read_cois=list(read_cois),
                    detected_at=scan.detected_at,
                ),
            )
        case TemperatureExceeded(reading=reading):
            # Past the hold or transit time without a reading: the quarantine says so, there is no value.
            return temperature_excursion(shipment, reading, correlation_id) if reading else None
        case Quarantined(codes=codes):
            assert applied.quarantined_at is not None, "a quarantine is applied before it is published"
            return shipment_quarantined(shipment, codes, applied.quarantined_at, correlation_id)
        case Delivered(clean=clean):
            return shipment_delivered(shipment, correlation_id) if clean else None
    raise TypeError(f"no event for {fact!r}")  # pragma: no cover - the match is exhaustive


def custody_transferred(shipment: Shipment, entry: StoredEntry, correlation_id: str) -> CustodyTransferredV2:
    """The hand-off; where it happened is in the ledger entry (`ledger_sequence`), not on the bus."""
    return CustodyTransferredV2(
        **envelope(shipment, correlation_id),
        data=CustodyTransferredDataV2(
            shipment_id=shipment.id,
            coi=shipment.coi,
            from_party=entry.content.from_party,
            to_party=entry.content.to_party,
            transferred_at=entry.content.at,
            ledger_sequence=entry.content.sequence,
            entry_sha256=entry.entry_sha256,
        ),
    )


def temperature_excursion(shipment: Shipment, reading: Reading, correlation_id: str) -> TemperatureExcursion:
    return TemperatureExcursion(
        **envelope(shipment, correlation_id),
        data=TemperatureExcursionData(
            shipment_id=shipment.id,
            coi=shipment.coi,
            reading_celsius=reading.celsius,
            limit_celsius=shipment.storage_limit_celsius,
            read_at=reading.at,
        ),
    )


def shipment_quarantined(
    shipment: Shipment,
    codes: Sequence[QuarantineReasonCode],
    quarantined_at: datetime,
    correlation_id: str,
) -> ShipmentQuarantinedV2:
    """The quarantine's codes; its sentences (which bag, which reading) stay with the shipment."""
    return ShipmentQuarantinedV2(
        **envelope(shipment, correlation_id),
        data=ShipmentQuarantinedDataV2(
            shipment_id=shipment.id,
            coi=shipment.coi,
            leg=shipment.leg,
            treatment_center_id=shipment.treatment_center_id,
            reason_codes=list(dict.fromkeys(codes)) or [QuarantineReasonCode.OTHER],
            quarantined_at=quarantined_at,
        ),
    )


def shipment_delivered(
    shipment: Shipment, correlation_id: str, disposition_id: UUID | None = None
) -> ShipmentDelivered:
    """Delivery confirmed: identity verified and the temperature record clean, or QA released it."""
    assert shipment.delivered_at is not None, "published only once the delivery is applied"
    return ShipmentDelivered(
        **envelope(shipment, correlation_id),
        data=ShipmentDeliveredData(
            shipment_id=shipment.id,
            coi=shipment.coi,
            leg=shipment.leg,
            treatment_center_id=shipment.treatment_center_id,
            delivered_at=shipment.delivered_at,
            coi_verified=True,
            temperature_record_clean=True,
            max_temperature_celsius=shipment.max_temperature_celsius
            if shipment.max_temperature_celsius is not None
            else shipment.storage_limit_celsius,
            released_by_disposition_id=disposition_id,
        ),
    )
