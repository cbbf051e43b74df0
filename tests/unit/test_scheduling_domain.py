"""Scheduling rules without I/O: feasible options, appointment transitions, webhook backoff."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime

from services.scheduling.domain import (
    AppointmentState,
    Load,
    SiteCalendar,
    SlotOption,
    booking_problems,
    can_move,
    earliest_conditioning_day,
    feasible_options,
    follow_up_schedule,
    retry_delay_seconds,
)

WEEKDAYS = frozenset({1, 2, 3, 4, 5})


def test_conditioning_never_starts_before_eta_plus_receipt_buffer() -> None:
    eta = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in Boston
    assert earliest_conditioning_day(eta, 24, "America/New_York") == date(2026, 3, 4)
    midnight = datetime(2026, 3, 3, 5, 0, tzinfo=UTC)  # 00:00 in Boston
    assert earliest_conditioning_day(midnight, 0, "America/New_York") == date(2026, 3, 3)


def test_options_skip_closed_days_full_days_and_blackouts() -> None:
    calendar = SiteCalendar("America/New_York", 1, WEEKDAYS, frozenset({date(2026, 3, 10)}))
    options = feasible_options(
        eta_at=datetime(2026, 3, 2, 15, 0, tzinfo=UTC),
        calendar=calendar,
        conditioning_days=4,
        receipt_buffer_hours=24,
        load=Load(infusions={date(2026, 3, 9): 1}, admissions={}),
    )
    infusion_days = [o.infusion_on for o in options]
    # 3/4 + 4 = 3/8 (Sunday), 3/9 full, 3/10 blackout, 3/11 and 3/12 open, conditioning through 3/10 is blocked
    assert date(2026, 3, 8) not in infusion_days and date(2026, 3, 9) not in infusion_days
    assert all(o.infusion_on.isoweekday() in WEEKDAYS for o in options)
    for option in options:
        conditioning = [option.conditioning_start_on.toordinal() + d for d in range(4)]
        assert date(2026, 3, 10).toordinal() not in conditioning
    assert len(options) == 3


def test_a_confirmed_appointment_cannot_go_back_to_tentative() -> None:
    assert can_move(AppointmentState.TENTATIVE, AppointmentState.CONFIRMED)
    assert can_move(AppointmentState.ON_HOLD, AppointmentState.CONFIRMED)
    assert not can_move(AppointmentState.CONFIRMED, AppointmentState.TENTATIVE)
    assert not can_move(AppointmentState.CANCELLED, AppointmentState.CONFIRMED)


def test_backoff_doubles_and_is_capped() -> None:
    assert [retry_delay_seconds(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert retry_delay_seconds(30, 2.0, cap_seconds=60) == 60


def test_admission_beds_limit_overlapping_conditioning() -> None:
    calendar = SiteCalendar("UTC", 5, frozenset(range(1, 8)), frozenset(), admissions_capacity=1)
    taken = Load.of([SlotOption(date(2026, 3, 4), date(2026, 3, 8))])
    overlapping = SlotOption(date(2026, 3, 8), date(2026, 3, 12))
    problems = booking_problems(
        overlapping, eta_at=None, receipt_buffer_hours=0, calendar=calendar, load=taken
    )
    assert problems == ["no admission bed left on 2026-03-08"]
    assert (
        booking_problems(
            SlotOption(date(2026, 3, 9), date(2026, 3, 13)),
            eta_at=None,
            receipt_buffer_hours=0,
            calendar=calendar,
            load=taken,
        )
        == []
    )


def test_a_booking_may_not_start_conditioning_before_the_product_can_be_on_site() -> None:
    calendar = SiteCalendar("UTC", 5, frozenset(range(1, 8)), frozenset())
    eta = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    early = SlotOption(date(2026, 3, 11), date(2026, 3, 15))
    problems = booking_problems(
        early, eta_at=eta, receipt_buffer_hours=24, calendar=calendar, load=Load.of([])
    )
    assert problems and "may not start before 2026-03-12" in problems[0]


def test_the_follow_up_schedule_covers_fifteen_years_with_windows() -> None:
    visits = follow_up_schedule(date(2026, 1, 31))
    assert (
        visits[0].due_on == date(2026, 2, 28)
        and visits[0].window_start < visits[0].due_on < visits[0].window_end
    )
    assert visits[-1].due_on == date(2041, 1, 31)
    assert [v.number for v in visits] == list(range(1, len(visits) + 1))
    assert all(a.due_on < b.due_on for a, b in itertools.pairwise(visits))
