"""HL7 FHIR R4 views of appointments and slots, built and validated with `fhir.resources` (its R4B
models: the official R4 examples validate with them). The project enforces the status codes FHIR leaves
open (docs/fhir.md): Appointment `pending` → `booked`, Slot `busy-tentative` → `busy`; a held appointment
stays `pending` with the hold extension (its cause and reason) and its Slot is `busy-unavailable`; an
open alert adds the at-risk extension, whatever the status; a product released out of specification
tags the Appointment (`meta.tag`, `OUT_OF_SPECIFICATION_TAG`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.location import Location as FhirLocation
from fhir.resources.R4B.schedule import Schedule as FhirSchedule
from fhir.resources.R4B.slot import Slot as FhirSlot

from services.common import fhir
from services.common.fhir import COI_SYSTEM, EXTENSIONS
from services.scheduling.domain import (
    FHIR_APPOINTMENT_STATUS,
    FHIR_SLOT_STATUS,
    AppointmentState,
    SiteCalendar,
)
from services.scheduling.models import Appointment, Case, Site, SlotAlert

INFUSION_CHAIR = (time(8, 0), time(12, 0))
"""The infusion chair is booked for the morning of day 0, site-local."""
HOLD_EXTENSION = f"{EXTENSIONS}/appointment-hold"
"""On a held appointment: why (a coding of the cause, and the reason as text). R4 has no status for it."""
AT_RISK_EXTENSION = f"{EXTENSIONS}/appointment-at-risk"
"""On an appointment with an alert no coordinator has resolved yet: the cause and what it did."""
RISK_CAUSE_SYSTEM = "https://cgt-logistics.example/fhir/CodeSystem/slot-risk-cause"
SPECIFICATION_SYSTEM = "https://cgt-logistics.example/fhir/CodeSystem/product-specification"
OUT_OF_SPECIFICATION_TAG = {
    "system": SPECIFICATION_SYSTEM,
    "code": "out-of-specification",
    "display": "Product released out of specification",
}
"""In `meta.tag` of an appointment whose product was released out of specification: a tag any FHIR
reader shows and can search on (`_tag`), without knowing our extensions."""


def _cause(cause: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": RISK_CAUSE_SYSTEM, "code": cause}], "text": text[:500]}


def _extensions(appointment: Appointment, alerts: Sequence[SlotAlert]) -> list[dict[str, Any]]:
    extensions: list[dict[str, Any]] = []
    if appointment.state is AppointmentState.ON_HOLD:
        cause = appointment.hold_cause or "quarantine"
        extensions.append(
            {
                "url": HOLD_EXTENSION,
                "valueCodeableConcept": _cause(cause, appointment.hold_reason or "on hold"),
            }
        )
    for alert in alerts:
        extensions.append(
            {"url": AT_RISK_EXTENSION, "valueCodeableConcept": _cause(alert.cause, alert.detail)}
        )
    return extensions


def _instant(day: date, at: time, timezone: str) -> str:
    return datetime.combine(day, at, tzinfo=ZoneInfo(timezone)).isoformat()


def appointment_resource(
    appointment: Appointment, case: Case | None, calendar: SiteCalendar, alerts: Sequence[SlotAlert] = ()
) -> dict[str, Any]:
    """`alerts`: the appointment's unresolved alerts."""
    status = FHIR_APPOINTMENT_STATUS[appointment.state]
    document: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": str(appointment.id),
        "meta": {
            "versionId": str(appointment.version),
            "lastUpdated": appointment.updated_at.isoformat(),
            **({"tag": [OUT_OF_SPECIFICATION_TAG]} if appointment.out_of_specification else {}),
        },
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
                "actor": fhir.patient_reference(case.patient_ref) if case else {"display": "unknown"},
                "status": "accepted" if status == "booked" else "needs-action",
            },
        ],
    }
    if appointment.state is AppointmentState.CANCELLED:
        document["cancelationReason"] = {"text": appointment.hold_reason or "cancelled"}
    extensions = _extensions(appointment, alerts)
    if extensions:
        document["extension"] = extensions
    return FhirAppointment.model_validate(document).model_dump(mode="json", exclude_none=True)


def slot_resource(site: Site, appointment: Appointment, calendar: SiteCalendar) -> dict[str, Any]:
    """The chair an appointment holds (a cancelled one holds none: it has no Slot)."""
    document = {
        "resourceType": "Slot",
        "id": str(appointment.id),
        "meta": {"versionId": str(appointment.version), "lastUpdated": appointment.updated_at.isoformat()},
        "schedule": {"reference": f"Schedule/{site.id}"},
        "status": FHIR_SLOT_STATUS[appointment.state],
        "start": _instant(appointment.infusion_on, INFUSION_CHAIR[0], calendar.timezone),
        "end": _instant(appointment.infusion_on, INFUSION_CHAIR[1], calendar.timezone),
        "comment": f"COI {appointment.coi}"
        + (f"; on hold ({appointment.hold_cause})" if appointment.state is AppointmentState.ON_HOLD else ""),
    }
    return FhirSlot.model_validate(document).model_dump(mode="json", exclude_none=True)


def schedule_resource(site: Site, calendar: SiteCalendar) -> dict[str, Any]:
    """A site's infusion chairs: its Slots are the chairs booked."""
    days = ", ".join(str(d) for d in sorted(calendar.working_weekdays))
    document = {
        "resourceType": "Schedule",
        "id": site.id,
        "active": True,
        "serviceType": [{"text": "Cell and gene therapy infusion"}],
        "actor": [{"reference": f"Location/{site.id}"}],
        "comment": f"{calendar.infusions_per_day} infusion chair(s) a day on ISO weekdays {days}, "
        f"from {INFUSION_CHAIR[0]:%H:%M} to {INFUSION_CHAIR[1]:%H:%M} {calendar.timezone}",
    }
    return FhirSchedule.model_validate(document).model_dump(mode="json", exclude_none=True)


def location_resource(site: Site) -> dict[str, Any]:
    """A qualified treatment center, by its id (its time zone in `description`: R4 has no element)."""
    document = {
        "resourceType": "Location",
        "id": site.id,
        "status": "active",
        "mode": "instance",
        "name": site.id,
        "description": f"Treatment center {site.id}; time zone {site.timezone}",
    }
    return FhirLocation.model_validate(document).model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------- documentation

_ID = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
APPOINTMENT_EXAMPLE: dict[str, Any] = {
    "resourceType": "Appointment",
    "id": _ID,
    "meta": {"versionId": "2", "lastUpdated": "2026-12-03T08:15:00+00:00"},
    "identifier": [{"system": COI_SYSTEM, "value": "CHW4321260000014"}],
    "status": "booked",
    "description": "Infusion (day 0); conditioning starts 2026-12-04",
    "start": "2026-12-08T08:00:00-05:00",
    "end": "2026-12-08T12:00:00-05:00",
    "created": "2026-12-01T09:00:03+00:00",
    "slot": [{"reference": f"Slot/{_ID}"}],
    "participant": [
        {"actor": {"reference": "Location/TC-BOSTON"}, "status": "accepted"},
        {
            "actor": {
                "reference": "Patient/PSN-7F3A",
                "identifier": {"system": fhir.PATIENT_REF_SYSTEM, "value": "PSN-7F3A"},
            },
            "status": "accepted",
        },
    ],
}
SLOT_EXAMPLE: dict[str, Any] = {
    "resourceType": "Slot",
    "id": _ID,
    "meta": {"versionId": "2", "lastUpdated": "2026-12-03T08:15:00+00:00"},
    "schedule": {"reference": "Schedule/TC-BOSTON"},
    "status": "busy",
    "start": "2026-12-08T08:00:00-05:00",
    "end": "2026-12-08T12:00:00-05:00",
    "comment": "COI CHW4321260000014",
}
SCHEDULE_EXAMPLE: dict[str, Any] = {
    "resourceType": "Schedule",
    "id": "TC-BOSTON",
    "active": True,
    "serviceType": [{"text": "Cell and gene therapy infusion"}],
    "actor": [{"reference": "Location/TC-BOSTON"}],
    "comment": "1 infusion chair(s) a day on ISO weekdays 1, 2, 3, 4, 5, from 08:00 to 12:00 America/New_York",
}
LOCATION_EXAMPLE: dict[str, Any] = {
    "resourceType": "Location",
    "id": "TC-BOSTON",
    "status": "active",
    "mode": "instance",
    "name": "TC-BOSTON",
    "description": "Treatment center TC-BOSTON; time zone America/New_York",
}
PATIENT_EXAMPLE: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "PSN-7F3A",
    "meta": {"lastUpdated": "2026-12-01T09:00:03+00:00"},
    "identifier": [{"system": fhir.PATIENT_REF_SYSTEM, "value": "PSN-7F3A"}],
}
