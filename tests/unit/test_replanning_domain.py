"""Re-planning a booked plan when a leg slips, without I/O: a postponed collection re-plans every later leg
within capacity or is refused with the reasons; a delayed release moves the return and the infusion, or
alerts (never a silent move) once conditioning may have started or the appointment is confirmed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.scheduling.domain import (
    AppointmentState,
    LegsDone,
    Load,
    Plan,
    Replan,
    delayed_release_at,
    postponement_problems,
    replan_after_postponement,
    replan_after_release_delay,
)
from tests.unit.test_planning_domain import EMPTY, MILAN, MONDAY, NETWORK, first

BEFORE = datetime(2026, 2, 20, 12, 0, tzinfo=UTC)
"""Long before the plan's conditioning: nothing may have started."""
TENTATIVE = AppointmentState.TENTATIVE


def postponed(plan: Plan, days: int, **kw: object) -> Replan | list[str]:
    arguments: dict[str, object] = {"state": TENTATIVE, "network": NETWORK, "load": EMPTY, "now": BEFORE}
    arguments.update(kw)
    return replan_after_postponement(plan, plan.collection_on + timedelta(days=days), **arguments)  # type: ignore[arg-type]


def test_a_postponed_collection_re_plans_every_later_leg() -> None:
    plan = first()
    decision = postponed(plan, 7)
    assert isinstance(decision, Replan)
    moved = decision.plan
    assert moved.collection_on == MONDAY + timedelta(days=7)
    assert moved.manufacturing_week == plan.manufacturing_week.next()
    assert moved.release_on == plan.release_on + timedelta(days=7)
    # an hour off across the DST change: instants are UTC, days are each site's
    assert abs(moved.eta_at - plan.eta_at - timedelta(days=7)) <= timedelta(hours=1)
    assert moved.infusion.infusion_on == plan.infusion.infusion_on + timedelta(days=7)
    assert decision.infusion_moved and decision.alert is None


def test_a_postponement_is_refused_when_the_new_days_capacity_is_gone() -> None:
    plan = first()
    taken = replace(EMPTY, collections={MONDAY + timedelta(days=7): 1})
    assert postponed(plan, 7, load=taken) == [f"no apheresis chair left on {MONDAY + timedelta(days=7)}"]
    full = replace(EMPTY, manufacturing={("MFG-MILAN", plan.manufacturing_week.next()): 2})
    refused = postponed(plan, 7, load=full)  # fresh material cannot wait a week for the next slot
    assert refused == [f"no manufacturing slot and infusion fit a collection on {MONDAY + timedelta(days=7)}"]


def test_an_infusion_leg_that_may_not_move_refuses_the_postponement() -> None:
    plan = first()
    started = datetime.combine(
        plan.infusion.conditioning_start_on, datetime.min.time(), tzinfo=UTC
    ) + timedelta(hours=12)
    refused = postponed(plan, 7, now=started)
    assert isinstance(refused, list) and "conditioning may have started" in refused[0]
    refused = postponed(plan, 7, state=AppointmentState.CONFIRMED)
    assert refused == ["the infusion appointment is confirmed: it is not moved"]


def test_only_a_collection_not_yet_recorded_is_postponed_and_only_later_and_ahead() -> None:
    plan = first()
    later = plan.collection_on + timedelta(days=7)
    assert postponement_problems(plan, LegsDone(), later, MONDAY) == []
    [done] = postponement_problems(plan, LegsDone(collection_done_at=BEFORE), later, MONDAY)
    assert done.field is None and "recorded" in done.detail
    [same] = postponement_problems(plan, LegsDone(), plan.collection_on, MONDAY)
    assert same.field == "collection_on"
    [behind] = postponement_problems(plan, LegsDone(), later, later + timedelta(days=1))
    assert behind.field == "collection_on"


def test_a_delayed_release_keeps_the_local_time_and_only_a_later_day_is_a_slip() -> None:
    plan = first()
    later = delayed_release_at(plan, plan.release_on + timedelta(days=10), MILAN)
    assert later == plan.released_at + timedelta(days=10)
    assert delayed_release_at(plan, plan.release_on, MILAN) is None
    assert delayed_release_at(plan, plan.release_on - timedelta(days=3), MILAN) is None


def test_a_delayed_release_moves_the_return_and_the_infusion_within_capacity() -> None:
    plan = first()
    released = plan.released_at + timedelta(days=10)
    decision = replan_after_release_delay(
        plan, released, state=TENTATIVE, network=NETWORK, site=MILAN, now=BEFORE, load=Load({}, {})
    )
    assert decision.plan.released_at == released
    assert decision.plan.eta_at == released + timedelta(hours=48)
    assert decision.plan.collection_on == plan.collection_on, "the earlier legs stay"
    assert decision.plan.infusion.infusion_on == plan.infusion.infusion_on + timedelta(days=10)
    assert decision.infusion_moved and decision.alert is None
    full = Load({plan.infusion.infusion_on + timedelta(days=10): 2}, {})
    crowded = replan_after_release_delay(
        plan, released, state=TENTATIVE, network=NETWORK, site=MILAN, now=BEFORE, load=full
    )
    assert crowded.plan.infusion.infusion_on == plan.infusion.infusion_on + timedelta(days=11)


def test_a_delayed_release_never_moves_a_confirmed_or_started_infusion_silently() -> None:
    plan = first()
    released = plan.released_at + timedelta(days=10)
    started = datetime.combine(
        plan.infusion.conditioning_start_on, datetime.min.time(), tzinfo=UTC
    ) + timedelta(hours=12)
    for state, now, words in (
        (AppointmentState.CONFIRMED, BEFORE, "confirmed appointment"),
        (TENTATIVE, started, "conditioning may have started"),
    ):
        decision = replan_after_release_delay(
            plan, released, state=state, network=NETWORK, site=MILAN, now=now, load=Load({}, {})
        )
        assert decision.alert is not None and words in decision.alert
        assert not decision.infusion_moved and decision.plan.infusion == plan.infusion
        assert decision.plan.eta_at == released + timedelta(hours=48), "the later legs still follow"


def test_a_small_delay_that_leaves_time_before_conditioning_moves_nothing_but_the_release() -> None:
    plan = first()
    released = plan.released_at + timedelta(hours=1)
    decision = replan_after_release_delay(
        plan, released, state=TENTATIVE, network=NETWORK, site=MILAN, now=BEFORE, load=Load({}, {})
    )
    assert decision.plan.infusion == plan.infusion and not decision.infusion_moved
    assert decision.plan.released_at == released and decision.alert is None
