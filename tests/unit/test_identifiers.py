"""ISBT 128 check characters and identifiers: published vectors and error-detection properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.identifiers import (
    COI_PATTERN,
    DIN_PATTERN,
    MOD37_ALPHABET,
    coi_identifier,
    coi_label,
    din,
    has_valid_check,
    mod37_2,
)

ALPHABET_36 = MOD37_ALPHABET[:36]
data_strings = st.text(alphabet=ALPHABET_36, min_size=2, max_size=20)


@pytest.mark.parametrize(
    ("data", "check"),
    [("G123417654321", "A"), ("G123498654321", "H"), ("A999921123456", "3")],
)
def test_published_mod37_2_vectors(data: str, check: str) -> None:
    assert mod37_2(data) == check


@given(data_strings, st.data())
def test_any_single_substitution_is_detected(data: str, draw: st.DataObject) -> None:
    identifier = data + mod37_2(data)
    position = draw.draw(st.integers(0, len(identifier) - 1))
    replacement = draw.draw(st.sampled_from(MOD37_ALPHABET).filter(lambda c: c != identifier[position]))
    corrupted = identifier[:position] + replacement + identifier[position + 1 :]
    assert not has_valid_check(corrupted)


@given(data_strings, st.data())
def test_any_adjacent_transposition_is_detected(data: str, draw: st.DataObject) -> None:
    identifier = data + mod37_2(data)
    position = draw.draw(st.integers(0, len(identifier) - 2))
    a, b = identifier[position], identifier[position + 1]
    if a == b:
        return
    swapped = identifier[:position] + b + a + identifier[position + 2 :]
    assert not has_valid_check(swapped)


def test_coi_identifier_shape_and_label() -> None:
    coi = coi_identifier("W4321", 2026, 1)
    assert COI_PATTERN.match(coi)
    assert coi[:15] == "CHW432126000001"
    assert has_valid_check(coi)
    assert coi_label(coi) == f"&/CHW432126000001 [{coi[-1]}]"


def test_coi_sequence_is_alphanumeric_and_bounded() -> None:
    assert coi_identifier("W4321", 2026, 36**6 - 1)[9:15] == "ZZZZZZ"
    with pytest.raises(ValueError):
        coi_identifier("W4321", 2026, 36**6)


def test_din_matches_published_vector() -> None:
    assert din("G1234", 2017, 654321) == "G123417654321A"
    assert DIN_PATTERN.match(din("A9999", 2021, 123456))


@pytest.mark.parametrize("fin", ["O1234", "W12", "12345", "w1234"])
def test_invalid_facility_numbers_are_refused(fin: str) -> None:
    with pytest.raises(ValueError):
        coi_identifier(fin, 2026, 1)
