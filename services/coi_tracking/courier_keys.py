"""Courier companies' signatures on `couriers.scans`: the company of a Kafka scan is the one whose key
signed it, never what the payload says.

A courier company's system signs each record it publishes with its Ed25519 private key and sends two
headers: `cgt-signature-key` (the key's id, registered with COI tracking in COURIER_VERIFY_KEYS with the
company it belongs to) and `cgt-signature` (base64 of the Ed25519 signature over the record's value,
byte for byte: the canonical event is exactly what was published, so no re-serialisation can disagree).
An unsigned record, an unknown key, a bad signature, or a payload naming another company than the key's,
is dead-lettered with the reason (and counted in the log), before any rule sees it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

log = structlog.get_logger()
KEY_ID_HEADER = "cgt-signature-key"
SIGNATURE_HEADER = "cgt-signature"


class CourierKeyConfig(BaseModel):
    """One registered key: COURIER_VERIFY_KEYS is JSON {key id: {"company": ..., "public_key": base64}}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    company: str = Field(min_length=1, max_length=64)
    public_key: str = Field(min_length=1, max_length=128, description="base64 of the raw 32-byte Ed25519 key")


@dataclass(frozen=True)
class CourierKey:
    company: str
    public_key: Ed25519PublicKey


def load_keys(configured: Mapping[str, CourierKeyConfig]) -> dict[str, CourierKey]:
    """Refuses (at start-up) a key that is not a 32-byte Ed25519 public key, naming its id."""
    keys: dict[str, CourierKey] = {}
    for key_id, config in configured.items():
        try:
            raw = base64.b64decode(config.public_key, validate=True)
            keys[key_id] = CourierKey(config.company, Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"COURIER_VERIFY_KEYS[{key_id!r}] is not a base64 Ed25519 public key") from error
    return keys


def signature_headers(value: bytes, key_id: str, private_key_b64: str) -> list[tuple[str, bytes]]:
    """What a courier company's system adds to each record (the reference for their implementers)."""
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64))
    signature = base64.b64encode(private.sign(value))
    return [(KEY_ID_HEADER, key_id.encode()), (SIGNATURE_HEADER, signature)]


class CourierSignatures:
    """Checks each record of `couriers.scans` against the registered keys."""

    def __init__(self, keys: Mapping[str, CourierKey]) -> None:
        self.keys = dict(keys)
        self.refused = 0

    def refusal(self, headers: Sequence[tuple[str, bytes]] | None, value: bytes, company: str) -> str | None:
        """Why this record does not vouch for a scan by `company` (the payload's), or None."""
        reason = self._why(dict(headers or ()), value, company)
        if reason is not None:
            self.refused += 1
            log.warning("courier.signature_refused", reason=reason, refused_total=self.refused)
        return reason

    def _why(self, headers: dict[str, bytes], value: bytes, company: str) -> str | None:
        key_id, signature = headers.get(KEY_ID_HEADER), headers.get(SIGNATURE_HEADER)
        if key_id is None or signature is None:
            return f"unsigned: a courier scan needs the {KEY_ID_HEADER} and {SIGNATURE_HEADER} headers"
        key = self.keys.get(key_id.decode(errors="replace"))
        if key is None:
            return f"{KEY_ID_HEADER} names no key registered with COI tracking"
        try:
            key.public_key.verify(base64.b64decode(signature, validate=True), value)
        except (InvalidSignature, binascii.Error, ValueError):
            return "bad signature: the record was not signed by the registered key, or was changed after"
        if company != key.company:
            return "courier_company is not the company of the signing key"
        return None
