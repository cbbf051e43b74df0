"""QA signing PINs (21 CFR Part 11 §11.200(a)(1), §11.300(d)): salted hashes, the strength rule, the
count of wrong PINs and the block, and who may change a PIN. Pure domain, no I/O."""

from __future__ import annotations

import pytest

from services.coi_tracking.domain import (
    MAX_WRONG_SIGNING_PINS,
    PIN_WORK,
    ScryptWork,
    SigningCredential,
    SigningRefusal,
    check_signing_pin,
    hash_signing_pin,
    judge_pin_change,
    signing_pin_matches,
    signing_pin_problems,
)

PIN = "24681357"
SALT = bytes(range(16))
FAST = ScryptWork(n=2**4)
"""A tiny work factor where the rule, not the cost, is under test."""


def enrolled(wrong_attempts: int = 0, blocked: bool = False) -> SigningCredential:
    return SigningCredential(hash_signing_pin(PIN, SALT, FAST), wrong_attempts, blocked)


def test_a_pin_is_stored_salted_and_stretched_with_its_work_factor_and_never_in_clear() -> None:
    stored = hash_signing_pin(PIN, SALT)
    assert stored.startswith(f"scrypt${PIN_WORK.n}${PIN_WORK.r}${PIN_WORK.p}${SALT.hex()}$")
    assert PIN not in stored and PIN_WORK.n >= 2**14
    assert signing_pin_matches(PIN, stored)
    assert not signing_pin_matches("24681358", stored) and not signing_pin_matches("", stored)
    # A salt of its own per signer: the same PIN hashes differently, each still verifies.
    other = hash_signing_pin(PIN, bytes(16))
    assert other != stored and signing_pin_matches(PIN, other)


def test_a_malformed_or_foreign_stored_hash_matches_nothing() -> None:
    stored = hash_signing_pin(PIN, SALT, FAST)
    assert not signing_pin_matches(PIN, stored.replace("scrypt$", "md5$"))
    assert not signing_pin_matches(PIN, "scrypt$16$8$1$zz$00")
    assert not signing_pin_matches(PIN, "not a hash")


@pytest.mark.parametrize(
    ("pin", "problem"),
    [
        ("2468135", "8 to 128 characters"),
        ("2" * 129, "8 to 128 characters"),
        ("77777777", "one character repeated"),
        ("12345678", "consecutive"),
        ("hgfedcba", "consecutive"),
        ("my-qa-jr-pin", "signer's id"),
        ("2468\t1357", "printable"),
    ],
)
def test_a_weak_pin_is_refused_naming_why(pin: str, problem: str) -> None:
    assert any(problem in p for p in signing_pin_problems(pin, "qa-jr"))


def test_a_strong_pin_passes() -> None:
    assert signing_pin_problems(PIN, "qa-jr") == []
    assert signing_pin_problems("correct horse battery", "qa-jr") == []


def test_the_right_pin_signs_and_clears_the_count_of_wrong_ones() -> None:
    check = check_signing_pin(enrolled(wrong_attempts=3), PIN)
    assert check.refusal is None and check.wrong_attempts == 0 and not check.blocked


def test_no_enrolled_pin_refuses_the_signature_saying_how_to_enrol() -> None:
    for credential in (None, SigningCredential(pin_hash=None)):
        check = check_signing_pin(credential, PIN)
        assert (
            check.refusal is SigningRefusal.NOT_ENROLLED and "PUT /qa-signers/me/signing-pin" in check.detail
        )


def test_wrong_pins_in_a_row_are_counted_and_the_fifth_blocks_the_signer() -> None:
    credential = enrolled()
    for attempt in range(1, MAX_WRONG_SIGNING_PINS + 1):
        check = check_signing_pin(credential, "13572468")
        assert check.refusal is SigningRefusal.WRONG_PIN and check.wrong_attempts == attempt
        assert check.blocked is (attempt == MAX_WRONG_SIGNING_PINS)
        assert check.newly_blocked is (attempt == MAX_WRONG_SIGNING_PINS)
        credential = SigningCredential(credential.pin_hash, check.wrong_attempts, check.blocked)
    assert MAX_WRONG_SIGNING_PINS == 5
    blocked = check_signing_pin(credential, PIN)  # even the right PIN, once blocked
    assert blocked.refusal is SigningRefusal.BLOCKED and blocked.blocked and not blocked.newly_blocked
    assert "coordinator" in blocked.detail


def test_the_first_pin_needs_no_current_one_and_a_change_does() -> None:
    first = judge_pin_change(None, None, PIN, "qa-jr")
    assert first.allowed and first.current is None
    after_reset = judge_pin_change(SigningCredential(pin_hash=None), None, PIN, "qa-jr")
    assert after_reset.allowed
    missing = judge_pin_change(enrolled(), None, "97315864", "qa-jr")
    assert missing.current_missing and not missing.allowed
    changed = judge_pin_change(enrolled(), PIN, "97315864", "qa-jr")
    assert changed.allowed and changed.current is not None and changed.current.refusal is None


def test_a_change_with_a_wrong_current_pin_counts_as_a_wrong_signature() -> None:
    change = judge_pin_change(enrolled(wrong_attempts=4), "13572468", "97315864", "qa-jr")
    assert not change.allowed and change.current is not None
    assert change.current.refusal is SigningRefusal.WRONG_PIN and change.current.blocked


def test_a_blocked_signer_cannot_set_a_pin_until_reset() -> None:
    change = judge_pin_change(enrolled(wrong_attempts=5, blocked=True), PIN, "97315864", "qa-jr")
    assert not change.allowed and change.current is not None
    assert change.current.refusal is SigningRefusal.BLOCKED
    without_current = judge_pin_change(SigningCredential(None, 5, True), None, "97315864", "qa-jr")
    assert not without_current.allowed


def test_a_new_pin_must_be_strong_and_differ_from_the_current_one() -> None:
    weak = judge_pin_change(None, None, "12345678", "qa-jr")
    assert not weak.allowed and weak.new_pin_problems
    same = judge_pin_change(enrolled(), PIN, PIN, "qa-jr")
    assert not same.allowed and "must differ from the current PIN" in same.new_pin_problems
