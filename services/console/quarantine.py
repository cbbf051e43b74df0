"""Pure helpers of the QA page: a shipment's temperature record in a few numbers, the closed lists a QA
signature is made of, and the signing form read into the body COI tracking takes.

The rules themselves are COI tracking's (its pure `domain` module, imported, not copied): which reading is
out of range, which reason codes each decision may give. The console only shows them; the service decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cgt_contracts.events import QaReasonCode

from services.coi_tracking.domain import MEANING_OF, QA_REASONS, Disposition
from services.console import charts

REASON_LABELS: dict[str, str] = {
    QaReasonCode.PRODUCT_WITHIN_LIMITS: "Product within limits",
    QaReasonCode.LOGGER_FAULT: "Logger fault, not the cold chain",
    QaReasonCode.WITHIN_STABILITY_DATA: "Within the product's stability data",
    QaReasonCode.IDENTITY_CONFIRMED: "Identity confirmed against the order",
    QaReasonCode.RECORD_CORRECTED: "Record investigated and corrected",
    QaReasonCode.TEMPERATURE_COMPROMISED: "Temperature compromised",
    QaReasonCode.IDENTITY_NOT_CONFIRMED: "Identity not confirmed",
    QaReasonCode.CONTAINER_COMPROMISED: "Container compromised",
    QaReasonCode.PRODUCT_DAMAGED: "Product damaged",
    QaReasonCode.OTHER: "Other (say why in the note)",
}
DECISION_LABELS = {Disposition.RELEASE: "Release", Disposition.REJECT: "Reject"}
MEANING_LABELS = {"approval": "Approval", "rejection": "Rejection"}
FORM_FIELDS = ("decision", "reason_code", "note", "meaning", "signing_pin")


@dataclass(frozen=True)
class ReasonGroup:
    """The reason codes one decision may give, in the contract's order, for an `<optgroup>`."""

    decision: str
    label: str
    codes: tuple[tuple[str, str], ...]


def reason_groups() -> list[ReasonGroup]:
    return [
        ReasonGroup(
            decision.value,
            f"To {DECISION_LABELS[decision].lower()}",
            tuple((code.value, REASON_LABELS[code]) for code in QaReasonCode if code in QA_REASONS[decision]),
        )
        for decision in Disposition
    ]


def meanings() -> list[tuple[str, str, str]]:
    """(meaning, label, the decision it goes with)."""
    return [(m.value, MEANING_LABELS[m.value], d.value) for d, m in MEANING_OF.items()]


@dataclass(frozen=True)
class ReadingsSummary:
    """A shipment's temperature record in numbers: how many readings, the coldest and warmest, and how many
    are out of the leg's range (above its storage limit, or below its minimum)."""

    count: int
    min_celsius: float | None
    max_celsius: float | None
    excursions: int
    limit_celsius: float
    first_page_only: bool


def summarise(
    readings: list[Mapping[str, Any]], shipment: Mapping[str, Any], page_size: int
) -> ReadingsSummary:
    """The numbers beside the chart, out of the chart's own points (the limits are the shipment's)."""
    limit = float(shipment["storage_limit_celsius"])
    points = charts.points_of(readings, limit, shipment.get("min_celsius"))
    values = [p.celsius for p in points]
    return ReadingsSummary(
        count=len(values),
        min_celsius=min(values, default=None),
        max_celsius=max(values, default=None),
        excursions=sum(1 for p in points if p.outside is not None),
        limit_celsius=limit,
        first_page_only=len(values) >= page_size,
    )


def disposition_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The signing form as COI tracking's `POST /shipments/{id}/dispositions` body: the fields as typed
    (the service checks them and names any it refuses); an empty note is no note."""
    body: dict[str, Any] = {name: form.get(name, "") for name in FORM_FIELDS}
    if not body["note"].strip():
        body["note"] = None
    return body
