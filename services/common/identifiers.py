"""ISBT 128 identifiers: ISO/IEC 7064 MOD 37-2 check characters, DINs and chain-of-identity identifiers.

Pure functions, no I/O. The COI identifier (ST-028, data structure 040) is `CH` + the issuer's facility
identification number (FIN, 5 characters) + a two-digit year + a six-character alphanumeric sequence,
15 characters in all, followed here by its MOD 37-2 check character. Labels print it after `&/`.
"""

from __future__ import annotations

import re

from cgt_contracts.envelope import COI_REGEX

MOD37_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
_BASE36 = MOD37_ALPHABET[:36]
FIN_PATTERN = re.compile(r"^[A-NP-Z][0-9]{4}$")
COI_PATTERN = re.compile(COI_REGEX)
DIN_PATTERN = re.compile(r"^[A-NP-Z][0-9]{4}[0-9]{2}[0-9]{6}[0-9A-Z*]$")
SEQUENCE_CAPACITY = 36**6


def mod37_2(data: str) -> str:
    """ISO/IEC 7064 MOD 37-2 check character over `data` (characters 0-9, A-Z, *)."""
    product = 0
    for char in data:
        value = MOD37_ALPHABET.find(char)
        if value < 0:
            raise ValueError(f"character {char!r} is not in the MOD 37-2 alphabet")
        product = ((product + value) * 2) % 37
    return MOD37_ALPHABET[(38 - product) % 37]


def has_valid_check(identifier: str) -> bool:
    """True when the last character is the MOD 37-2 check character of the rest."""
    if len(identifier) < 2:
        return False
    try:
        return mod37_2(identifier[:-1]) == identifier[-1]
    except ValueError:
        return False


def _check_fin(fin: str) -> None:
    if not FIN_PATTERN.match(fin):
        raise ValueError(f"facility identification number {fin!r} must be a letter (not O) and 4 digits")


def base36(number: int, width: int) -> str:
    if not 0 <= number < 36**width:
        raise ValueError(f"{number} does not fit in {width} base-36 characters")
    digits = ""
    for _ in range(width):
        number, remainder = divmod(number, 36)
        digits = _BASE36[remainder] + digits
    return digits


def coi_identifier(fin: str, year: int, sequence: int) -> str:
    """The 15-character data content plus its check character, e.g. `CHW432126000001` + `K`."""
    _check_fin(fin)
    data = f"CH{fin}{year % 100:02d}{base36(sequence, 6)}"
    return data + mod37_2(data)


def din(fin: str, year: int, sequence: int) -> str:
    """A Donation Identification Number (13 characters) plus its check character."""
    _check_fin(fin)
    if not 0 <= sequence < 1_000_000:
        raise ValueError("a DIN sequence has six digits")
    data = f"{fin}{year % 100:02d}{sequence:06d}"
    return data + mod37_2(data)


def coi_label(coi: str) -> str:
    """Eye-readable label text: `&/` + data content, the check character boxed beside it."""
    return f"&/{coi[:-1]} [{coi[-1]}]"
