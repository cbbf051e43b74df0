"""The development secrets, and the one switch under which a service accepts them.

They are published in this repository, so anyone can use them: `make up`, the demo, the benchmarks and the
tests run with them and set CGT_DEV_MODE=true. Outside that mode a service that finds one of them among its
settings refuses to start, naming the variable and never the value (`ServiceSettings.refuse_development_secrets`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEV_MODE_VARIABLE = "CGT_DEV_MODE"

DEV_PHI_KEY = "ZGV2LW9ubHkta2V5LWRvLW5vdC11c2UtaW4tcHJvZCE="
"""Order intake's Fernet key of patient identities (its bytes spell dev-only-key-...)."""
DEV_PATIENT_MATCH_KEY = "DEV-ONLY-patient-match-key-not-for-production"
"""Order intake's HMAC key of the patient match."""
DEV_WEBHOOK_SECRET_KEY = "REVWLU9OTFktd2ViaG9vay1zZWNyZXRzLWtleS0wMDE="
"""Scheduling's Fernet key of the stored webhook secrets (its bytes spell DEV-ONLY-...)."""
DEV_LEDGER_SIGNING_KEYS = {"dev-ledger-1": "REVWLU9OTFktbGVkZ2VyLWtleS1ub3QtZm9yLXByb2Q="}
"""COI tracking's Ed25519 ledger key (key id -> base64 seed spelling DEV-ONLY-...)."""
DEV_CONSOLE_SESSION_KEY = "DEV-ONLY-console-session-key-not-for-production"
"""The coordinator console's key that signs its session and sign-in cookies (CONSOLE_SESSION_KEY)."""
DEV_QA_SIGNING_PIN = "24681357"
"""The development QA signer's (qa-jr, dev-qa-token) signing PIN; production seeds none, signers enrol."""
DEV_SIGNING_PINS = {"qa-jr": DEV_QA_SIGNING_PIN}
DEV_COURIER_SIGNING_KEYS: dict[str, tuple[str, str]] = {
    "CRYO-EXPRESS": ("dev-cryo-express-1", "REVWLU9OTFktY291cmllci1DUllPLUVYUFJFU1MtMDE="),
    "OTHER-LOGISTICS": ("dev-other-logistics-1", "REVWLU9OTFktY291cmllci1PVEhFUi1MT0dJU1QtMDE="),
}
"""Each development courier company's Ed25519 key (company -> key id, base64 seed spelling DEV-ONLY-...),
with which the tests, the demo and the bench sign what they publish on couriers.scans."""
DEV_TOKENS = frozenset(
    {
        "dev-coordinator-token",
        "dev-courier-token",
        "dev-courier2-token",
        "dev-other-courier-token",
        "dev-center-token",
        "dev-qa-token",
        "dev-qa2-token",
    }
)
"""The bearer tokens of deploy/dev-tokens.json (a unit test keeps the two equal)."""


def public_key_of(private_seed_b64: str) -> str:
    """The base64 public key to register for a base64 raw Ed25519 private key (its 32-byte seed)."""
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_seed_b64))
    return base64.b64encode(private.public_key().public_bytes_raw()).decode()


DEVELOPMENT_VALUES: frozenset[str] = frozenset(
    {
        DEV_PHI_KEY,
        DEV_PATIENT_MATCH_KEY,
        DEV_WEBHOOK_SECRET_KEY,
        DEV_CONSOLE_SESSION_KEY,
        DEV_QA_SIGNING_PIN,
        *DEV_TOKENS,
        *DEV_LEDGER_SIGNING_KEYS.values(),
        *(public_key_of(seed) for seed in DEV_LEDGER_SIGNING_KEYS.values()),
        *(seed for _, seed in DEV_COURIER_SIGNING_KEYS.values()),
        *(public_key_of(seed) for _, seed in DEV_COURIER_SIGNING_KEYS.values()),
    }
)
"""Every published value that would be a secret in production. The public keys are among them: a ledger or
courier verify key whose private half is published lets anyone sign as the ledger or as that company."""


def variables_holding_development_values(secrets: Mapping[str, Iterable[str]]) -> list[str]:
    """The variables (of {variable: its secret values}) that hold a published development value."""
    return sorted(
        name for name, values in secrets.items() if any(value in DEVELOPMENT_VALUES for value in values)
    )
