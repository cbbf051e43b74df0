"""Order intake rules without I/O: acceptance checks, NPI check digit, the order's state machine."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.order_intake.domain import (
    ACTIVE,
    EARLIEST_DATE_OF_BIRTH,
    LIFECYCLE,
    MAX_COLLECTIONS,
    RELEASE_CLOCK_TOLERANCE,
    WAYS,
    OrderFacts,
    OrderStatus,
    TransitionRefused,
    Way,
    acceptance_failures,
    allowed_transitions,
    check_transition,
    collection_refusal,
    date_of_birth_refusal,
    luhn_check_digit,
    manufacturing_failure_refusal,
    manufacturing_release_refusal,
    npi_is_valid,
    patient_match,
    status_after_collection,
    visible_to,
)

ORDER_DAY = date(2026, 3, 1)


def facts(**overrides: object) -> OrderFacts:
    base: dict[str, object] = {
        "order_date": ORDER_DAY,
        "therapy_known": True,
        "site_known": True,
        "certifications": ((date(2026, 1, 1), None),),
        "prescriber_npi": "1234567893",
        "prescriber_known": True,
        "prescriber_may_order_for_site": True,
        "consent_signed_on": date(2026, 2, 20),
        "consent_form_version": "ICF-2.1",
        "payer_authorization_expires_on": date(2026, 6, 1),
        "eligibility_attested": True,
    }
    base.update(overrides)
    return OrderFacts(**base)  # type: ignore[arg-type]


def codes(**overrides: object) -> set[str]:
    return {f.code for f in acceptance_failures(facts(**overrides))}


def test_a_complete_order_has_no_failures() -> None:
    assert acceptance_failures(facts()) == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"certifications": ()}, "site_not_certified"),
        ({"certifications": ((date(2025, 1, 1), date(2026, 2, 28)),)}, "site_not_certified"),
        ({"certifications": ((date(2026, 3, 2), None),)}, "site_not_certified"),
        ({"prescriber_npi": "1234567890"}, "prescriber_npi_invalid"),
        ({"prescriber_known": False}, "prescriber_unknown"),
        ({"prescriber_may_order_for_site": False}, "prescriber_not_at_site"),
        ({"consent_signed_on": None}, "consent_missing"),
        ({"consent_form_version": None}, "consent_missing"),
        ({"consent_signed_on": date(2026, 3, 2)}, "consent_after_order"),
        ({"payer_authorization_expires_on": None}, "payer_authorization_missing"),
        ({"payer_authorization_expires_on": date(2026, 2, 28)}, "payer_authorization_expired"),
        ({"eligibility_attested": False}, "eligibility_not_attested"),
        ({"therapy_known": False}, "therapy_unknown"),
        ({"site_known": False}, "site_unknown"),
    ],
)
def test_each_check_fails_on_its_own(overrides: dict[str, object], code: str) -> None:
    assert codes(**overrides) == {code}


def test_certification_boundaries_are_inclusive() -> None:
    assert codes(certifications=((ORDER_DAY, ORDER_DAY),)) == set()
    assert codes(payer_authorization_expires_on=ORDER_DAY) == set()


def test_every_failed_check_is_reported_together() -> None:
    assert codes(certifications=(), consent_signed_on=None, eligibility_attested=False) == {
        "site_not_certified",
        "consent_missing",
        "eligibility_not_attested",
    }


@pytest.mark.parametrize("npi", ["1234567893", "1245319599", "1003000126"])
def test_valid_npis(npi: str) -> None:
    assert npi_is_valid(npi)


@given(st.text(alphabet="0123456789", min_size=9, max_size=9), st.integers(0, 9))
def test_exactly_one_check_digit_is_valid(prefix: str, digit: int) -> None:
    assert npi_is_valid(prefix + str(digit)) == (digit == luhn_check_digit("80840" + prefix))


def test_the_order_moves_one_step_at_a_time() -> None:
    for current, following in itertools.pairwise(LIFECYCLE):
        for way in WAYS[following]:
            check_transition(current, following, way)
    with pytest.raises(TransitionRefused):
        check_transition(OrderStatus.ACCEPTED, OrderStatus.PRODUCT_SHIPPED, Way.SHIPMENT_EVENT)
    with pytest.raises(TransitionRefused):
        check_transition(OrderStatus.PRODUCT_DELIVERED, OrderStatus.PRODUCT_SHIPPED, Way.SHIPMENT_EVENT)
    assert allowed_transitions(OrderStatus.CLOSED) == frozenset()


def test_cancellation_is_allowed_before_infusion_only() -> None:
    for status in (OrderStatus.SUBMITTED, OrderStatus.ACCEPTED, OrderStatus.PRODUCT_DELIVERED):
        check_transition(status, OrderStatus.CANCELLED, Way.CANCELLATION)
    for status in (
        OrderStatus.INFUSED,
        OrderStatus.IN_FOLLOW_UP,
        OrderStatus.REJECTED,
        OrderStatus.CANCELLED,
    ):
        with pytest.raises(TransitionRefused):
            check_transition(status, OrderStatus.CANCELLED, Way.CANCELLATION)


@pytest.mark.parametrize(
    ("target", "way", "hint"),
    [
        (OrderStatus.PRODUCT_RELEASED, Way.STEP, "recorded with its lot"),
        (OrderStatus.CANCELLED, Way.STEP, "recorded with its reason"),
        (OrderStatus.PRODUCT_SHIPPED, Way.STEP, "set by the shipment's events"),
        (OrderStatus.PRODUCT_DELIVERED, Way.STEP, "set by the shipment's events"),
        (OrderStatus.ACCEPTED, Way.STEP, "decided by the checks"),
        (OrderStatus.CELLS_COLLECTED, Way.SHIPMENT_EVENT, "POST …/collections"),
        (OrderStatus.INFUSED, Way.CANCELLATION, "set by scheduling's infusion event"),
    ],
)
def test_a_step_taken_another_way_than_its_own_is_refused_naming_its_way(
    target: OrderStatus, way: Way, hint: str
) -> None:
    # The order is where the step would be next: only the way is wrong.
    current = next(s for s in OrderStatus if target in allowed_transitions(s))
    with pytest.raises(TransitionRefused, match="is not set this way") as refused:
        check_transition(current, target, way)
    assert hint in str(refused.value)


def test_every_status_but_the_first_has_a_way_to_reach_it() -> None:
    assert WAYS[OrderStatus.SUBMITTED] == frozenset()
    assert all(WAYS[status] for status in OrderStatus if status is not OrderStatus.SUBMITTED)


def test_collections_are_recorded_from_acceptance_until_manufacturing() -> None:
    assert collection_refusal(OrderStatus.ACCEPTED, has_coi=True) is None
    assert collection_refusal(OrderStatus.CELLS_COLLECTED, has_coi=True) is None
    assert collection_refusal(OrderStatus.ACCEPTED, has_coi=False) is not None
    collecting = {OrderStatus.ACCEPTED, OrderStatus.CELLS_COLLECTED, OrderStatus.MANUFACTURING_FAILED}
    for status in set(OrderStatus) - collecting:
        assert f"an order that is {status}" in (collection_refusal(status, has_coi=True) or "")
    assert status_after_collection(OrderStatus.ACCEPTED) is OrderStatus.CELLS_COLLECTED
    assert status_after_collection(OrderStatus.CELLS_COLLECTED) is None


def test_a_product_is_released_only_of_an_order_in_manufacturing_and_not_in_the_future() -> None:
    now = datetime(2026, 12, 1, 8, tzinfo=UTC)
    started = now - timedelta(days=10)
    assert manufacturing_release_refusal(OrderStatus.IN_MANUFACTURING, now, now, started) is None
    for status in set(OrderStatus) - {OrderStatus.IN_MANUFACTURING}:
        assert "only while its order is in_manufacturing" in (
            manufacturing_release_refusal(status, now, now, started) or ""
        )
    later = now + RELEASE_CLOCK_TOLERANCE + timedelta(seconds=1)
    assert manufacturing_release_refusal(OrderStatus.IN_MANUFACTURING, later, now, started) == (
        "released_at is in the future"
    )
    early = started - timedelta(seconds=1)
    assert "before manufacturing started" in (
        manufacturing_release_refusal(OrderStatus.IN_MANUFACTURING, early, now, started) or ""
    )


def test_a_release_stated_to_the_second_in_the_second_manufacturing_started_is_taken() -> None:
    """The README's walkthrough gives `date -u +%FT%TZ`: whole seconds, in the second the order moved."""
    started = datetime(2026, 12, 3, 14, 24, 55, 608334, tzinfo=UTC)
    same_second = started.replace(microsecond=0)
    assert manufacturing_release_refusal(OrderStatus.IN_MANUFACTURING, same_second, started, started) is None
    assert "before manufacturing started" in (
        manufacturing_release_refusal(
            OrderStatus.IN_MANUFACTURING, same_second - timedelta(seconds=1), started, started
        )
        or ""
    )


def test_a_site_scoped_caller_sees_only_its_own_site() -> None:
    assert visible_to(None, "TC-SEATTLE")
    assert visible_to("TC-BOSTON", "TC-BOSTON")
    assert not visible_to("TC-BOSTON", "TC-SEATTLE")


# ---------------------------------------------------------------- the patient, however they are spelled

MATCH_KEY = b"k" * 32
BORN = date(2019, 4, 2)


@pytest.mark.parametrize(
    ("name", "record_number"),
    [
        ("Jane Doe", "MRN-12345"),
        ("  jane   DOE ", "mrn-12345"),
        ("JANE\tDOE", " MRN-12345 "),
        (
            "\uff2a\uff41\uff4e\uff45 \uff24\uff4f\uff45",
            "\uff2d\uff32\uff2e\uff0d\uff11\uff12\uff13\uff14\uff15",
        ),  # full-width "Jane Doe": NFKC folds it
    ],
)
def test_the_same_patient_however_spelled_has_one_match(name: str, record_number: str) -> None:
    assert patient_match(MATCH_KEY, name, BORN, record_number) == patient_match(
        MATCH_KEY, "Jane Doe", BORN, "MRN-12345"
    )


@pytest.mark.parametrize(
    ("name", "born", "record_number"),
    [
        ("Jane Doe", date(2019, 4, 3), "MRN-12345"),
        ("Jane Doe", BORN, "MRN-12346"),
        ("Jane Dae", BORN, "MRN-12345"),
        ("Jané Doe", BORN, "MRN-12345"),  # accents are kept: they may tell two people apart
        ("JaneDoe", BORN, "MRN-12345"),
    ],
)
def test_another_patient_has_another_match(name: str, born: date, record_number: str) -> None:
    assert patient_match(MATCH_KEY, name, born, record_number) != patient_match(
        MATCH_KEY, "Jane Doe", BORN, "MRN-12345"
    )


def test_the_match_is_keyed_and_holds_no_identity() -> None:
    match = patient_match(MATCH_KEY, "Jane Doe", BORN, "MRN-12345")
    assert match != patient_match(b"o" * 32, "Jane Doe", BORN, "MRN-12345")
    assert len(match) == 64 and "jane" not in match.lower() and "12345" not in match


def test_a_cancelled_rejected_or_closed_order_is_not_active() -> None:
    assert ACTIVE.isdisjoint({OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.CLOSED})
    assert OrderStatus.SUBMITTED in ACTIVE and OrderStatus.ACCEPTED in ACTIVE


@pytest.mark.parametrize(
    ("born", "refused"),
    [
        (ORDER_DAY, False),
        (EARLIEST_DATE_OF_BIRTH, False),
        (ORDER_DAY + timedelta(days=1), True),
        (EARLIEST_DATE_OF_BIRTH - timedelta(days=1), True),
        (date(1, 1, 1), True),
    ],
)
def test_a_date_of_birth_in_the_future_or_before_the_limit_is_refused(born: date, refused: bool) -> None:
    refusal = date_of_birth_refusal(born, ORDER_DAY)
    assert (refusal is not None) is refused
    assert refusal is None or born.isoformat() not in refusal


# ---------------------------------------------------------------- a failed lot


def test_a_failed_lot_is_recorded_only_of_an_order_in_manufacturing_with_a_collection() -> None:
    assert manufacturing_failure_refusal(OrderStatus.IN_MANUFACTURING, collections=1) is None
    for status in set(OrderStatus) - {OrderStatus.IN_MANUFACTURING}:
        assert "only while its order is in_manufacturing" in (
            manufacturing_failure_refusal(status, collections=1) or ""
        )
    # In manufacturing by a coordinator's steps alone, no DIN: no collection the lot was made from.
    assert "no collection" in (manufacturing_failure_refusal(OrderStatus.IN_MANUFACTURING, 0) or "")


def test_a_failed_lot_is_reached_only_from_manufacturing_and_only_with_its_reason() -> None:
    check_transition(OrderStatus.IN_MANUFACTURING, OrderStatus.MANUFACTURING_FAILED, Way.FAILURE)
    for way in set(Way) - {Way.FAILURE}:
        with pytest.raises(TransitionRefused, match="POST …/manufacturing-failure"):
            check_transition(OrderStatus.IN_MANUFACTURING, OrderStatus.MANUFACTURING_FAILED, way)
    for status in set(OrderStatus) - {OrderStatus.IN_MANUFACTURING}:
        with pytest.raises(TransitionRefused):
            check_transition(status, OrderStatus.MANUFACTURING_FAILED, Way.FAILURE)


def test_after_a_failed_lot_the_next_attempt_starts_with_a_new_collection_only() -> None:
    failed = OrderStatus.MANUFACTURING_FAILED
    assert allowed_transitions(failed) == {OrderStatus.CELLS_COLLECTED, OrderStatus.CANCELLED}
    assert collection_refusal(failed, has_coi=True) is None
    assert status_after_collection(failed) is OrderStatus.CELLS_COLLECTED
    check_transition(failed, OrderStatus.CELLS_COLLECTED, Way.COLLECTION)
    # A coordinator's step would start the next attempt without a DIN.
    with pytest.raises(TransitionRefused, match="only by a new collection with its DIN"):
        check_transition(failed, OrderStatus.CELLS_COLLECTED, Way.STEP)
    # Never straight back into manufacturing, nor to a release of the failed lot.
    for target in (OrderStatus.IN_MANUFACTURING, OrderStatus.PRODUCT_RELEASED, OrderStatus.ACCEPTED):
        assert target not in allowed_transitions(failed)


def test_an_order_whose_lot_failed_is_still_active_and_may_be_cancelled() -> None:
    assert OrderStatus.MANUFACTURING_FAILED in ACTIVE
    check_transition(OrderStatus.MANUFACTURING_FAILED, OrderStatus.CANCELLED, Way.CANCELLATION)


def test_one_coi_links_at_most_twenty_collections() -> None:
    assert MAX_COLLECTIONS == 20
    assert collection_refusal(OrderStatus.MANUFACTURING_FAILED, True, MAX_COLLECTIONS - 1) is None
    assert "20 collections" in (
        collection_refusal(OrderStatus.MANUFACTURING_FAILED, True, MAX_COLLECTIONS) or ""
    )
