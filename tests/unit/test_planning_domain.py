"""Vein-to-vein plans without I/O: each leg in its own site's calendar and time zone — apheresis chairs,
working days and blackouts at the collection center, manufacturing slots per ISO week and blackout weeks,
the starting material's transit and age limits, the expected release and return, and the infusion leg."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.scheduling.domain import (
    CollectionCalendar,
    IsoWeek,
    Load,
    ManufacturingCalendar,
    ManufacturingProtocol,
    Network,
    Plan,
    PlanLoad,
    SiteCalendar,
    SlotOption,
    StartingMaterial,
    collection_calendar_conflicts,
    earliest_plans,
    manufacturing_calendar_conflicts,
    plan_problems,
)

MONDAY = date(2026, 3, 2)  # ISO week 2026-W10
W10, W11, W12 = IsoWeek(2026, 10), IsoWeek(2026, 11), IsoWeek(2026, 12)
WEEKDAYS = frozenset({1, 2, 3, 4, 5})
EVERY_DAY = frozenset(range(1, 8))
MILAN = ManufacturingCalendar("MFG-MILAN", "Europe/Rome", slots_per_week=2, blackout_weeks=frozenset())
FRESH = ManufacturingProtocol(
    manufacturing_days=45,
    starting_material=StartingMaterial.FRESH,
    outbound_transit_hours=36,
    max_fresh_transit_hours=72,
    max_cryopreserved_age_days=180,
    return_transit_hours=48,
)
CRYO = replace(FRESH, starting_material=StartingMaterial.CRYOPRESERVED, max_cryopreserved_age_days=10)
NETWORK = Network(
    collection=CollectionCalendar("America/New_York", 1, WEEKDAYS, frozenset()),
    manufacturing=(MILAN,),
    infusion=SiteCalendar("America/New_York", 2, EVERY_DAY, frozenset(), admissions_capacity=4),
    protocol=FRESH,
    conditioning_days=4,
    receipt_buffer_hours=24,
)
EMPTY = PlanLoad(collections={}, manufacturing={}, infusions=Load({}, {}))


def plans(
    network: Network = NETWORK, load: PlanLoad = EMPTY, start: date = MONDAY, count: int = 3
) -> list[Plan]:
    return earliest_plans(network=network, load=load, earliest_collection_on=start, count=count)


def first(network: Network = NETWORK, load: PlanLoad = EMPTY, start: date = MONDAY) -> Plan:
    found = plans(network, load, start, count=1)
    assert found, "no plan"
    return found[0]


def manufacturing(*taken: tuple[IsoWeek, int], site: str = "MFG-MILAN") -> PlanLoad:
    return replace(EMPTY, manufacturing={(site, week): n for week, n in taken})


# ---------------------------------------------------------------- the chain


def test_a_plan_chains_collection_manufacturing_release_return_and_infusion() -> None:
    plan = first()
    assert plan.collection_on == MONDAY
    assert plan.collected_at == datetime(2026, 3, 2, 21, 0, tzinfo=UTC)  # 16:00 in Boston
    # 36 h of transit: Wednesday 10:00 in Milan; fresh material is manufactured as it arrives
    assert plan.manufacturing_start_at == datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    assert (plan.manufacturing_week, plan.manufacturing_start_on) == (W10, date(2026, 3, 4))
    assert plan.released_at == plan.collected_at + timedelta(days=45)  # vein to release
    assert plan.release_on == date(2026, 4, 16)
    assert plan.eta_at == plan.released_at + timedelta(hours=48)
    # delivered Sat 4/18 17:00 in Boston (EDT), + 24 h receipt buffer: conditioning from Monday 4/20
    assert plan.infusion == SlotOption(date(2026, 4, 20), date(2026, 4, 24))


def test_the_earliest_few_plans_are_one_per_collection_day_in_order() -> None:
    found = plans(count=4)
    assert [p.collection_on for p in found] == [date(2026, 3, d) for d in (2, 3, 4, 5)]
    assert [p.infusion.infusion_on for p in found] == sorted(p.infusion.infusion_on for p in found)


# ---------------------------------------------------------------- collection center


def test_collection_skips_days_that_are_not_working_days() -> None:
    saturday = date(2026, 3, 7)
    assert first(start=saturday).collection_on == date(2026, 3, 9)  # Monday
    everyday = replace(NETWORK, collection=replace(NETWORK.collection, working_weekdays=EVERY_DAY))
    assert first(everyday, start=saturday).collection_on == saturday


def test_collection_skips_blackout_dates() -> None:
    closed = replace(NETWORK, collection=replace(NETWORK.collection, blackout_dates=frozenset({MONDAY})))
    assert first(closed).collection_on == date(2026, 3, 3)


def test_collection_skips_days_whose_apheresis_chairs_are_taken() -> None:
    busy = replace(EMPTY, collections={MONDAY: 1, date(2026, 3, 3): 1})
    assert first(load=busy).collection_on == date(2026, 3, 4)
    roomier = replace(NETWORK, collection=replace(NETWORK.collection, chairs_per_day=2))
    assert first(roomier, busy).collection_on == MONDAY


# ---------------------------------------------------------------- manufacturing site


def test_fresh_material_waits_for_the_next_week_only_within_its_hours() -> None:
    found = plans(load=manufacturing((W10, 2)))  # W10 full at Milan
    # Thursday 3/5's material (16:00 in Boston, 21:00 UTC) arrives Saturday 3/7 and would wait until Monday
    # 3/9 00:00 in Milan (W11): 74 h after collection, more than 72. Friday 3/6's waits 50 h: the first.
    assert found[0].collection_on == date(2026, 3, 6)
    assert found[0].manufacturing_week == W11
    assert found[0].manufacturing_start_at == datetime(2026, 3, 8, 23, 0, tzinfo=UTC)
    patient = replace(NETWORK, protocol=replace(FRESH, max_fresh_transit_hours=80))
    assert first(patient, manufacturing((W10, 2))).collection_on == date(2026, 3, 5)


def test_cryopreserved_material_waits_for_the_next_week_with_a_slot() -> None:
    cryo = replace(NETWORK, protocol=CRYO)
    plan = first(cryo, manufacturing((W10, 2)))
    assert (plan.collection_on, plan.manufacturing_week) == (MONDAY, W11)
    assert plan.manufacturing_start_on == date(2026, 3, 9)  # Monday of W11 in Milan
    # the wait for the slot adds to vein to release
    assert plan.released_at == datetime(2026, 3, 8, 23, 0, tzinfo=UTC) + timedelta(days=45, hours=-36)


def test_a_blackout_week_is_no_slot() -> None:
    cryo = replace(NETWORK, protocol=CRYO, manufacturing=(replace(MILAN, blackout_weeks=frozenset({W10})),))
    assert first(cryo).manufacturing_week == W11


def test_cryopreserved_material_older_than_its_limit_is_not_manufactured() -> None:
    cryo = replace(NETWORK, protocol=CRYO)  # at most 10 days from collection to manufacturing start
    plan = first(cryo, manufacturing((W10, 2), (W11, 2)))
    # Monday 3/2's material would start on Monday 3/16 (W12), 14 days old: the first collection whose
    # material is at most 10 days old on 3/16 is Friday 3/6 (9 days and a bit)
    assert plan.collection_on == date(2026, 3, 6)
    assert plan.manufacturing_week == W12
    older = replace(cryo, protocol=replace(CRYO, max_cryopreserved_age_days=30))
    assert first(older, manufacturing((W10, 2), (W11, 2))).collection_on == MONDAY


def test_fresh_material_whose_transit_exceeds_its_limit_has_no_plan() -> None:
    slow = replace(NETWORK, protocol=replace(FRESH, outbound_transit_hours=80))
    assert plans(slow) == []
    assert plans(replace(slow, protocol=replace(slow.protocol, max_fresh_transit_hours=96)))


def test_the_manufacturing_week_is_the_sites_own() -> None:
    # Sunday 16:00 in Boston + 5 h = Sunday 21:00 in Boston, already Monday 03:00 in Milan: next ISO week
    sunday = date(2026, 3, 8)
    network = replace(
        NETWORK,
        collection=replace(NETWORK.collection, working_weekdays=EVERY_DAY),
        protocol=replace(FRESH, outbound_transit_hours=5),
    )
    plan = first(network, start=sunday)
    assert plan.manufacturing_week == W11 and plan.manufacturing_start_on == date(2026, 3, 9)
    # and a full W11 refuses that Sunday although it is in W10 in Boston
    assert first(network, manufacturing((W11, 2)), start=sunday).collection_on != sunday


def test_the_site_with_the_earliest_infusion_is_chosen() -> None:
    dublin = ManufacturingCalendar("MFG-DUBLIN", "Europe/Dublin", 1, frozenset())
    both = replace(NETWORK, protocol=CRYO, manufacturing=(MILAN, dublin))
    plan = first(both, manufacturing((W10, 2)))  # Milan full in W10, Dublin free
    assert (plan.manufacturing_site_id, plan.manufacturing_week) == ("MFG-DUBLIN", W10)


# ---------------------------------------------------------------- infusion leg


def test_the_infusion_leg_skips_full_days_at_the_treatment_center() -> None:
    plan = first()
    full = replace(EMPTY, infusions=Load({plan.infusion.infusion_on: 2}, {}))
    assert first(load=full).infusion.infusion_on == plan.infusion.infusion_on + timedelta(days=1)


def test_conditioning_never_starts_before_the_expected_delivery_plus_buffer_in_site_time() -> None:
    for plan in plans(count=5):
        local_eta = plan.eta_at.astimezone(ZoneInfo("America/New_York"))
        assert plan.infusion.conditioning_start_on > local_eta.date()


# ---------------------------------------------------------------- booking a plan


def test_a_plan_whose_manufacturing_slot_went_is_refused_first_with_every_reason() -> None:
    plan = first()
    gone = replace(
        manufacturing((W10, 2)),
        collections={MONDAY: 1},
        infusions=Load({plan.infusion.infusion_on: 2}, {}),
    )
    problems = plan_problems(plan, network=NETWORK, load=gone, earliest_collection_on=MONDAY)
    assert problems == [
        "no manufacturing slot left at MFG-MILAN in 2026-W10",
        f"no apheresis chair left on {MONDAY}",
        f"no infusion capacity left on {plan.infusion.infusion_on}",
    ]
    assert plan_problems(plan, network=NETWORK, load=EMPTY, earliest_collection_on=MONDAY) == []


def test_a_plan_is_refused_once_its_collection_day_has_come_or_its_limits_changed() -> None:
    plan = first()
    late = plan_problems(plan, network=NETWORK, load=EMPTY, earliest_collection_on=MONDAY + timedelta(days=1))
    assert late == ["the collection on 2026-03-02 is no longer ahead (first possible: 2026-03-03)"]
    stricter = replace(NETWORK, protocol=replace(FRESH, max_fresh_transit_hours=24))
    assert plan_problems(plan, network=stricter, load=EMPTY, earliest_collection_on=MONDAY) == [
        "fresh starting material takes 36 h to reach MFG-MILAN, more than its 24 h limit"
    ]


@pytest.mark.parametrize("text", ["2026-W10", "2020-W53"])
def test_iso_weeks_read_back_as_written(text: str) -> None:
    assert str(IsoWeek.parse(text)) == text
    with pytest.raises(ValueError):
        IsoWeek.parse("2027-W53")


def test_a_collection_calendar_that_closes_or_shrinks_a_booked_day_conflicts() -> None:
    calendar = CollectionCalendar("America/New_York", 1, WEEKDAYS, frozenset({MONDAY}))
    booked = {MONDAY: 1, MONDAY + timedelta(days=1): 2, MONDAY + timedelta(days=2): 1}
    assert collection_calendar_conflicts(calendar, booked) == [
        f"1 booked collection(s) on {MONDAY}, which the new calendar closes",
        f"2 booked collections on {MONDAY + timedelta(days=1)}, more than 1 chair(s)",
    ]
    saturday = MONDAY + timedelta(days=5)
    assert collection_calendar_conflicts(calendar, {saturday: 1}) == [
        f"1 booked collection(s) on {saturday}, which the new calendar closes"
    ]
    assert collection_calendar_conflicts(replace(calendar, blackout_dates=frozenset()), {MONDAY: 1}) == []


def test_a_manufacturing_calendar_that_blacks_out_or_shrinks_a_booked_week_conflicts() -> None:
    booked = {("WASKYRA", W10): 2, ("WASKYRA", W11): 1, ("OTHER", W12): 1}
    assert manufacturing_calendar_conflicts(frozenset({W11}), {"WASKYRA": 1}, booked) == [
        "2 booked WASKYRA slot(s) in 2026-W10, more than 1",
        "1 booked WASKYRA slot(s) in 2026-W11, which becomes a blackout week",
        "1 booked OTHER slot(s) in 2026-W12, more than 0",  # no longer made there
    ]
    assert manufacturing_calendar_conflicts(frozenset(), {"WASKYRA": 2, "OTHER": 1}, booked) == []
