"""Scheduling rules without I/O: feasible options, appointment transitions, webhook signatures."""

from __future__ import annotations

from datetime import UTC, date, datetime

from services.scheduling.domain import (
    AppointmentState,
    SiteCalendar,
    can_move,
    earliest_conditioning_day,
    feasible_options,
    retry_delay_seconds,
    sign,
    verify_signature,
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
        booked_per_day={date(2026, 3, 9): 1},
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


def test_signatures_verify_and_detect_tampering() -> None:
    signature = sign("s3cret-s3cret-s3cret", 1_700_000_000, b'{"a":1}')
    assert verify_signature("s3cret-s3cret-s3cret", 1_700_000_000, b'{"a":1}', signature)
    assert not verify_signature("s3cret-s3cret-s3cret", 1_700_000_000, b'{"a":2}', signature)
    assert not verify_signature("s3cret-s3cret-s3cret", 1_700_000_001, b'{"a":1}', signature)


def test_backoff_doubles_and_is_capped() -> None:
    assert [retry_delay_seconds(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert retry_delay_seconds(30, 2.0, cap_seconds=60) == 60
