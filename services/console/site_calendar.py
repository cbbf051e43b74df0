"""Pure helper of the Sites page: a site's availability (scheduling's `GET /sites/{id}/availability`) laid
out as a month-style grid, Monday to Sunday, each day saying in words whether it is open, closed (not a
working day, or a blackout) or full."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

WEEKS = 4
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def window(zone: ZoneInfo, now: datetime) -> tuple[date, date]:
    """The next four weeks from today in the site's zone: (from, to), both site-local days, inclusive."""
    today = now.astimezone(zone).date()
    return today, today + timedelta(days=WEEKS * 7 - 1)


@dataclass(frozen=True)
class Day:
    day: date
    status: str
    """open, full, not_working or blackout"""
    label: str
    """The status in words: what the cell says besides the numbers."""
    infusions_booked: int
    infusions_capacity: int
    admissions_booked: int
    admissions_capacity: int


def day_of(entry: Mapping[str, Any], site: Mapping[str, Any]) -> Day:
    day = date.fromisoformat(entry["day"])
    booked, capacity = int(entry["infusions_booked"]), int(entry["infusions_capacity"])
    if day.isoformat() in {str(d) for d in site.get("blackout_dates", [])}:
        status, label = "blackout", "Closed: blackout"
    elif not entry["open"]:
        status, label = (
            "not_working",
            "Closed: weekend" if day.isoweekday() >= 6 else "Closed: not a working day",
        )
    elif booked >= capacity:
        status, label = "full", "Full"
    else:
        status, label = "open", f"Open: {capacity - booked} free"
    return Day(
        day,
        status,
        label,
        booked,
        capacity,
        int(entry["admissions_booked"]),
        int(entry["admissions_capacity"]),
    )


@dataclass(frozen=True)
class Week:
    monday: date
    days: list[Day | None]


def weeks(availability: list[Mapping[str, Any]], site: Mapping[str, Any]) -> list[Week]:
    """The days as weeks of seven (Monday first); None for a day before the first or after the last."""
    days = [day_of(entry, site) for entry in availability]
    if not days:
        return []
    first = days[0].day - timedelta(days=days[0].day.weekday())
    by_day = {d.day: d for d in days}
    grid: list[Week] = []
    start = first
    while start <= days[-1].day:
        grid.append(Week(start, [by_day.get(start + timedelta(days=n)) for n in range(7)]))
        start += timedelta(days=7)
    return grid
