"""Order intake rules without I/O: the state machine and the acceptance checks."""

from __future__ import annotations

from datetime import date

import pytest

from services.order_intake.domain import (
    OrderFacts,
    OrderStatus,
    TransitionRefused,
    acceptance_failures,
    check_transition,
)


def facts(**overrides: object) -> OrderFacts:
    base: dict[str, object] = {
        "order_date": date(2026, 3, 1),
        "therapy_known": True,
        "site_known": True,
        "site_certified_from": date(2026, 1, 1),
        "site_certified_until": None,
        "prescriber_known": True,
        "prescriber_may_order_for_site": True,
        "has_active_order_for_patient_and_therapy": False,
    }
    base.update(overrides)
    return OrderFacts(**base)  # type: ignore[arg-type]


def test_a_valid_order_has_no_failures() -> None:
    assert acceptance_failures(facts()) == []


def test_every_failed_check_is_reported() -> None:
    codes = {
        f.code
        for f in acceptance_failures(
            facts(
                site_certified_until=date(2026, 2, 1),
                prescriber_may_order_for_site=False,
                has_active_order_for_patient_and_therapy=True,
            )
        )
    }
    assert codes == {"site_not_certified", "prescriber_not_at_site", "duplicate_active_order"}


def test_certification_not_yet_effective_is_refused() -> None:
    assert [f.code for f in acceptance_failures(facts(site_certified_from=None))] == ["site_not_certified"]


def test_the_order_moves_forward_and_never_back() -> None:
    check_transition(OrderStatus.ACCEPTED, OrderStatus.PRODUCT_SHIPPED)
    with pytest.raises(TransitionRefused):
        check_transition(OrderStatus.PRODUCT_DELIVERED, OrderStatus.PRODUCT_SHIPPED)


def test_cancellation_is_allowed_before_infusion_only() -> None:
    check_transition(OrderStatus.PRODUCT_DELIVERED, OrderStatus.CANCELLED)
    with pytest.raises(TransitionRefused):
        check_transition(OrderStatus.INFUSED, OrderStatus.CANCELLED)
    with pytest.raises(TransitionRefused):
        check_transition(OrderStatus.REJECTED, OrderStatus.CANCELLED)
