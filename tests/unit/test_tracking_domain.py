"""COI tracking rules without I/O: scan evaluation and the hash-chained custody ledger."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta

from cgt_contracts.events import QaReasonCode, QuarantineReasonCode, ScanRefusalCode, ScanType, ShipmentLeg

from services.coi_tracking.domain import (
    CLOCK_TOLERANCE,
    ENTRY_SIGNATURE_CONTEXT,
    GENESIS_SHA256,
    CustodyChange,
    Disposition,
    LedgerContent,
    LedgerKind,
    Quarantined,
    Reading,
    Replay,
    Scan,
    ShipmentState,
    ShipmentStatus,
    SignatureMeaning,
    StoredEntry,
    TemperatureEvidence,
    TemperaturePolicy,
    closes_on_lot_failure,
    codes_of,
    disposition_reason_problem,
    disposition_refusal,
    entry_hash,
    evaluate_scan,
    judge_evidence,
    ledger_keyring,
    packing_problems,
    replay_of,
    temperature_problems,
    verify_chain,
)

COI = "CHW4321260000014"
CARRIER = "CRYO-EXPRESS"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
KEYRING = ledger_keyring({"unit-test-1": base64.b64encode(bytes(range(32))).decode()}, {})


def state(
    physical: ShipmentStatus = ShipmentStatus.DISPATCHED, *, quarantined: bool = False
) -> ShipmentState:
    return ShipmentState(
        status=ShipmentStatus.QUARANTINED if quarantined else physical,
        physical_status=physical,
        expected_coi=COI,
        bag_count=2,
        policy=TemperaturePolicy(max_celsius=-150.0),
        custodian="courier-ben",
        quarantined=quarantined,
        courier_company=CARRIER,
    )


def a_scan(
    kind: ScanType, bags: tuple[str, ...] = (COI, COI), temperature: float | None = -180.0, **kw: str
) -> Scan:
    return Scan(
        kind,
        bags,
        temperature,
        scanned_by="courier-ben",
        handed_to=kw.get("handed_to"),
        treatment_center_id="TC-1",
        at=NOW,
        received_at=NOW,
        container_id=kw.get("container_id"),
        scanned_by_company=CARRIER,
        handed_to_company=CARRIER if kw.get("handed_to") else None,
    )


def test_clean_delivery_is_accepted_and_hands_custody_to_the_site() -> None:
    decision = evaluate_scan(state(), a_scan(ScanType.DELIVERY))
    assert decision.accepted and decision.delivered_clean and not decision.quarantine
    assert decision.custody is not None and decision.custody.to_party == "TC-1"


def test_a_bag_with_another_coi_is_a_coi_break() -> None:
    decision = evaluate_scan(state(), a_scan(ScanType.CHECKPOINT, (COI, "CHW4321260000022")))
    assert decision.coi_break and decision.quarantine
    assert "CHW4321260000022" in decision.quarantine_reasons[0]


def test_a_missing_bag_is_a_coi_break() -> None:
    decision = evaluate_scan(state(), a_scan(ScanType.CHECKPOINT, (COI,)))
    assert decision.coi_break and "1 of 2 bags not scanned" in decision.quarantine_reasons[0]


def test_a_reading_above_the_limit_is_an_excursion_and_at_the_limit_is_not() -> None:
    assert evaluate_scan(state(), a_scan(ScanType.CHECKPOINT, temperature=-149.9)).temperature_excursion
    assert not evaluate_scan(state(), a_scan(ScanType.CHECKPOINT, temperature=-150.0)).temperature_excursion


def test_delivery_of_a_quarantined_shipment_is_not_a_clean_delivery() -> None:
    decision = evaluate_scan(state(quarantined=True), a_scan(ScanType.DELIVERY))
    assert decision.accepted and not decision.delivered_clean


def test_delivery_before_pick_up_is_refused_but_still_checked() -> None:
    decision = evaluate_scan(state(ShipmentStatus.PLANNED), a_scan(ScanType.DELIVERY, (COI, "WRONG")))
    assert not decision.accepted and "cannot follow" in (decision.refusal_reason or "")
    assert decision.coi_break and decision.custody is None


def test_hand_off_needs_a_new_custodian() -> None:
    assert not evaluate_scan(state(), a_scan(ScanType.HAND_OFF)).accepted
    assert not evaluate_scan(state(), a_scan(ScanType.HAND_OFF, handed_to="courier-ben")).accepted
    moved = evaluate_scan(state(), a_scan(ScanType.HAND_OFF, handed_to="courier-cy"))
    assert moved.accepted and moved.custody is not None and moved.custody.from_party == "courier-ben"


def test_a_refused_scan_says_why_with_a_code_beside_the_sentence() -> None:
    """The sentence is for the sender and the shipment's readers; the code is what the event publishes."""
    cases = [
        (state(ShipmentStatus.PLANNED), a_scan(ScanType.DELIVERY), ScanRefusalCode.OUT_OF_SEQUENCE),
        (state(), a_scan(ScanType.HAND_OFF), ScanRefusalCode.HANDED_TO_MISSING),
        (state(), a_scan(ScanType.HAND_OFF, handed_to="courier-ben"), ScanRefusalCode.ALREADY_IN_CUSTODY),
        (
            state(),
            dataclasses.replace(a_scan(ScanType.DELIVERY), scanned_by="courier-cy"),
            ScanRefusalCode.NOT_CUSTODIAN,
        ),
        (
            state(),
            dataclasses.replace(a_scan(ScanType.CHECKPOINT), at=NOW + timedelta(hours=1)),
            ScanRefusalCode.DEVICE_CLOCK_AHEAD,
        ),
        (
            dataclasses.replace(state(), order_cancelled=True),
            a_scan(ScanType.CHECKPOINT),
            ScanRefusalCode.ORDER_CANCELLED,
        ),
        (
            dataclasses.replace(state(), lot_failed=True, leg=ShipmentLeg.RETURN),
            a_scan(ScanType.CHECKPOINT),
            ScanRefusalCode.LOT_FAILED,
        ),
    ]
    for shipment, scan, code in cases:
        decision = evaluate_scan(shipment, scan)
        assert not decision.accepted and decision.refusal_code is code, (code, decision.refusal_reason)
        assert decision.refusal_reason and code.value not in decision.refusal_reason
    accepted = evaluate_scan(state(), a_scan(ScanType.CHECKPOINT))
    assert accepted.accepted and accepted.refusal_code is None


def test_a_quarantine_carries_the_code_of_every_problem_found_once() -> None:
    decision = evaluate_scan(
        state(),
        a_scan(ScanType.CHECKPOINT, (COI, "CHW4321260000022", "CHW4321260000030"), temperature=-120.0),
    )
    [quarantined] = [fact for fact in decision.facts if isinstance(fact, Quarantined)]
    assert quarantined.codes == (
        QuarantineReasonCode.COI_BREAK,
        QuarantineReasonCode.BAG_EXTRA,
        QuarantineReasonCode.TEMPERATURE_EXCURSION,
    )
    assert "CHW4321260000022" in quarantined.reason, "the sentences stay, for the shipment's record"
    missing = evaluate_scan(state(), a_scan(ScanType.CHECKPOINT, (COI,)))
    assert [f.codes for f in missing.facts if isinstance(f, Quarantined)] == [
        (QuarantineReasonCode.BAG_MISSING,)
    ]


def test_every_temperature_problem_has_its_code() -> None:
    policy = TemperaturePolicy(
        max_celsius=-150.0, min_celsius=-200.0, logger_interval_minutes=5, hold_until=NOW - timedelta(hours=1)
    )
    judged = judge_evidence(
        policy,
        [
            TemperatureEvidence(NOW - timedelta(minutes=30), value=-140.0),
            TemperatureEvidence(NOW, value=-210.0),
            TemperatureEvidence(NOW, sensor_exception="ALARM_CONDITION"),
            TemperatureEvidence(NOW, min_value=-190.0),
        ],
        received_at=NOW,
    )
    assert set(codes_of(judged.problems)) == {
        QuarantineReasonCode.TEMPERATURE_EXCURSION,
        QuarantineReasonCode.BELOW_MINIMUM_TEMPERATURE,
        QuarantineReasonCode.LOGGER_GAP,
        QuarantineReasonCode.HOLD_TIME_EXCEEDED,
        QuarantineReasonCode.SENSOR_ALARM,
        QuarantineReasonCode.TEMPERATURE_UNPROVEN,
    }
    assert codes_of(["a sentence our code never wrote"]) == (QuarantineReasonCode.OTHER,)


def test_a_qa_reason_must_fit_its_decision() -> None:
    assert disposition_reason_problem(Disposition.RELEASE, QaReasonCode.LOGGER_FAULT) is None
    assert disposition_reason_problem(Disposition.REJECT, QaReasonCode.CONTAINER_COMPROMISED) is None
    for decision in Disposition:
        assert disposition_reason_problem(decision, QaReasonCode.OTHER) is None
    problem = disposition_reason_problem(Disposition.RELEASE, QaReasonCode.TEMPERATURE_COMPROMISED)
    assert problem is not None and "logger_fault" in problem
    assert disposition_reason_problem(Disposition.REJECT, QaReasonCode.PRODUCT_WITHIN_LIMITS) is not None


def _chain(length: int) -> list[StoredEntry]:
    entries: list[StoredEntry] = []
    previous = GENESIS_SHA256
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    for sequence in range(1, length + 1):
        content = LedgerContent(
            "s-1",
            sequence,
            LedgerKind.CUSTODY,
            f"p{sequence}",
            f"p{sequence + 1}",
            "hub",
            start + timedelta(hours=sequence),
            "Ben",
            "custody handed over",
            "",
        )
        digest = entry_hash(content, previous)
        key_id, signature = KEYRING.sign(ENTRY_SIGNATURE_CONTEXT, "s-1", sequence, digest)
        entries.append(StoredEntry(content, previous, digest, key_id, signature))
        previous = digest
    return entries


def test_an_untouched_chain_verifies() -> None:
    entries = _chain(4)
    assert verify_chain(entries, entries[-1].entry_sha256, keyring=KEYRING).valid


def test_a_changed_entry_is_detected_and_located() -> None:
    entries = _chain(4)
    changed = dataclasses.replace(entries[2].content, to_party="someone-else")
    entries[2] = dataclasses.replace(entries[2], content=changed)
    result = verify_chain(entries, entries[-1].entry_sha256, keyring=KEYRING)
    assert not result.valid and result.broken_at_sequence == 3 and "changed" in (result.problem or "")


def test_a_removed_entry_is_detected_and_located() -> None:
    entries = _chain(4)
    head = entries[-1].entry_sha256
    del entries[1]
    result = verify_chain(entries, head, keyring=KEYRING)
    assert not result.valid and result.broken_at_sequence == 2


def test_reordered_entries_are_detected() -> None:
    entries = _chain(4)
    entries[1], entries[2] = entries[2], entries[1]
    result = verify_chain(entries, entries[-1].entry_sha256, keyring=KEYRING)
    assert not result.valid and result.broken_at_sequence == 2


def test_entries_cut_off_at_the_end_are_detected_through_the_head() -> None:
    entries = _chain(4)
    head = entries[-1].entry_sha256
    result = verify_chain(entries[:3], head, keyring=KEYRING)
    assert not result.valid and result.broken_at_sequence == 4


def test_a_different_container_than_the_one_packed_is_a_coi_break() -> None:
    packed = dataclasses.replace(state(), container_id="DS-1")
    assert evaluate_scan(packed, a_scan(ScanType.CHECKPOINT, container_id="DS-2")).coi_break
    assert not evaluate_scan(packed, a_scan(ScanType.CHECKPOINT, container_id="DS-1")).coi_break


def test_a_logger_gap_longer_than_its_interval_allows_is_an_excursion() -> None:
    policy = TemperaturePolicy(max_celsius=-150.0, logger_interval_minutes=5)
    steady = [Reading(NOW + timedelta(minutes=5 * i), -180.0) for i in range(4)]
    assert temperature_problems(policy, steady) == []
    gapped = [*steady, Reading(NOW + timedelta(minutes=40), -180.0)]
    problems = temperature_problems(policy, gapped)
    assert len(problems) == 1 and "no reading from" in problems[0] and "every 5 min" in problems[0]
    assert temperature_problems(
        policy, [Reading(NOW + timedelta(minutes=30), -180.0)], previous_reading_at=NOW
    )


def test_fresh_legs_have_a_range_and_a_transit_deadline() -> None:
    policy = TemperaturePolicy(max_celsius=8.0, min_celsius=2.0, transit_deadline=NOW)
    assert temperature_problems(policy, [Reading(NOW - timedelta(hours=1), 5.0)]) == []
    assert "below the minimum" in temperature_problems(policy, [Reading(NOW - timedelta(hours=1), 1.0)])[0]
    assert "transit time" in temperature_problems(policy, [Reading(NOW + timedelta(minutes=1), 5.0)])[0]


def test_a_scan_past_the_shippers_hold_time_quarantines_even_without_a_reading() -> None:
    held = dataclasses.replace(
        state(), policy=TemperaturePolicy(max_celsius=-150.0, hold_until=NOW - timedelta(hours=1))
    )
    decision = evaluate_scan(held, a_scan(ScanType.CHECKPOINT, temperature=None))
    assert decision.temperature_excursion and "hold time" in decision.quarantine_reasons[0]


def test_qa_signs_only_for_quarantined_shipments_and_a_rejected_shipment_does_not_move() -> None:
    assert (
        disposition_refusal(ShipmentStatus.QUARANTINED, Disposition.RELEASE, SignatureMeaning.APPROVAL)
        is None
    )
    assert (
        disposition_refusal(ShipmentStatus.IN_TRANSIT, Disposition.RELEASE, SignatureMeaning.APPROVAL)
        is not None
    )
    rejected = dataclasses.replace(state(), status=ShipmentStatus.REJECTED)
    assert not evaluate_scan(rejected, a_scan(ScanType.DELIVERY)).accepted


# --- times and ETAs: judged once, here, for every way a scan arrives -----------------------------------


def test_a_scan_dated_in_the_future_is_refused_and_judged_at_the_time_it_arrived() -> None:
    hold = TemperaturePolicy(max_celsius=-150.0, hold_until=NOW + timedelta(hours=1))
    shipment = dataclasses.replace(state(), policy=hold)
    ahead = dataclasses.replace(a_scan(ScanType.CHECKPOINT), at=datetime(2099, 1, 1, tzinfo=UTC))
    decision = evaluate_scan(shipment, ahead)
    assert not decision.accepted and "ahead of the server's clock" in (decision.refusal_reason or "")
    # Not quarantined for a hold time that only a bogus clock has passed; the reading counts at arrival.
    assert not decision.quarantine and decision.reading == Reading(NOW, -180.0)
    warm = evaluate_scan(shipment, dataclasses.replace(ahead, temperature_celsius=-100.0))
    assert warm.temperature_excursion and warm.reading == Reading(NOW, -100.0)


def test_a_device_clock_a_little_ahead_or_behind_is_tolerated() -> None:
    planned = dataclasses.replace(state(), planned_at=NOW)
    for skew in (CLOCK_TOLERANCE, -CLOCK_TOLERANCE):
        assert evaluate_scan(
            planned, dataclasses.replace(a_scan(ScanType.CHECKPOINT), at=NOW + skew)
        ).accepted


def test_a_scan_dated_before_its_shipment_was_planned_is_refused() -> None:
    planned = dataclasses.replace(state(), planned_at=NOW)
    early = dataclasses.replace(a_scan(ScanType.CHECKPOINT), at=NOW - timedelta(days=2))
    decision = evaluate_scan(planned, early)
    assert not decision.accepted and "before the shipment was planned" in (decision.refusal_reason or "")


def test_a_pick_up_or_delay_needs_an_eta_that_is_not_in_the_past() -> None:
    for kind, physical in (
        (ScanType.PICK_UP, ShipmentStatus.PLANNED),
        (ScanType.DELAY, ShipmentStatus.DISPATCHED),
    ):
        shipment = state(physical)
        missing = evaluate_scan(shipment, a_scan(kind))
        assert not missing.accepted and "eta_at" in (missing.refusal_reason or ""), kind
        past = evaluate_scan(shipment, dataclasses.replace(a_scan(kind), eta_at=NOW - timedelta(minutes=1)))
        assert not past.accepted and "in the past" in (past.refusal_reason or ""), kind
        ahead = evaluate_scan(shipment, dataclasses.replace(a_scan(kind), eta_at=NOW + timedelta(days=2)))
        assert ahead.accepted, (kind, ahead.refusal_reason)


def test_a_qa_signature_must_mean_what_its_decision_is() -> None:
    quarantined = ShipmentStatus.QUARANTINED
    assert disposition_refusal(quarantined, Disposition.REJECT, SignatureMeaning.REJECTION) is None
    wrong = disposition_refusal(quarantined, Disposition.REJECT, SignatureMeaning.APPROVAL)
    assert wrong == "a reject is signed with the meaning rejection, not approval"
    assert disposition_refusal(quarantined, Disposition.RELEASE, SignatureMeaning.REJECTION) is not None


# --- custody: only registered couriers of the carrier, and only the one holding it hands it on (I3) -------


def test_custody_passes_only_to_a_registered_courier_of_the_carrier() -> None:
    unknown = dataclasses.replace(a_scan(ScanType.HAND_OFF, handed_to="nobody-xyz"), handed_to_company=None)
    decision = evaluate_scan(state(), unknown)
    assert not decision.accepted and decision.custody is None
    assert (
        decision.refusal_reason
        == "nobody-xyz is not a registered courier: custody passes only to a known courier"
    )
    rival = dataclasses.replace(a_scan(ScanType.HAND_OFF, handed_to="courier-dee"), handed_to_company="OTHER")
    assert "works for OTHER; this shipment is carried by CRYO-EXPRESS" in (
        evaluate_scan(state(), rival).refusal_reason or ""
    )
    taken = evaluate_scan(state(), a_scan(ScanType.HAND_OFF, handed_to="courier-cy"))
    assert taken.accepted and taken.custody == CustodyChange("courier-ben", "courier-cy")


def test_only_the_custodian_hands_the_shipment_on_or_delivers_it() -> None:
    for kind in (ScanType.HAND_OFF, ScanType.DELIVERY):
        by_other = dataclasses.replace(a_scan(kind, handed_to="courier-cy"), scanned_by="courier-cy")
        decision = evaluate_scan(state(), by_other)
        assert not decision.accepted and "custody is with courier-ben" in (decision.refusal_reason or ""), (
            kind
        )


def test_a_pick_up_comes_from_a_registered_courier_of_the_carrier() -> None:
    pick_up = dataclasses.replace(a_scan(ScanType.PICK_UP), eta_at=NOW + timedelta(days=2))
    planned = state(ShipmentStatus.PLANNED)
    assert evaluate_scan(planned, pick_up).accepted
    stranger = dataclasses.replace(pick_up, scanned_by="courier-x", scanned_by_company=None)
    assert "courier-x is not a registered courier" in (evaluate_scan(planned, stranger).refusal_reason or "")


def test_only_the_assigned_courier_company_may_handle_a_shipment() -> None:
    from services.coi_tracking.domain import other_company_refusal

    assert other_company_refusal("CRYO-EXPRESS", "CRYO-EXPRESS") is None
    assert other_company_refusal("CRYO-EXPRESS", None) is None  # coordinator, QA, the system
    assert "another courier company" in (other_company_refusal("CRYO-EXPRESS", "OTHER-LOGISTICS") or "")


# ---------------------------------------------------------------- temperature evidence, whatever its shape (I2)

CRYO = TemperaturePolicy(max_celsius=-150.0)
FRESH = TemperaturePolicy(max_celsius=8.0, min_celsius=2.0)


def judged(policy: TemperaturePolicy, *evidence: TemperatureEvidence) -> list[str]:
    return judge_evidence(policy, list(evidence), received_at=NOW).problems


def test_the_warmest_value_of_a_report_counts_a_cold_value_does_not_hide_a_warm_maximum() -> None:
    assert judged(CRYO, TemperatureEvidence(NOW, value=-180.0)) == []
    [problem] = judged(CRYO, TemperatureEvidence(NOW, value=-180.0, max_value=-140.0))
    assert "-140.0 °C" in problem and "above the limit" in problem
    [problem] = judged(CRYO, TemperatureEvidence(NOW, min_value=-196.0, mean_value=-145.0))
    assert "-145.0 °C" in problem
    stored = judge_evidence(CRYO, [TemperatureEvidence(NOW, value=-180.0, max_value=-140.0)], received_at=NOW)
    assert stored.readings == [Reading(NOW, -140.0)]


def test_an_interval_minimum_below_a_fresh_legs_range_counts() -> None:
    assert judged(FRESH, TemperatureEvidence(NOW, min_value=3.0, max_value=6.0, mean_value=4.0)) == []
    [problem] = judged(FRESH, TemperatureEvidence(NOW, min_value=1.0, max_value=6.0, mean_value=4.0))
    assert "1.0 °C" in problem and "below the minimum of 2.0 °C" in problem
    assert judged(CRYO, TemperatureEvidence(NOW, min_value=-196.0, max_value=-170.0)) == []


def test_a_series_is_judged_reading_by_reading_with_its_gaps() -> None:
    policy = TemperaturePolicy(max_celsius=-150.0, logger_interval_minutes=10)
    series = [
        TemperatureEvidence(NOW + timedelta(minutes=m), value=v)
        for m, v in ((0, -185.0), (10, -140.0), (50, -184.0))
    ]
    result = judge_evidence(policy, series, received_at=NOW + timedelta(hours=1))
    assert [r.celsius for r in result.readings] == [-185.0, -140.0, -184.0]
    assert (
        len(result.problems) == 2 and "-140.0 °C" in result.problems[0] and "no reading" in result.problems[1]
    )


def test_a_sensor_alarm_is_a_problem_even_without_a_value() -> None:
    [problem] = judged(CRYO, TemperatureEvidence(NOW, sensor_exception="'ALARM_CONDITION'"))
    assert problem == f"the temperature sensor reports 'ALARM_CONDITION' at {NOW.isoformat()}"
    assert (
        len(judged(CRYO, TemperatureEvidence(NOW, value=-190.0, sensor_exception="'ERROR_CONDITION'"))) == 1
    )


def test_a_reading_that_cannot_be_proven_cold_is_a_problem() -> None:
    [unit] = judged(CRYO, TemperatureEvidence(NOW, unreadable="value reported in no unit"))
    assert unit.endswith("cannot be proven cold: value reported in no unit")
    [lone] = judged(CRYO, TemperatureEvidence(NOW, min_value=-196.0))
    assert "only a minimum (-196.0 °C) is reported" in lone
    [empty] = judged(CRYO, TemperatureEvidence(NOW))
    assert empty.endswith("cannot be proven cold: it carries no value")


def test_a_reading_dated_in_the_future_is_judged_when_it_arrived() -> None:
    policy = TemperaturePolicy(max_celsius=-150.0, hold_until=NOW + timedelta(days=1))
    ahead = TemperatureEvidence(NOW + timedelta(days=365), value=-180.0)
    result = judge_evidence(policy, [ahead], received_at=NOW)
    assert result.problems == [] and result.readings == [Reading(NOW, -180.0)]


def test_the_same_event_id_is_a_duplicate_only_with_the_same_event_hash() -> None:
    assert replay_of(None, False, "ni:a") is Replay.NEW
    assert replay_of("ni:a", True, "ni:a") is Replay.DUPLICATE
    assert replay_of("ni:a", True, "ni:b") is Replay.CONFLICT
    assert replay_of(None, True, "ni:b") is Replay.DUPLICATE, "a scan stored before hashes were kept"


def test_bags_packed_into_another_container_than_the_declared_one_is_a_coi_break() -> None:
    assert packing_problems("DS-4471", "DS-4471") == [] and packing_problems(None, "DS-1") == []
    assert packing_problems("DS-4471", "DS-9999") == [
        "container 'DS-9999' scanned, the shipment travels in 'DS-4471'"
    ]


def test_a_failed_lot_closes_only_the_planned_return_leg_it_would_have_travelled_on() -> None:
    assert closes_on_lot_failure(ShipmentLeg.RETURN, ShipmentStatus.PLANNED, product_released=False)
    # The cells' outbound leg is not the lot's.
    assert not closes_on_lot_failure(ShipmentLeg.OUTBOUND, ShipmentStatus.PLANNED, product_released=False)
    # A released, moving or already closed return leg is not the failed lot's.
    assert not closes_on_lot_failure(ShipmentLeg.RETURN, ShipmentStatus.PLANNED, product_released=True)
    for status in set(ShipmentStatus) - {ShipmentStatus.PLANNED}:
        assert not closes_on_lot_failure(ShipmentLeg.RETURN, status, product_released=False)


def test_a_closed_return_leg_takes_no_scan_even_once_its_order_looks_released() -> None:
    closed = dataclasses.replace(
        state(ShipmentStatus.PLANNED), lot_failed=True, leg=ShipmentLeg.RETURN, product_released=True
    )
    pick_up = dataclasses.replace(a_scan(ScanType.PICK_UP), eta_at=NOW + timedelta(days=2))
    decision = evaluate_scan(closed, pick_up)
    assert not decision.accepted and decision.refusal_code is ScanRefusalCode.LOT_FAILED
