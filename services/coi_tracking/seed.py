"""Courier registry seed for a local run and the demo: the development couriers of deploy/dev-tokens.json."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.coi_tracking.models import Courier

DEMO_COURIERS = (
    Courier(id="courier-ben", company="CRYO-EXPRESS", display_name="Ben Courier"),
    Courier(id="courier-cy", company="CRYO-EXPRESS", display_name="Cy Courier"),
    Courier(id="courier-dee", company="OTHER-LOGISTICS", display_name="Dee Courier"),
)


def seed_couriers(engine: Engine) -> None:
    """Insert the demo couriers that are missing (safe at every start)."""
    with Session(engine) as session:
        for courier in DEMO_COURIERS:
            if session.get(Courier, courier.id) is None:
                session.add(Courier.model_validate(courier.model_dump()))
        session.commit()
