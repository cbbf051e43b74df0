"""The chain's permissions checked again (issue 18): `domain.chain_lapses` at each date boundary, and
order intake's rule for recording a renewed payer authorization."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.order_intake import domain as intake
from services.order_intake.domain import OrderStatus
from services.scheduling.domain import ChainFacts, RiskCause, SlotOption, chain_lapses, lapse_attention

START = date(2027, 3, 1)
INFUSION = date(2027, 3, 5)  # four days of conditioning, day 0 on the fifth
OPTION = SlotOption(START, INFUSION)
DAY = timedelta(days=1)


def causes(facts: ChainFacts, option: SlotOption = OPTION) -> list[RiskCause]:
    return [lapse.cause for lapse in chain_lapses(facts, option)]


def qualified(*windows: tuple[date, date | None]) -> ChainFacts:
    return ChainFacts(site_qualifications=windows, payer_authorization_expires_on=None)


def authorized(expires_on: date) -> ChainFacts:
    return ChainFacts(site_qualifications=None, payer_authorization_expires_on=expires_on)


def test_unknown_facts_never_lapse() -> None:
    """A case opened by order.accepted.v1 knows neither fact: it is not judged on them."""
    assert chain_lapses(ChainFacts(None, None), OPTION) == []


@pytest.mark.parametrize(
    ("window", "lapsed"),
    [
        ((START, INFUSION), False),  # exactly the appointment's days, both ends included
        ((START, None), False),  # open-ended
        ((START - 30 * DAY, INFUSION + 30 * DAY), False),
        ((START + DAY, INFUSION), True),  # effective a day after conditioning starts
        ((START, INFUSION - DAY), True),  # expires the day before day 0
        ((START - 30 * DAY, START), True),  # expires on the first day of conditioning
        ((INFUSION + DAY, None), True),  # effective only after the infusion
    ],
)
def test_the_site_must_be_qualified_on_every_day_from_conditioning_through_day_0(
    window: tuple[date, date | None], lapsed: bool
) -> None:
    assert causes(qualified(window)) == ([RiskCause.SITE_QUALIFICATION_LAPSED] if lapsed else [])


def test_windows_together_may_cover_the_days_but_a_gap_day_lapses() -> None:
    assert causes(qualified((START, START + 2 * DAY), (START + 3 * DAY, None))) == []
    gap = qualified((START, START + DAY), (START + 3 * DAY, None))  # START + 2 days uncovered
    [lapse] = chain_lapses(gap, OPTION)
    assert lapse.cause is RiskCause.SITE_QUALIFICATION_LAPSED
    assert str(START + 2 * DAY) in lapse.detail and lapse.detail.startswith("site_qualification_lapsed")


def test_a_withdrawn_qualification_lapses() -> None:
    assert causes(qualified()) == [RiskCause.SITE_QUALIFICATION_LAPSED]


@pytest.mark.parametrize(
    ("expires_on", "lapsed"),
    [(INFUSION, False), (INFUSION + DAY, False), (INFUSION - DAY, True), (START, True)],
)
def test_the_payer_authorization_must_cover_the_infusion_day(expires_on: date, lapsed: bool) -> None:
    assert causes(authorized(expires_on)) == ([RiskCause.PAYER_AUTHORIZATION_LAPSED] if lapsed else [])


def test_both_lapses_are_named_qualification_first_and_the_worklist_says_who_acts() -> None:
    facts = ChainFacts(site_qualifications=((START, START),), payer_authorization_expires_on=START)
    lapses = chain_lapses(facts, OPTION)
    assert [lapse.cause for lapse in lapses] == [
        RiskCause.SITE_QUALIFICATION_LAPSED,
        RiskCause.PAYER_AUTHORIZATION_LAPSED,
    ]
    attention = lapse_attention(lapses)
    assert "payer_authorization_lapsed" in attention and "order intake" in attention


TODAY = date(2027, 2, 1)


@pytest.mark.parametrize(
    "status",
    [OrderStatus.ACCEPTED, OrderStatus.IN_MANUFACTURING, OrderStatus.PRODUCT_DELIVERED],
)
def test_a_renewal_is_recorded_while_the_chain_runs(status: OrderStatus) -> None:
    assert intake.payer_authorization_renewal_refusal(status, TODAY, TODAY) is None


@pytest.mark.parametrize(
    "status",
    [OrderStatus.SUBMITTED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.INFUSED],
)
def test_no_renewal_for_an_order_whose_chain_does_not_run(status: OrderStatus) -> None:
    refusal = intake.payer_authorization_renewal_refusal(status, TODAY + DAY, TODAY)
    assert refusal is not None and refusal.field is None


def test_a_renewal_ending_before_today_names_expires_on() -> None:
    refusal = intake.payer_authorization_renewal_refusal(OrderStatus.ACCEPTED, TODAY - DAY, TODAY)
    assert refusal is not None and refusal.field == "expires_on"
    assert "2027-01-31" not in refusal.detail  # the value sent is not echoed
