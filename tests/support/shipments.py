"""COI tracking's shipments as tests need them, written straight to its database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cgt_contracts.events import ShipmentLeg
from sqlalchemy.engine import Engine

from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import Bag, Container, Shipment
from services.common.identifiers import coi_identifier
from services.common.unit_of_work import session_factory


def planned_shipments(engine: Engine, count: int) -> list[Shipment]:
    """`count` return shipments in transit (their product released), held by courier-ben, each with a
    container and one bag."""
    shipments = []
    with session_factory(engine)(expire_on_commit=False) as session:
        for n in range(count):
            coi = coi_identifier("W0000", 2026, n)
            shipment = Shipment(
                order_id=uuid.uuid4(),
                coi=coi,
                leg=ShipmentLeg.RETURN,
                treatment_center_id="TC-BOSTON",
                courier_company="CRYO-EXPRESS",
                storage_limit_celsius=-150.0,
                destination="TC-BOSTON",
                custodian="courier-ben",
                status=ShipmentStatus.IN_TRANSIT,
                physical_status=ShipmentStatus.IN_TRANSIT,
                dispatched_at=datetime.now(UTC),
                product_released_at=datetime.now(UTC),
                eta_at=datetime.now(UTC) + timedelta(days=2),
            )
            session.add(shipment)
            session.flush()
            session.add(Container(id=f"DS-T{n}", shipment_id=shipment.id))
            session.add(Bag(shipment_id=shipment.id, coi=coi, number=1, of=1))
            shipments.append(shipment)
        session.commit()
    return shipments
