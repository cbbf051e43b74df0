"""Seeds for a local run and the demo: the development couriers of deploy/dev-tokens.json, and the signing
PINs of development QA signers (only those SEED_SIGNING_PINS names: none by default)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from cgt_contracts.envelope import utc_now
from sqlalchemy.engine import Engine

from services.coi_tracking import domain
from services.coi_tracking.models import Courier, QaSigner
from services.common.unit_of_work import session_factory

DEMO_COURIERS = (
    Courier(id="courier-ben", company="CRYO-EXPRESS", display_name="Ben Courier"),
    Courier(id="courier-cy", company="CRYO-EXPRESS", display_name="Cy Courier"),
    Courier(id="courier-dee", company="OTHER-LOGISTICS", display_name="Dee Courier"),
)


def seed_couriers(engine: Engine) -> None:
    """Insert the demo couriers that are missing (safe at every start)."""
    with session_factory(engine)() as session:
        for courier in DEMO_COURIERS:
            if session.get(Courier, courier.id) is None:
                session.add(Courier.model_validate(courier.model_dump()))
        session.commit()


def seed_signing_pins(engine: Engine, pins: Mapping[str, str]) -> None:
    """Enrol the given signers' PINs when they have no enrolment yet (a changed or reset PIN stays as it
    is). A PIN the domain's rule refuses stops the start, saying whose."""
    with session_factory(engine)() as session:
        for signer_id, pin in pins.items():
            if problems := domain.signing_pin_problems(pin, signer_id):
                raise ValueError(f"SEED_SIGNING_PINS: the PIN of {signer_id} {'; '.join(problems)}")
            if session.get(QaSigner, signer_id) is None:
                pin_hash = domain.hash_signing_pin(pin, secrets.token_bytes(domain.PIN_SALT_BYTES))
                session.add(QaSigner(signer_id=signer_id, pin_hash=pin_hash, pin_set_at=utc_now()))
        session.commit()
