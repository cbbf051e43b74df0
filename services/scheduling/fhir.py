"""HL7 FHIR R4 views of appointments and slots, built and validated with `fhir.resources` (its R4B
models: the official R4 examples validate with them). The project enforces the status codes FHIR leaves
open: Slot `busy-tentative` while held, `busy` when confirmed; Appointment `pending` → `booked`."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.slot import Slot as FhirSlot

from services.scheduling.domain import (
    FHIR_APPOINTMENT_STATUS,
    FHIR_SLOT_STATUS,
    AppointmentState,
    SiteCalendar,
)
from services.scheduling.models import Appointment, Case, Site

INFUSION_CHAIR = (time(8, 0), time(12, 0))
"""The infusion chair is booked for the morning of day 0, site-local."""
COI_SYSTEM = "https://www.isbt128.org/uri/ChainOfIdentity"


def _instant(day: date, at: time, timezone: str) -> str:
    return datetime.combine(day, at, tzinfo=ZoneInfo(timezone)).isoformat()


def appointment_resource(
    appointment: Appointment, case: Case | None, calendar: SiteCalendar
) -> dict[str, Any]:
    status = FHIR_APPOINTMENT_STATUS[appointment.state]
    document: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": str(appointment.id),
        "meta": {"versionId": str(appointment.version), "lastUpdated": appointment.updated_at.isoformat()},
        "identifier": [{"system": COI_SYSTEM, "value": appointment.coi}],
        "status": status,
        "description": f"Infusion (day 0); conditioning starts {appointment.conditioning_start_on.isoformat()}",
        "start": _instant(appointment.infusion_on, INFUSION_CHAIR[0], calendar.timezone),
        "end": _instant(appointment.infusion_on, INFUSION_CHAIR[1], calendar.timezone),
        "created": appointment.created_at.isoformat(),
        "slot": [{"reference": f"Slot/{appointment.id}"}],
        "participant": [
            {"actor": {"reference": f"Location/{appointment.treatment_center_id}"}, "status": "accepted"},
            {
                "actor": {"reference": f"Patient/{case.patient_ref if case else 'unknown'}"},
                "status": "accepted" if status == "booked" else "needs-action",
            },
        ],
    }
    if appointment.state is AppointmentState.CANCELLED:
        document["cancelationReason"] = {"text": appointment.hold_reason or "cancelled"}
    return FhirAppointment.model_validate(document).model_dump(mode="json", exclude_none=True)


def slot_resource(site: Site, appointment: Appointment, calendar: SiteCalendar) -> dict[str, Any]:
    document = {
        "resourceType": "Slot",
        "id": str(appointment.id),
        "schedule": {"reference": f"Schedule/{site.id}"},
        "status": FHIR_SLOT_STATUS[appointment.state],
        "start": _instant(appointment.infusion_on, INFUSION_CHAIR[0], calendar.timezone),
        "end": _instant(appointment.infusion_on, INFUSION_CHAIR[1], calendar.timezone),
        "comment": f"COI {appointment.coi}",
    }
    return FhirSlot.model_validate(document).model_dump(mode="json", exclude_none=True)


def slot_bundle(site: Site, appointments: list[Appointment] | Any, calendar: SiteCalendar) -> dict[str, Any]:
    entries = [
        {"resource": slot_resource(site, a, calendar), "fullUrl": f"Slot/{a.id}"}
        for a in appointments
        if a.state in FHIR_SLOT_STATUS
    ]
    document = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    return Bundle.model_validate(document).model_dump(mode="json", exclude_none=True)
