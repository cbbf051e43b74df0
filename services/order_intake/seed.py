"""Registry seed data for a local run and the demo: one therapy, two sites, one prescriber."""

from __future__ import annotations

from datetime import date

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.order_intake.models import (
    Prescriber,
    PrescriberSite,
    SiteCertification,
    Therapy,
    TreatmentCenter,
)

WASKYRA = "WASKYRA"
DEMO_SITE = "TC-BOSTON"
UNCERTIFIED_SITE = "TC-DENVER"
DEMO_PRESCRIBER_NPI = "1234567893"


def seed_registry(engine: Engine) -> None:
    """Insert the seed rows that are missing (safe to run at every start)."""
    rows = [
        Therapy(
            code=WASKYRA,
            name="Waskyra (etuvetidigene autotemcel)",
            vector_type="lentiviral",
            long_term_follow_up=True,
            storage_limit_celsius=-150.0,
            conditioning_days=4,
        ),
        TreatmentCenter(id=DEMO_SITE, name="Boston Qualified Treatment Center", timezone="America/New_York"),
        TreatmentCenter(
            id=UNCERTIFIED_SITE, name="Denver Children's (not yet qualified)", timezone="America/Denver"
        ),
        Prescriber(npi=DEMO_PRESCRIBER_NPI, name="Dr. A. Demo"),
        PrescriberSite(npi=DEMO_PRESCRIBER_NPI, treatment_center_id=DEMO_SITE),
    ]
    with Session(engine) as session:
        for row in rows:
            primary = tuple(getattr(row, c.name) for c in row.__table__.primary_key.columns)  # type: ignore[attr-defined]
            if session.get(type(row), primary if len(primary) > 1 else primary[0]) is None:
                session.add(row)
        if session.get(SiteCertification, 1) is None:
            session.add(
                SiteCertification(
                    id=1, treatment_center_id=DEMO_SITE, therapy_code=WASKYRA, effective_on=date(2026, 1, 1)
                )
            )
        session.commit()
