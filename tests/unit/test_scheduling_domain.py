"""Scheduling rules without I/O: feasible options, appointment transitions, what a threat to the product or
a new ETA does to an appointment, dates in the past, infusion, webhook backoff."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from cgt_contracts.events import SlotReasonCode

from services.scheduling.domain import (
    FHIR_APPOINTMENT_STATUS,
    FHIR_SLOT_STATUS,
    WITHDRAWN_BY_LOT_FAILURE,
    AppointmentState,
    EtaDecision,
    Load,
    PlanState,
    RiskCause,
    RiskResponse,
    RuleProblem,
    SiteCalendar,
    SlotOption,
    booking_problems,
    can_move,
    conditioning_may_have_started,
    coordinator_reason_problem,
    earliest_conditioning_day,
    eta_refusal,
    feasible_options,
    follow_up_schedule,
    infusion_problems,
    on_eta_changed,
    on_product_at_risk,
    reason_code_of,
    reschedule_problems,
    retry_delay_seconds,
    start_in_the_past,
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


# ---------------------------------------------------------------- a threat to the product (I4)

TENTATIVE, ON_HOLD, CONFIRMED = (
    AppointmentState.TENTATIVE,
    AppointmentState.ON_HOLD,
    AppointmentState.CONFIRMED,
)
HOLDING = [RiskCause.QUARANTINE, RiskCause.TEMPERATURE_EXCURSION, RiskCause.COI_BREAK]
ENDING = [RiskCause.QA_REJECTION, RiskCause.ORDER_CANCELLED, RiskCause.MANUFACTURING_FAILURE]


@pytest.mark.parametrize("cause", HOLDING)
def test_a_quarantine_holds_a_tentative_appointment_and_holds_and_alerts_a_confirmed_one(
    cause: RiskCause,
) -> None:
    assert on_product_at_risk(TENTATIVE, False, cause) == RiskResponse(ON_HOLD, alert=False)
    assert on_product_at_risk(CONFIRMED, False, cause) == RiskResponse(ON_HOLD, alert=True)
    assert on_product_at_risk(ON_HOLD, False, cause) == RiskResponse(None, alert=False), "held once"


@pytest.mark.parametrize("cause", ENDING)
def test_a_rejection_cancelled_order_or_failed_lot_cancels_and_alerts_when_confirmed(
    cause: RiskCause,
) -> None:
    cancelled = AppointmentState.CANCELLED
    assert on_product_at_risk(TENTATIVE, False, cause) == RiskResponse(cancelled, alert=False)
    assert on_product_at_risk(ON_HOLD, False, cause) == RiskResponse(cancelled, alert=False)
    assert on_product_at_risk(CONFIRMED, False, cause) == RiskResponse(cancelled, alert=True)


@pytest.mark.parametrize("cause", HOLDING + ENDING)
@pytest.mark.parametrize("state", [TENTATIVE, ON_HOLD, CONFIRMED])
def test_once_conditioning_may_have_started_a_threat_is_an_alert_never_a_silent_move(
    state: AppointmentState, cause: RiskCause
) -> None:
    assert on_product_at_risk(state, True, cause) == RiskResponse(None, alert=True)


def test_a_finished_appointment_is_left_alone() -> None:
    for state in (AppointmentState.CANCELLED, AppointmentState.INFUSED):
        assert on_product_at_risk(state, True, RiskCause.QUARANTINE) == RiskResponse(None, alert=False)


def test_a_confirmed_appointment_can_be_put_on_hold() -> None:
    assert can_move(CONFIRMED, ON_HOLD) and can_move(ON_HOLD, CONFIRMED)


def test_conditioning_may_have_started_from_its_first_day_at_the_site() -> None:
    start = date(2026, 3, 4)
    # 03:00 UTC on 3/4 is still 3/3 in Denver: not started there, started in Paris.
    now = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)
    assert not conditioning_may_have_started(start, now, "America/Denver")
    assert conditioning_may_have_started(start, now, "Europe/Paris")


def test_a_held_appointment_reads_differently_from_a_tentative_one_in_fhir() -> None:
    assert FHIR_SLOT_STATUS[TENTATIVE] == "busy-tentative" and FHIR_SLOT_STATUS[ON_HOLD] == "busy-unavailable"
    assert FHIR_SLOT_STATUS[CONFIRMED] == "busy"
    assert FHIR_APPOINTMENT_STATUS[ON_HOLD] == "pending"  # told apart by the hold extension (fhir.py)


# ---------------------------------------------------------------- nothing in the past, nothing out of order

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday
EVERY_DAY = SiteCalendar("UTC", 1, frozenset(range(1, 8)), frozenset())


def test_an_eta_that_has_passed_is_refused_with_the_reason() -> None:
    refusal = eta_refusal(NOW - timedelta(minutes=1), NOW)
    assert refusal is not None and "has already passed" in refusal
    assert eta_refusal(NOW + timedelta(minutes=1), NOW) is None


def test_an_option_starting_conditioning_before_today_at_the_site_is_in_the_past() -> None:
    yesterday = SlotOption(date(2026, 3, 1), date(2026, 3, 5))
    refusal = start_in_the_past(yesterday, NOW, "UTC")
    assert refusal is not None and "before today (2026-03-02)" in refusal
    assert start_in_the_past(SlotOption(date(2026, 3, 2), date(2026, 3, 6)), NOW, "UTC") is None
    # Early on 3/2 UTC it is still 3/1 in Los Angeles: 3/1 is today there, not the past.
    early = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
    assert start_in_the_past(yesterday, early, "America/Los_Angeles") is None


def test_a_product_on_its_way_without_a_known_eta_cannot_be_booked() -> None:
    option = SlotOption(date(2026, 3, 9), date(2026, 3, 13))
    empty = Load.of([])
    refused = booking_problems(
        option, eta_at=None, dispatched=True, receipt_buffer_hours=0, calendar=EVERY_DAY, load=empty
    )
    assert refused == ["the product is on its way but its ETA is not known: ask the courier for one"]
    assert booking_problems(option, eta_at=None, receipt_buffer_hours=0, calendar=EVERY_DAY, load=empty) == []


def eta_decision(state: AppointmentState, booked: SlotOption, eta: datetime) -> EtaDecision:
    return on_eta_changed(
        state=state,
        booked=booked,
        eta_at=eta,
        now=NOW,
        calendar=EVERY_DAY,
        conditioning_days=4,
        receipt_buffer_hours=24,
        load=Load.of([]),
    )


def test_a_new_eta_that_still_leaves_time_changes_nothing() -> None:
    booked = SlotOption(date(2026, 3, 10), date(2026, 3, 14))
    assert eta_decision(TENTATIVE, booked, datetime(2026, 3, 8, 12, 0, tzinfo=UTC)) == EtaDecision()


def test_a_delay_moves_a_tentative_or_held_appointment_to_the_next_feasible_option() -> None:
    booked = SlotOption(date(2026, 3, 5), date(2026, 3, 9))
    for state in (TENTATIVE, ON_HOLD):
        decision = eta_decision(state, booked, datetime(2026, 3, 8, 12, 0, tzinfo=UTC))
        assert decision.move_to == SlotOption(date(2026, 3, 10), date(2026, 3, 14))


def test_a_delay_alerts_for_a_confirmed_appointment_for_started_conditioning_or_when_nothing_fits() -> None:
    late_eta = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    confirmed = eta_decision(CONFIRMED, SlotOption(date(2026, 3, 5), date(2026, 3, 9)), late_eta)
    assert confirmed.move_to is None and confirmed.alert is not None
    assert "confirmed appointment" in confirmed.alert
    started = eta_decision(TENTATIVE, SlotOption(date(2026, 3, 2), date(2026, 3, 6)), late_eta)
    assert started.move_to is None and started.alert is not None
    assert "conditioning may have started on 2026-03-02" in started.alert
    full = SiteCalendar("UTC", 0, frozenset(range(1, 8)), frozenset())
    nothing = on_eta_changed(
        state=TENTATIVE,
        booked=SlotOption(date(2026, 3, 5), date(2026, 3, 9)),
        eta_at=late_eta,
        now=NOW,
        calendar=full,
        conditioning_days=4,
        receipt_buffer_hours=24,
        load=Load.of([]),
    )
    assert nothing.move_to is None and nothing.alert is not None and "no feasible option" in nothing.alert


def test_only_a_tentative_or_held_appointment_moves_and_to_other_days() -> None:
    here, there = (
        SlotOption(date(2026, 3, 5), date(2026, 3, 9)),
        SlotOption(date(2026, 3, 6), date(2026, 3, 10)),
    )
    assert (
        reschedule_problems(TENTATIVE, here, there) == [] and reschedule_problems(ON_HOLD, here, there) == []
    )
    assert reschedule_problems(CONFIRMED, here, there) == ["an appointment that is confirmed cannot be moved"]
    assert reschedule_problems(TENTATIVE, here, here) == ["the appointment is already on these days"]


def infusion(
    *,
    state: AppointmentState = CONFIRMED,
    infused_on: date = date(2026, 3, 2),
    received: datetime | None = datetime(2026, 2, 24, 9, 0, tzinfo=UTC),
    quarantined: bool = False,
) -> list[RuleProblem]:
    return infusion_problems(
        state=state,
        conditioning_start_on=date(2026, 2, 26),
        product_received_at=received,
        product_quarantined=quarantined,
        infused_on=infused_on,
        now=NOW,
        timezone="UTC",
    )


def test_an_infusion_is_recorded_for_a_confirmed_appointment_with_its_product_on_a_day_that_fits() -> None:
    assert infusion() == []
    assert infusion(infused_on=date(2026, 2, 26)) == [], "on the first day of conditioning is allowed"


def test_an_infusion_needs_a_confirmed_appointment_and_the_product_received_out_of_quarantine() -> None:
    assert infusion(state=TENTATIVE) == [
        RuleProblem("only a confirmed appointment is infused; this one is tentative")
    ]
    assert infusion(received=None) == [RuleProblem("the product has not been received")]
    assert infusion(quarantined=True) == [RuleProblem("the product is in quarantine")]


def test_an_infusion_day_in_the_future_or_before_conditioning_or_receipt_is_refused_naming_the_field() -> (
    None
):
    future = infusion(infused_on=date(2026, 3, 3))
    assert [p.field for p in future] == ["infused_on"] and "in the future" in future[0].detail
    before = infusion(infused_on=date(2026, 2, 25))
    assert [p.field for p in before] == ["infused_on"] and "before conditioning started" in before[0].detail
    late_receipt = infusion(infused_on=date(2026, 2, 27), received=datetime(2026, 2, 28, 9, 0, tzinfo=UTC))
    assert [p.field for p in late_receipt] == ["infused_on"]
    assert "before the product was received" in late_receipt[0].detail


def test_a_failed_lot_releases_its_appointment_with_a_code_of_the_systems_own() -> None:
    code = reason_code_of(RiskCause.MANUFACTURING_FAILURE)
    assert code is SlotReasonCode.MANUFACTURING_FAILURE
    assert coordinator_reason_problem(code) is not None, "a coordinator cannot claim a failed lot"


def test_a_failed_lot_withdraws_the_cases_offered_and_booked_plans() -> None:
    assert {PlanState.OFFERED, PlanState.BOOKED} == WITHDRAWN_BY_LOT_FAILURE
