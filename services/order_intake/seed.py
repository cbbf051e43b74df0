"""Registry seed data for a local run and the demo: one therapy, two sites, one prescriber."""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy.engine import Engine
from sqlmodel import select

from services.common.unit_of_work import session_factory
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
        TreatmentCenter(
            id=DEMO_SITE,
            name="Boston Qualified Treatment Center",
            timezone="America/New_York",
            fin="B4567",
            country="US",
            contacts=json.dumps(
                [{"name": "Cell lab on call", "role": "cell_lab", "phone": "+1-617-555-0100"}]
            ),
        ),
        TreatmentCenter(
            id=UNCERTIFIED_SITE,
            name="Denver Children's (not yet qualified)",
            timezone="America/Denver",
            country="US",
        ),
        Prescriber(npi=DEMO_PRESCRIBER_NPI, name="Dr. A. Demo"),
        PrescriberSite(npi=DEMO_PRESCRIBER_NPI, treatment_center_id=DEMO_SITE),
    ]
    with session_factory(engine)() as session:
        for row in rows:
            primary = tuple(getattr(row, c.name) for c in row.__table__.primary_key.columns)  # type: ignore[attr-defined]
            existing = session.get(type(row), primary if len(primary) > 1 else primary[0])
            if existing is None:
                session.add(row)
            elif isinstance(row, TreatmentCenter) and isinstance(existing, TreatmentCenter):
                existing.country = existing.country or row.country  # a seed from before countries
        session.flush()
        certified = session.exec(
            select(SiteCertification.id)
            .where(SiteCertification.treatment_center_id == DEMO_SITE)
            .where(SiteCertification.therapy_code == WASKYRA)
        ).first()
        if certified is None:
            session.add(
                SiteCertification(
                    treatment_center_id=DEMO_SITE, therapy_code=WASKYRA, effective_on=date(2026, 1, 1)
                )
            )
        session.commit()
