"""Pure helpers of the console's pages: times in a site's zone, the case's timeline in order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WORK_KINDS = ("at_risk", "attention", "to_book", "on_hold", "webhook_failing", "follow_up_overdue")
"""The worklist's kinds (scheduling's `GET /worklist`), in the order the filter offers them."""
KIND_LABELS = {
    "at_risk": "At risk",
    "attention": "Needs attention",
    "to_book": "To book",
    "on_hold": "On hold",
    "webhook_failing": "Webhook failing",
    "follow_up_overdue": "Follow-up overdue",
}


def zone_of(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_time(value: str | None, zone: ZoneInfo) -> str:
    """An instant from a service (ISO 8601) in the site's zone, the zone named: `2026-12-03 04:00 EST
    (America/New_York)`; empty for none."""
    if not value:
        return ""
    instant = datetime.fromisoformat(value)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    here = instant.astimezone(zone)
    return f"{here:%Y-%m-%d %H:%M} {here.tzname()} ({zone.key})"


@dataclass(frozen=True)
class Moment:
    """One line of a case's timeline: when (an instant, or a day), and what."""

    at: datetime
    shown: str
    what: str
    source: str


def _instant(value: str, zone: ZoneInfo) -> tuple[datetime, str]:
    if "T" in value:
        instant = datetime.fromisoformat(value)
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return instant, local_time(value, zone)
    day = date.fromisoformat(value)
    return datetime(day.year, day.month, day.day, tzinfo=zone), f"{day.isoformat()} ({zone.key})"


def case_timeline(
    case: dict[str, Any] | None,
    orders: list[dict[str, Any]],
    shipments: list[dict[str, Any]],
    zone: ZoneInfo,
) -> list[Moment]:
    """What happened to one COI so far, oldest first, from what the three services answered."""
    found: list[tuple[str | None, str, str]] = []
    for order in orders:
        found.append((order.get("ordered_on"), f"Order placed ({order.get('therapy_code')})", "order intake"))
        if order.get("status") == "rejected":
            reasons = "; ".join(r.get("message", "") for r in order.get("rejection_reasons") or [])
            found.append((order.get("ordered_on"), f"Order rejected: {reasons}", "order intake"))
        found.append(
            (order.get("product_released_at"), "Product released by the manufacturer", "order intake")
        )
        found.append((order.get("cancelled_at"), "Order cancelled", "order intake"))
    for shipment in shipments:
        leg = shipment.get("leg", "")
        what = f"{leg.capitalize()} shipment to {shipment.get('destination')}: {shipment.get('status')}"
        if shipment.get("quarantine_reason"):
            what += f" (quarantined: {shipment['quarantine_reason']})"
        found.append((shipment.get("eta_at"), f"{leg.capitalize()} shipment due (ETA)", "COI tracking"))
        found.append((shipment.get("delivered_at"), f"{leg.capitalize()} shipment delivered", "COI tracking"))
        if not shipment.get("delivered_at"):
            found.append((shipment.get("eta_at"), what, "COI tracking"))
    if case is not None:
        found.append((case.get("product_delivered_at"), "Product delivered to the site", "scheduling"))
        appointment = case.get("appointment")
        if appointment:
            found.append((appointment.get("conditioning_start_on"), "Conditioning starts", "scheduling"))
            found.append(
                (appointment.get("infusion_on"), f"Infusion ({appointment.get('state')})", "scheduling")
            )
            found.append((appointment.get("confirmed_at"), "Appointment confirmed", "scheduling"))
    moments = []
    for value, what, source in found:
        if value:
            at, shown = _instant(str(value), zone)
            moments.append(Moment(at, shown, what, source))
    return sorted(moments, key=lambda m: m.at)
