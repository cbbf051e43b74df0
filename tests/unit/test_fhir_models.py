"""The FHIR R4B models the scheduling service validates its resources with, on resources written here: they
accept a well-formed Slot, Appointment and Schedule and refuse malformed ones (a missing required field, a
value of the wrong type; the models do not check a status against its value set) (HL7's own examples are read
in tests/conformance)."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.schedule import Schedule as FhirSchedule
from fhir.resources.R4B.slot import Slot as FhirSlot
from pydantic import ValidationError

SLOT: dict[str, Any] = {
    "resourceType": "Slot",
    "id": "slot-1",
    "schedule": {"reference": "Schedule/TC-BOSTON"},
    "status": "busy-tentative",
    "start": "2026-03-04T09:00:00+00:00",
    "end": "2026-03-04T13:00:00+00:00",
}
APPOINTMENT: dict[str, Any] = {
    "resourceType": "Appointment",
    "id": "appt-1",
    "status": "pending",
    "start": "2026-03-04T09:00:00+00:00",
    "end": "2026-03-04T13:00:00+00:00",
    "slot": [{"reference": "Slot/slot-1"}],
    "participant": [
        {"actor": {"reference": "Location/TC-BOSTON"}, "status": "accepted"},
        {"actor": {"reference": "Patient/PSN-1"}, "status": "needs-action"},
    ],
}
SCHEDULE: dict[str, Any] = {
    "resourceType": "Schedule",
    "id": "TC-BOSTON",
    "active": True,
    "actor": [{"reference": "Location/TC-BOSTON"}],
}


def test_well_formed_resources_are_accepted() -> None:
    assert FhirSlot.model_validate(SLOT).status == "busy-tentative"
    assert FhirAppointment.model_validate(APPOINTMENT).status == "pending"
    assert FhirSchedule.model_validate(SCHEDULE).actor[0].reference == "Location/TC-BOSTON"


@pytest.mark.parametrize(
    ("model", "resource"),
    [
        (FhirSlot, {k: v for k, v in SLOT.items() if k != "status"}),
        (FhirSlot, {**SLOT, "overbooked": "yes please"}),
        (FhirSlot, {k: v for k, v in SLOT.items() if k != "schedule"}),
        (FhirSlot, {**SLOT, "start": "4 March 2026"}),
        (FhirAppointment, {k: v for k, v in APPOINTMENT.items() if k != "status"}),
        (FhirAppointment, {k: v for k, v in APPOINTMENT.items() if k != "participant"}),
        (FhirSchedule, {k: v for k, v in SCHEDULE.items() if k != "actor"}),
    ],
)
def test_malformed_resources_are_refused(model: Any, resource: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(resource)
