"""An EHR's order as FHIR R4: the `ServiceRequest` of the API's own example (patient, consent and payer
authorization contained; `services/order_intake/fhir.py`), for a patient of each test's own (one patient's
second active order is refused) and dated from today, or the same as a transaction `Bundle` with the
patient as an entry of its own."""

from __future__ import annotations

import copy
import uuid
from datetime import date, timedelta
from typing import Any

from services.order_intake import fhir as mapping


def a_service_request(
    site: str = "TC-BOSTON",
    *,
    npi: str = "1234567893",
    patient_ref: str | None = None,
    consent: bool = True,
    eligible: bool = True,
) -> dict[str, Any]:
    today = date.today()
    request = copy.deepcopy(mapping.SERVICE_REQUEST_EXAMPLE)
    patient, signed, authorization = request["contained"]
    patient["identifier"][0]["value"] = patient_ref or f"PSN-{uuid.uuid4().hex[:8].upper()}"
    patient["identifier"][1]["value"] = f"MRN-{uuid.uuid4().hex[:8]}"
    signed["dateTime"] = (today - timedelta(days=3)).isoformat()
    authorization["created"] = (today - timedelta(days=5)).isoformat()
    authorization["preAuthPeriod"]["end"] = (today + timedelta(days=90)).isoformat()
    request["authoredOn"] = today.isoformat()
    request["requester"]["identifier"]["value"] = npi
    request["performer"][0]["identifier"]["value"] = site
    if not consent:
        request["contained"].remove(signed)
        request["supportingInfo"] = [{"reference": "#authorization"}]
    if not eligible:
        del request["extension"]
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
