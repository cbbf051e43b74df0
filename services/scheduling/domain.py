"""Scheduling rules: feasible infusion options and the appointment's state machine. Pure Python, no I/O.

Conditioning destroys the patient's marrow, so it may start only after the product is on site (I4):
options start conditioning no earlier than ETA plus the receipt buffer, and an appointment is confirmed
only on a clean delivery.
"""

from __future__ import annotations

from collections import Counter
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
    INFUSED = "infused"


_TRANSITIONS: dict[AppointmentState, frozenset[AppointmentState]] = {
    AppointmentState.TENTATIVE: frozenset(
        {AppointmentState.ON_HOLD, AppointmentState.CONFIRMED, AppointmentState.CANCELLED}
    ),
    AppointmentState.ON_HOLD: frozenset(
        {AppointmentState.TENTATIVE, AppointmentState.CONFIRMED, AppointmentState.CANCELLED}
    ),
    AppointmentState.CONFIRMED: frozenset({AppointmentState.CANCELLED, AppointmentState.INFUSED}),
    AppointmentState.CANCELLED: frozenset(),
    AppointmentState.INFUSED: frozenset(),
}
ACTIVE_STATES = frozenset({AppointmentState.TENTATIVE, AppointmentState.ON_HOLD, AppointmentState.CONFIRMED})
"""Appointments that hold a chair and admission beds."""

FHIR_APPOINTMENT_STATUS = {
    AppointmentState.TENTATIVE: "pending",
    AppointmentState.ON_HOLD: "pending",
    AppointmentState.CONFIRMED: "booked",
    AppointmentState.CANCELLED: "cancelled",
    AppointmentState.INFUSED: "fulfilled",
}
FHIR_SLOT_STATUS = {
    AppointmentState.TENTATIVE: "busy-tentative",
    AppointmentState.ON_HOLD: "busy-tentative",
    AppointmentState.CONFIRMED: "busy",
    AppointmentState.INFUSED: "busy",
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
    admissions_capacity: int = 1_000_000
    """Beds for patients in conditioning (from its first day through infusion)."""

    def is_open(self, day: date) -> bool:
        return day.isoweekday() in self.working_weekdays and day not in self.blackout_dates


@dataclass(frozen=True)
class SlotOption:
    conditioning_start_on: date
    infusion_on: date

    def admission_days(self) -> list[date]:
        """The days the patient occupies a bed: conditioning start through infusion, inclusive."""
        span = (self.infusion_on - self.conditioning_start_on).days
        return [self.conditioning_start_on + timedelta(days=d) for d in range(span + 1)]


@dataclass(frozen=True)
class Load:
    """What is already booked at a site."""

    infusions: Mapping[date, int]
    admissions: Mapping[date, int]

    @staticmethod
    def of(options: list[SlotOption]) -> Load:
        infusions: Counter[date] = Counter(o.infusion_on for o in options)
        admissions: Counter[date] = Counter(day for o in options for day in o.admission_days())
        return Load(infusions, admissions)


def earliest_conditioning_day(eta_at: datetime, receipt_buffer_hours: float, timezone: str) -> date:
    """The first local day whose start is at or after ETA + receipt buffer."""
    ready = (eta_at + timedelta(hours=receipt_buffer_hours)).astimezone(ZoneInfo(timezone))
    day = ready.date()
    return day if ready.time() == time(0) else day + timedelta(days=1)


def option_problems(option: SlotOption, calendar: SiteCalendar, load: Load) -> list[str]:
    """Why an option cannot be booked: closed or full infusion day, a blackout, no bed on a day."""
    problems: list[str] = []
    if not calendar.is_open(option.infusion_on):
        problems.append(f"{option.infusion_on} is not a working day at the site")
    if load.infusions.get(option.infusion_on, 0) >= calendar.infusions_per_day:
        problems.append(f"no infusion capacity left on {option.infusion_on}")
    for day in option.admission_days():
        if day in calendar.blackout_dates:
            problems.append(f"{day} is a blackout date")
        if load.admissions.get(day, 0) >= calendar.admissions_capacity:
            problems.append(f"no admission bed left on {day}")
    return problems


def feasible_options(
    *,
    eta_at: datetime,
    calendar: SiteCalendar,
    conditioning_days: int,
    receipt_buffer_hours: float,
    load: Load,
    count: int = 3,
    horizon_days: int = 90,
) -> list[SlotOption]:
    """The earliest `count` options: conditioning starts after the product is on site plus the receipt
    buffer, infusion (day 0) on an open working day with capacity, beds on every day, no blackout."""
    first = earliest_conditioning_day(eta_at, receipt_buffer_hours, calendar.timezone)
    options: list[SlotOption] = []
    for offset in range(horizon_days):
        start = first + timedelta(days=offset)
        option = SlotOption(
            conditioning_start_on=start, infusion_on=start + timedelta(days=conditioning_days)
        )
        if not option_problems(option, calendar, load):
            options.append(option)
            if len(options) == count:
                break
    return options


def booking_problems(
    option: SlotOption,
    *,
    eta_at: datetime | None,
    receipt_buffer_hours: float,
    calendar: SiteCalendar,
    load: Load,
) -> list[str]:
    """Everything that forbids booking this option now (I4: never conditioning before the product)."""
    problems = option_problems(option, calendar, load)
    if eta_at is not None:
        earliest = earliest_conditioning_day(eta_at, receipt_buffer_hours, calendar.timezone)
        if option.conditioning_start_on < earliest:
            problems.insert(
                0, f"conditioning may not start before {earliest} (product ETA plus receipt buffer)"
            )
    return problems


def conditioning_started(conditioning_start_on: date, now: datetime, timezone: str) -> bool:
    return now.astimezone(ZoneInfo(timezone)).date() >= conditioning_start_on


# ---------------------------------------------------------------- long-term follow-up


@dataclass(frozen=True)
class Visit:
    number: int
    due_on: date
    window_start: date
    window_end: date


FOLLOW_UP_MONTHS = (1, 3, 6, 12, 18, 24)
"""Visits in the first two years; then yearly to year 15 (integrating vectors carry 15 years of follow-up)."""


def follow_up_schedule(infused_on: date, years: int = 15) -> list[Visit]:
    months = [*FOLLOW_UP_MONTHS, *range(36, years * 12 + 1, 12)]
    visits = []
    for number, month in enumerate(months, start=1):
        due = _add_months(infused_on, month)
        slack = timedelta(days=7 if month <= 3 else 14 if month <= 24 else 30)
        visits.append(Visit(number, due, due - slack, due + slack))
    return visits


def _add_months(day: date, months: int) -> date:
    year, month = divmod(day.month - 1 + months, 12)
    target_year, target_month = day.year + year, month + 1
    for candidate_day in (day.day, 28):
        try:
            return date(target_year, target_month, candidate_day)
        except ValueError:
            continue
    raise ValueError(day)


def retry_delay_seconds(attempt: int, base_seconds: float, cap_seconds: float = 3600.0) -> float:
    """Exponential backoff: base, 2 * base, 4 * base, ... capped."""
    return float(min(base_seconds * 2 ** (attempt - 1), cap_seconds))
