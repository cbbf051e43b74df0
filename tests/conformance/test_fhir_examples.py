"""HL7's official FHIR R4 examples (CONFORMANCE_DIR/fhir/R4) read with the R4B models the scheduling service
builds its resources with, and carrying the fields the service's resources share with them
(tests/e2e/test_scheduling.py checks the service's side)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.schedule import Schedule as FhirSchedule
from fhir.resources.R4B.slot import Slot as FhirSlot

from tests.conformance.material import FHIR_R4_DIR
from tests.e2e.test_scheduling import APPOINTMENT_FIELDS, SLOT_FIELDS


def _official(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FHIR_R4_DIR / name).read_text())
    return document


def test_the_official_appointment_is_valid_and_has_the_fields_ours_have() -> None:
    official = _official("Appointment-example.json")
    FhirAppointment.model_validate(official)
    assert set(official) >= APPOINTMENT_FIELDS


@pytest.mark.parametrize("example", ["Slot-example.json", "Slot-1.json", "Slot-3.json"])
def test_the_official_slots_are_valid_and_have_the_fields_ours_have(example: str) -> None:
    reference = _official(example)
    FhirSlot.model_validate(reference)
    assert set(reference) >= SLOT_FIELDS


@pytest.mark.parametrize(
    "example", ["Schedule-example.json", "Schedule-exampleloc1.json", "Schedule-exampleloc2.json"]
)
def test_the_official_schedules_are_valid(example: str) -> None:
    assert FhirSchedule.model_validate(_official(example)).get_resource_type() == "Schedule"
