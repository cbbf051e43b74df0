"""Scheduling rules: feasible infusion options and the appointment's state machine. Pure Python, no I/O.

Conditioning destroys the patient's marrow, so it may start only after the product is on site (I4):
options start conditioning no earlier than ETA plus the receipt buffer, and an appointment is confirmed
only on a clean delivery.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class AppointmentState(StrEnum):
    TENTATIVE = "tentative"
    ON_HOLD = "on_hold"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


_TRANSITIONS: dict[AppointmentState, frozenset[AppointmentState]] = {
    AppointmentState.TENTATIVE: frozenset(
        {AppointmentState.ON_HOLD, AppointmentState.CONFIRMED, AppointmentState.CANCELLED}
    ),
    AppointmentState.ON_HOLD: frozenset(
        {AppointmentState.TENTATIVE, AppointmentState.CONFIRMED, AppointmentState.CANCELLED}
    ),
    AppointmentState.CONFIRMED: frozenset({AppointmentState.CANCELLED}),
    AppointmentState.CANCELLED: frozenset(),
}


def can_move(current: AppointmentState, target: AppointmentState) -> bool:
    return target in _TRANSITIONS[current]


@dataclass(frozen=True)
class SiteCalendar:
    timezone: str
    infusions_per_day: int
    working_weekdays: frozenset[int]
    """ISO weekdays, Monday = 1."""
    blackout_dates: frozenset[date]

    def is_open(self, day: date) -> bool:
        return day.isoweekday() in self.working_weekdays and day not in self.blackout_dates


@dataclass(frozen=True)
class SlotOption:
    conditioning_start_on: date
    infusion_on: date


def earliest_conditioning_day(eta_at: datetime, receipt_buffer_hours: float, timezone: str) -> date:
    """The first local day whose start is at or after ETA + receipt buffer."""
    ready = (eta_at + timedelta(hours=receipt_buffer_hours)).astimezone(ZoneInfo(timezone))
    day = ready.date()
    return day if ready.time() == time(0) else day + timedelta(days=1)


def feasible_options(
    *,
    eta_at: datetime,
    calendar: SiteCalendar,
    conditioning_days: int,
    receipt_buffer_hours: float,
    booked_per_day: Mapping[date, int],
    count: int = 3,
    horizon_days: int = 60,
) -> list[SlotOption]:
    """The earliest `count` options: conditioning after the product is on site, infusion (day 0) on an
    open working day with capacity left, no conditioning day in a blackout, all in the site's time zone."""
    first = earliest_conditioning_day(eta_at, receipt_buffer_hours, calendar.timezone)
    options: list[SlotOption] = []
    for offset in range(horizon_days):
        start = first + timedelta(days=offset)
        infusion = start + timedelta(days=conditioning_days)
        conditioning = [start + timedelta(days=d) for d in range(conditioning_days)]
        if not calendar.is_open(infusion) or booked_per_day.get(infusion, 0) >= calendar.infusions_per_day:
            continue
        if any(day in calendar.blackout_dates for day in conditioning):
            continue
        options.append(SlotOption(conditioning_start_on=start, infusion_on=infusion))
        if len(options) == count:
            break
    return options


# ---------------------------------------------------------------- webhook signatures

SIGNATURE_HEADER = "X-CGT-Signature"
TIMESTAMP_HEADER = "X-CGT-Timestamp"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over `<timestamp>.<body>`, hex: the receiver recomputes it and compares."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def retry_delay_seconds(attempt: int, base_seconds: float, cap_seconds: float = 3600.0) -> float:
    """Exponential backoff: base, 2 * base, 4 * base, ... capped."""
    return float(min(base_seconds * 2 ** (attempt - 1), cap_seconds))
