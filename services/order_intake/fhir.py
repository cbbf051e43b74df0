"""Orders as HL7 FHIR R4 `ServiceRequest`s, both ways (the mapping is in docs/fhir.md).

In: an EHR's `ServiceRequest` (posted alone with its `Patient` contained, or in a transaction `Bundle`
beside it) becomes the same `commands.NewOrder` that `POST /orders` builds, so every check of an order
is the command's. Every piece the order needs that the resource lacks is one `FieldError`, named by its
place in the resource (`/contained/0/birthDate`), all of them at once.

Out: an order as a `ServiceRequest` whose `status` follows the order's, with its COI identifier as an
`identifier`; its patient is `Patient/<patient_ref>` (`fhir.patient_resource`: the pseudonymous
reference only — the identity stays encrypted in order intake, never served, I6).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest as FhirServiceRequest
from pydantic import ValidationError

from services.common import fhir, problems
from services.common.problems import FieldError
from services.order_intake import commands
from services.order_intake.domain import OrderStatus
from services.order_intake.models import Order, OrderTransition

THERAPY_SYSTEM = "https://cgt-logistics.example/fhir/CodeSystem/therapy"
"""`ServiceRequest.code`: the therapy, by the code the registry knows it by (`WASKYRA`)."""
TREATMENT_CENTER_SYSTEM = "https://cgt-logistics.example/fhir/NamingSystem/treatment-center"
"""`ServiceRequest.performer` (an Organization by identifier): the treatment center that infuses."""
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
"""`ServiceRequest.requester` (a Practitioner by identifier): the prescriber's NPI."""
MRN_TYPE = "MR"
"""`Patient.identifier.type` (v2-0203) of the medical record number."""
CONSENT_FORM_SYSTEM = "https://cgt-logistics.example/fhir/NamingSystem/consent-form"
"""`Consent.identifier`: the version of the consent form the patient signed (`WAS-ICF-2.1`)."""
ELIGIBILITY_EXTENSION = f"{fhir.EXTENSIONS}/eligibility-attested"
"""On the ServiceRequest, `valueBoolean`: the prescriber attests the patient's clinical eligibility."""

SERVICE_REQUEST_STATUS: Mapping[OrderStatus, str] = {
    OrderStatus.SUBMITTED: "draft",
    OrderStatus.ACCEPTED: "active",
    OrderStatus.CELLS_COLLECTED: "active",
    OrderStatus.IN_MANUFACTURING: "active",
    OrderStatus.PRODUCT_RELEASED: "active",
    OrderStatus.PRODUCT_SHIPPED: "active",
    OrderStatus.PRODUCT_DELIVERED: "active",
    OrderStatus.MANUFACTURING_FAILED: "active",
    OrderStatus.INFUSED: "completed",
    OrderStatus.IN_FOLLOW_UP: "completed",
    OrderStatus.CLOSED: "completed",
    OrderStatus.REJECTED: "revoked",
    OrderStatus.CANCELLED: "revoked",
}
"""FHIR's request status of each order status: active from acceptance until the infusion, which
completes it (the follow-up is the Appointment's and the visits', not the order's); a rejected or
cancelled order is revoked. A failed lot keeps the order active: the case is collected again."""
ORDER_STATUS_SYSTEM = "https://cgt-logistics.example/fhir/CodeSystem/order-status"
"""`ServiceRequest.extension` `order-status`: the order's own, finer status beside FHIR's."""
ORDER_STATUS_EXTENSION = f"{fhir.EXTENSIONS}/order-status"


# ---------------------------------------------------------------- in


@dataclass(frozen=True)
class Resolved:
    """A referenced resource and where it sits in what was posted (for the errors' pointers)."""

    resource: Mapping[str, Any]
    pointer: list[str | int]


class References:
    """Resolves the references of a posted ServiceRequest: `#id` to its contained resources, and in a
    transaction Bundle a `fullUrl` (`urn:uuid:…`) to the Bundle's entries."""

    def __init__(
        self,
        request: Mapping[str, Any],
        request_pointer: list[str | int],
        bundle_entries: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self._local = {
            f"#{r.get('id')}": Resolved(r, [*request_pointer, "contained", i])
            for i, r in enumerate(request.get("contained") or [])
            if isinstance(r, Mapping)
        }
        self._bundle = {
            str(e.get("fullUrl")): Resolved(e.get("resource") or {}, ["entry", i, "resource"])
            for i, e in enumerate(bundle_entries)
            if isinstance(e, Mapping) and e.get("fullUrl")
        }

    def resolve(self, reference: Any, resource_type: str) -> Resolved | None:
        if not isinstance(reference, Mapping):
            return None
        target = self._local.get(str(reference.get("reference"))) or self._bundle.get(
            str(reference.get("reference"))
        )
        if target is None or target.resource.get("resourceType") != resource_type:
            return None
        return target


def _error(where: Sequence[str | int], detail: str) -> FieldError:
    return FieldError(pointer=problems.pointer(where), detail=detail)


def _identifier(identifiers: Any, system: str) -> str | None:
    for identifier in identifiers or []:
        if isinstance(identifier, Mapping) and identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    return None


def _typed_identifier(identifiers: Any, type_code: str) -> str | None:
    for identifier in identifiers or []:
        codings = (
            ((identifier.get("type") or {}).get("coding") or []) if isinstance(identifier, Mapping) else []
        )
        if any(c.get("code") == type_code for c in codings) and identifier.get("value"):
            return str(identifier["value"])
    return None


def _logical(reference: Any, system: str) -> str | None:
    """The identifier of a logical reference (`{"identifier": {"system": …, "value": …}}`)."""
    if isinstance(reference, Mapping) and isinstance(reference.get("identifier"), Mapping):
        return _identifier([reference["identifier"]], system)
    return None


def _coded(concept: Any, system: str) -> str | None:
    for coding in (concept or {}).get("coding") or [] if isinstance(concept, Mapping) else []:
        if coding.get("system") == system and coding.get("code"):
            return str(coding["code"])
    return None


def _patient_name(patient: Mapping[str, Any]) -> str | None:
    for name in patient.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("given") or []), name.get("family") or ""]
        text = " ".join(p for p in parts if p)
        if text:
            return text
    return None


def _date(raw: Any) -> date | None:
    """A FHIR date or dateTime's day (`2026-11-20`, `2026-11-20T10:00:00+01:00`); None if unreadable."""
    if not isinstance(raw, str) or len(raw) < 10:
        return None
    try:
        return date.fromisoformat(raw[:10])
    except ValueError:
        return None


def _extension_boolean(resource: Mapping[str, Any], url: str) -> bool:
    return any(e.get("url") == url and e.get("valueBoolean") is True for e in resource.get("extension") or [])


def _supporting(references: References, request: Mapping[str, Any], resource_type: str) -> Resolved | None:
    for reference in request.get("supportingInfo") or []:
        found = references.resolve(reference, resource_type)
        if found is not None:
            return found
    return None


def new_order(
    request: Mapping[str, Any], references: References, at: Sequence[str | int] = ()
) -> commands.NewOrder:
    """The order a validated ServiceRequest asks for, or `ProblemError` (422) naming every missing
    piece. The patient's identity (name, date of birth, record number) comes from the referenced
    Patient; consent from a supporting `Consent`, the payer authorization from a supporting
    `ClaimResponse` (preauthorization); missing consent or authorization is not an error here: the
    command rejects the order for it, with the other failed checks."""
    where = list(at)
    errors: list[FieldError] = []
    if request.get("intent") not in ("order", "original-order"):
        errors.append(_error([*where, "intent"], "an order: intent 'order'"))
    patient = references.resolve(request.get("subject"), "Patient")
    name = date_of_birth = mrn = patient_ref = None
    if patient is None:
        errors.append(_error([*where, "subject"], "a Patient, contained or in the transaction Bundle"))
    else:
        identifiers = patient.resource.get("identifier")
        patient_ref = _identifier(identifiers, fhir.PATIENT_REF_SYSTEM)
        mrn = _typed_identifier(identifiers, MRN_TYPE)
        name, date_of_birth = _patient_name(patient.resource), _date(patient.resource.get("birthDate"))
        missing = [
            (patient_ref, "identifier", f"the pseudonymous reference (system {fhir.PATIENT_REF_SYSTEM})"),
            (mrn, "identifier", "the medical record number (type MR)"),
            (name, "name", "the patient's name"),
            (date_of_birth, "birthDate", "the patient's date of birth"),
        ]
        errors += [_error([*patient.pointer, field], detail) for value, field, detail in missing if not value]
    therapy = _coded(request.get("code"), THERAPY_SYSTEM)
    if therapy is None:
        errors.append(_error([*where, "code"], f"the therapy, coded in {THERAPY_SYSTEM}"))
    site = next(
        (s for s in (_logical(p, TREATMENT_CENTER_SYSTEM) for p in request.get("performer") or []) if s), None
    )
    if site is None:
        errors.append(
            _error([*where, "performer"], f"the treatment center, by identifier {TREATMENT_CENTER_SYSTEM}")
        )
    npi = _logical(request.get("requester"), NPI_SYSTEM)
    if npi is None:
        errors.append(_error([*where, "requester"], f"the prescriber, by identifier {NPI_SYSTEM}"))
    if errors:
        raise problems.validation_problem(errors)
    assert patient_ref and name and date_of_birth and mrn and therapy and site and npi
    consent = _supporting(references, request, "Consent")
    authorization = _supporting(references, request, "ClaimResponse")
    form_version = _identifier(consent.resource.get("identifier"), CONSENT_FORM_SYSTEM) if consent else None
    return commands.NewOrder(
        patient_ref=patient_ref,
        patient=commands.PatientIdentity(name=name, date_of_birth=date_of_birth, medical_record_number=mrn),
        therapy_code=therapy,
        treatment_center_id=site,
        prescriber_npi=npi,
        consent_signed_on=_date(consent.resource.get("dateTime")) if consent and form_version else None,
        consent_form_version=form_version if consent and _date(consent.resource.get("dateTime")) else None,
        payer_authorization_reference=_authorization_reference(authorization),
        payer_authorization_expires_on=_authorization_end(authorization),
        eligibility_attested=_extension_boolean(request, ELIGIBILITY_EXTENSION),
        stated_ordered_on=_date(request.get("authoredOn")),
    )


def _authorization_reference(authorization: Resolved | None) -> str | None:
    if authorization is None or authorization.resource.get("use") != "preauthorization":
        return None
    if _authorization_end(authorization) is None:
        return None
    reference = authorization.resource.get("preAuthRef")
    return str(reference) if reference else None


def _authorization_end(authorization: Resolved | None) -> date | None:
    if authorization is None or not authorization.resource.get("preAuthRef"):
        return None
    return _date((authorization.resource.get("preAuthPeriod") or {}).get("end"))


def validated(resource: Any, model: type[Any], at: Sequence[str | int] = ()) -> dict[str, Any]:
    """The resource if it is valid FHIR R4 of `model`'s type, else 422 naming each invalid element."""
    if not isinstance(resource, dict) or resource.get("resourceType") != model.__name__:
        raise problems.validation_problem([_error([*at, "resourceType"], f"a {model.__name__}")])
    try:
        model.model_validate(resource)
    except ValidationError as invalid:
        raise problems.validation_problem(
            problems.field_errors([{**e, "loc": (*at, *e["loc"])} for e in invalid.errors()])
        ) from invalid
    return resource


def service_request_of(posted: Any) -> tuple[dict[str, Any], References]:
    """A posted ServiceRequest, checked as FHIR, with its references resolved in itself."""
    request = validated(posted, FhirServiceRequest)
    return request, References(request, [])


def transaction_of(posted: Any) -> tuple[dict[str, Any], References, list[str | int]]:
    """The one ServiceRequest a transaction Bundle orders, with references resolved in the Bundle. A
    transaction orders one case: its ServiceRequest and the resources it references (Patient, Consent,
    ClaimResponse); anything else is refused (422), nothing written."""
    bundle = validated(posted, Bundle)
    if bundle.get("type") != "transaction":
        raise problems.validation_problem([_error(["type"], "a transaction Bundle")])
    entries = bundle.get("entry") or []
    requests = [
        i for i, e in enumerate(entries) if (e.get("resource") or {}).get("resourceType") == "ServiceRequest"
    ]
    if len(requests) != 1:
        raise problems.validation_problem(
            [_error(["entry"], "exactly one ServiceRequest: one order per transaction")]
        )
    errors = [
        _error(["entry", i, "request", "method"], "POST (a create)")
        for i, e in enumerate(entries)
        if (e.get("request") or {}).get("method") != "POST"
    ]
    errors += [
        _error(
            ["entry", i, "resource", "resourceType"], "a ServiceRequest, Patient, Consent or ClaimResponse"
        )
        for i, e in enumerate(entries)
        if (e.get("resource") or {}).get("resourceType")
        not in ("ServiceRequest", "Patient", "Consent", "ClaimResponse")
    ]
    if errors:
        raise problems.validation_problem(errors)
    at: list[str | int] = ["entry", requests[0], "resource"]
    request = entries[requests[0]]["resource"]
    return request, References(request, at, entries), at


# ---------------------------------------------------------------- out


def service_request(order: Order, history: Sequence[OrderTransition]) -> dict[str, Any]:
    """The order as a ServiceRequest: version = its number of steps, `lastUpdated` its latest."""
    document: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(order.id),
        "meta": {
            "versionId": str(max(len(history), 1)),
            "lastUpdated": (history[-1].at if history else order.created_at).isoformat(),
        },
        "extension": [
            {
                "url": ORDER_STATUS_EXTENSION,
                "valueCoding": {"system": ORDER_STATUS_SYSTEM, "code": order.status.value},
            }
        ],
        "status": SERVICE_REQUEST_STATUS[order.status],
        "intent": "order",
        "code": {"coding": [{"system": THERAPY_SYSTEM, "code": order.therapy_code}]},
        "subject": fhir.patient_reference(order.patient_ref),
        "authoredOn": (order.stated_ordered_on or order.ordered_on).isoformat(),
        "requester": {"identifier": {"system": NPI_SYSTEM, "value": order.prescriber_npi}},
        "performer": [
            {"identifier": {"system": TREATMENT_CENTER_SYSTEM, "value": order.treatment_center_id}}
        ],
    }
    if order.coi:
        document["identifier"] = [{"system": fhir.COI_SYSTEM, "value": order.coi}]
    reasons = json.loads(order.rejection_reasons or "[]")
    if reasons:
        document["note"] = [{"text": f"rejected: {r['code']}: {r['message']}"} for r in reasons]
    if order.cancelled_reason_code:
        document["note"] = [{"text": f"cancelled: {order.cancelled_reason_code}"}]
    return FhirServiceRequest.model_validate(document).model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------- documentation

SERVICE_REQUEST_EXAMPLE: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "contained": [
        {
            "resourceType": "Patient",
            "id": "patient",
            "identifier": [
                {"system": fhir.PATIENT_REF_SYSTEM, "value": "PSN-7F3A"},
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    "system": "https://tc-boston.example/mrn",
                    "value": "MRN-12345",
                },
            ],
            "name": [{"family": "Doe", "given": ["Jane"]}],
            "birthDate": "2019-04-02",
        },
        {
            "resourceType": "Consent",
            "id": "consent",
            "identifier": [{"system": CONSENT_FORM_SYSTEM, "value": "WAS-ICF-2.1"}],
            "status": "active",
            "scope": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "#patient"},
            "dateTime": "2026-11-20",
        },
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
            "created": "2026-11-18",
            "insurer": {"display": "Payer"},
            "outcome": "complete",
            "preAuthRef": "PA-2026-0042",
            "preAuthPeriod": {"end": "2027-03-31"},
        },
    ],
    "extension": [{"url": ELIGIBILITY_EXTENSION, "valueBoolean": True}],
    "status": "active",
    "intent": "order",
    "code": {"coding": [{"system": THERAPY_SYSTEM, "code": "WASKYRA"}]},
    "subject": {"reference": "#patient"},
    "authoredOn": "2026-11-23",
    "requester": {"identifier": {"system": NPI_SYSTEM, "value": "1234567893"}},
    "performer": [{"identifier": {"system": TREATMENT_CENTER_SYSTEM, "value": "TC-BOSTON"}}],
    "supportingInfo": [{"reference": "#consent"}, {"reference": "#authorization"}],
}
"""An EHR's order, as docs/fhir.md maps it (the README's walkthrough posts the same)."""
CREATED_EXAMPLE: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "id": "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b",
    "meta": {"versionId": "2", "lastUpdated": "2026-11-23T10:15:02.120000+00:00"},
    "extension": [
        {"url": ORDER_STATUS_EXTENSION, "valueCoding": {"system": ORDER_STATUS_SYSTEM, "code": "accepted"}}
    ],
    "identifier": [{"system": fhir.COI_SYSTEM, "value": "CHW4321260000014"}],
    "status": "active",
    "intent": "order",
    "code": {"coding": [{"system": THERAPY_SYSTEM, "code": "WASKYRA"}]},
    "subject": {
        "reference": "Patient/PSN-7F3A",
        "identifier": {"system": fhir.PATIENT_REF_SYSTEM, "value": "PSN-7F3A"},
    },
    "authoredOn": "2026-11-23",
    "requester": {"identifier": {"system": NPI_SYSTEM, "value": "1234567893"}},
    "performer": [{"identifier": {"system": TREATMENT_CENTER_SYSTEM, "value": "TC-BOSTON"}}],
}
PATIENT_EXAMPLE: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "PSN-7F3A",
    "meta": {"lastUpdated": "2026-11-23T10:15:02.120000+00:00"},
    "identifier": [{"system": fhir.PATIENT_REF_SYSTEM, "value": "PSN-7F3A"}],
}
TRANSACTION_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:6d1f2e3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a",
            "resource": {k: v for k, v in SERVICE_REQUEST_EXAMPLE["contained"][0].items() if k != "id"},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": "urn:uuid:7e2a3b4c-5d6e-4f7a-8b9c-0d1e2f3a4b5c",
            "resource": {
                **SERVICE_REQUEST_EXAMPLE,
                "contained": SERVICE_REQUEST_EXAMPLE["contained"][1:],
                "subject": {"reference": "urn:uuid:6d1f2e3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a"},
            },
            "request": {"method": "POST", "url": "ServiceRequest"},
        },
    ],
}
TRANSACTION_RESPONSE_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [
        {
            "fullUrl": f"http://127.0.0.1:8001/fhir/ServiceRequest/{CREATED_EXAMPLE['id']}",
            "resource": CREATED_EXAMPLE,
            "response": {
                "status": "201 Created",
                "location": f"http://127.0.0.1:8001/fhir/ServiceRequest/{CREATED_EXAMPLE['id']}/_history/2",
            },
        },
        {
            "fullUrl": "http://127.0.0.1:8001/fhir/Patient/PSN-7F3A",
            "response": {"status": "200 OK", "location": "Patient/PSN-7F3A"},
        },
    ],
}
