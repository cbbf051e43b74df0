"""An EHR's order as FHIR R4: a `ServiceRequest` with its patient, consent and payer authorization
contained, or the same as a transaction `Bundle` (the patient a separate entry), as docs/fhir.md maps
them. Each test's patient is its own (one patient's second active order is refused)."""

from __future__ import annotations

import copy
import uuid
from datetime import date, timedelta
from typing import Any

from services.common import fhir
from services.order_intake import fhir as mapping


def a_service_request(
    site: str = "TC-BOSTON",
    *,
    therapy: str = "WASKYRA",
    npi: str = "1234567893",
    patient_ref: str | None = None,
    consent: bool = True,
    eligible: bool = True,
) -> dict[str, Any]:
    today = date.today()
    patient_ref = patient_ref or f"PSN-{uuid.uuid4().hex[:8].upper()}"
    patient = {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [
            {"system": fhir.PATIENT_REF_SYSTEM, "value": patient_ref},
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                },
                "system": "https://tc-boston.example/mrn",
                "value": f"MRN-{uuid.uuid4().hex[:8]}",
            },
        ],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "birthDate": "2019-04-02",
    }
    contained: list[dict[str, Any]] = [patient]
    supporting = []
    if consent:
        contained.append(
            {
                "resourceType": "Consent",
                "id": "consent",
                "identifier": [{"system": mapping.CONSENT_FORM_SYSTEM, "value": "WAS-ICF-2.1"}],
                "status": "active",
                "scope": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}
                    ]
                },
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": "#patient"},
                "dateTime": (today - timedelta(days=3)).isoformat(),
            }
        )
        supporting.append({"reference": "#consent"})
    contained.append(
        {
            "resourceType": "ClaimResponse",
            "id": "authorization",
            "status": "active",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}
                ]
            },
            "use": "preauthorization",
            "patient": {"reference": "#patient"},
            "created": (today - timedelta(days=5)).isoformat(),
            "insurer": {"display": "Payer"},
            "outcome": "complete",
            "preAuthRef": "PA-2026-0042",
            "preAuthPeriod": {"end": (today + timedelta(days=90)).isoformat()},
        }
    )
    supporting.append({"reference": "#authorization"})
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "contained": contained,
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": mapping.THERAPY_SYSTEM, "code": therapy}]},
        "subject": {"reference": "#patient"},
        "authoredOn": today.isoformat(),
        "requester": {"identifier": {"system": mapping.NPI_SYSTEM, "value": npi}},
        "performer": [{"identifier": {"system": mapping.TREATMENT_CENTER_SYSTEM, "value": site}}],
        "supportingInfo": supporting,
    }
    if eligible:
        request["extension"] = [{"url": mapping.ELIGIBILITY_EXTENSION, "valueBoolean": True}]
    return request


def a_transaction(request: dict[str, Any]) -> dict[str, Any]:
    """The ServiceRequest with its Patient moved out into an entry of its own, referenced by fullUrl."""
    request = copy.deepcopy(request)
    patient = next(r for r in request["contained"] if r["resourceType"] == "Patient")
    request["contained"].remove(patient)
    del patient["id"]
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    request["subject"] = {"reference": patient_url}
    for resource in request["contained"]:
        if "patient" in resource:
            resource["patient"] = {"reference": patient_url}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}},
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": request,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }
