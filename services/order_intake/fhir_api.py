"""Order intake's HL7 FHIR R4 interface (`/fhir`): an EHR places an order as a `ServiceRequest`, alone
or in a transaction `Bundle`, reads it back with the order's status, and resolves its `Patient`. The
order goes through the same `commands.place_order` as `POST /orders`; errors are `OperationOutcome`s
(`services.common.fhir`). docs/fhir.md maps each element."""

from __future__ import annotations

import json
from typing import Annotated, Any
from uuid import UUID

from fastapi import Path, Request, Response, status
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest
from sqlmodel import Session, col, select

from services.common import fhir, problems
from services.order_intake import commands
from services.order_intake import fhir as mapping
from services.order_intake.api import (
    IssuerDep,
    OrderingCaller,
    SessionDep,
    caller_of,
    command_answers,
)
from services.order_intake.models import Order

router = fhir.router()

RESOURCES = (
    fhir.ResourceCapability(
        type="ServiceRequest",
        interactions=("create", "read", "search-type"),
        documentation="A therapy order: created as the order (every check of POST /orders), read with "
        "the order's status; its COI identifier is an identifier",
        search_parameters=(
            fhir.SearchParameter("identifier", "token", f"The COI identifier ({fhir.COI_SYSTEM}|<coi>)"),
            fhir.SearchParameter("patient", "reference", "Patient/<patient_ref>"),
        ),
    ),
    fhir.PSEUDONYMOUS_PATIENT,
)
SYSTEM_INTERACTIONS = ("transaction",)


@router.get(
    "/metadata", summary="FHIR CapabilityStatement", responses=fhir.documented(fhir.CAPABILITY_EXAMPLE)
)
def metadata(request: Request) -> Response:
    """What this FHIR base serves, exactly: ServiceRequest (create, read, search), Patient (read), and
    transaction Bundles ordering one case."""
    statement = fhir.capability_statement(
        request, service="order intake", resources=RESOURCES, system_interactions=SYSTEM_INTERACTIONS
    )
    return fhir.FhirJSONResponse(statement)


async def _posted(request: Request) -> Any:
    return json.loads(await request.body())  # admitted by the edge: UTF-8 JSON within the limit


def _created(request: Request, session: Session, order: Order) -> Response:
    """201 with the ServiceRequest, or 422 listing every failed check of a rejected order (which is
    recorded, as `POST /orders` records it, and readable at the ServiceRequest the outcome names)."""
    resource = mapping.service_request(order, commands.history_of(session, order))
    location = f"{fhir.base_url(request)}/ServiceRequest/{order.id}/_history/{resource['meta']['versionId']}"
    reasons = json.loads(order.rejection_reasons or "[]")
    if reasons:
        raise problems.ProblemError(
            422,
            f"the order is recorded as rejected: ServiceRequest/{order.id}",
            title="The order fails its checks",
            reasons=[f"{r['code']}: {r['message']}" for r in reasons],
            headers={"Content-Location": location},
        )
    return fhir.FhirJSONResponse(
        resource, status_code=201, headers={"Location": location, "ETag": fhir.version_tag(resource)}
    )


@router.post(
    "/ServiceRequest",
    summary="Place an order as a FHIR ServiceRequest",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=fhir.body(mapping.SERVICE_REQUEST_EXAMPLE),
    responses={**fhir.documented(mapping.CREATED_EXAMPLE, 201, "Created"), **problems.documented(403, 409)},
)
async def create_service_request(
    request: Request, session: SessionDep, caller: OrderingCaller, issuer: IssuerDep
) -> Response:
    """The order a `ServiceRequest` asks for, its patient a contained `Patient`: the same checks as
    `POST /orders`. 201 with the created ServiceRequest (its COI as an `identifier`); 422 with an
    `OperationOutcome` listing every missing element, or every failed check of an order recorded as
    rejected; 409 for a second active order for the patient."""
    posted, references = mapping.service_request_of(await _posted(request))
    new = mapping.new_order(posted, references)
    with command_answers():
        order = commands.place_order(session, new, caller_of(caller), issuer, request.state.correlation_id)
    session.commit()
    return _created(request, session, order)


@router.post(
    "",
    summary="Place an order as a FHIR transaction Bundle",
    openapi_extra=fhir.body(mapping.TRANSACTION_EXAMPLE),
    responses={**fhir.documented(mapping.TRANSACTION_RESPONSE_EXAMPLE), **problems.documented(403, 409)},
)
async def transaction(
    request: Request, session: SessionDep, caller: OrderingCaller, issuer: IssuerDep
) -> Response:
    """A transaction `Bundle` ordering one case: its `ServiceRequest` and the resources it references by
    `fullUrl` (`Patient`, and the `Consent` and `ClaimResponse` it cites as supportingInfo), all POST.
    Answered with a `transaction-response` Bundle (the ServiceRequest's entry `201 Created` with its
    location), or an `OperationOutcome` as for a single ServiceRequest; nothing is written then but a
    rejected order."""
    posted, references, at = mapping.transaction_of(await _posted(request))
    mapping.validated(posted, ServiceRequest, at)
    new = mapping.new_order(posted, references, at)
    with command_answers():
        order = commands.place_order(session, new, caller_of(caller), issuer, request.state.correlation_id)
    session.commit()
    created = _created(request, session, order)
    resource = json.loads(bytes(created.body))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "fullUrl": f"{fhir.base_url(request)}/ServiceRequest/{order.id}",
                "resource": resource,
                "response": {"status": "201 Created", "location": created.headers["location"]},
            },
            {
                "fullUrl": f"{fhir.base_url(request)}/Patient/{order.patient_ref}",
                "response": {"status": "200 OK", "location": f"Patient/{order.patient_ref}"},
            },
        ],
    }
    return fhir.FhirJSONResponse(Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True))


@router.get(
    "/ServiceRequest/{order_id}",
    summary="Read an order as a FHIR ServiceRequest",
    responses=fhir.documented(mapping.CREATED_EXAMPLE),
)
def read_service_request(
    order_id: UUID, request: Request, session: SessionDep, caller: OrderingCaller
) -> Response:
    """The order as a ServiceRequest: `status` from the order's (docs/fhir.md), the order's own in the
    `order-status` extension, the COI identifier once accepted. `ETag`/`Last-Modified` from its steps."""
    with command_answers():
        order = commands.visible_order(session, order_id, caller_of(caller).site_scope)
    return fhir.read_response(request, mapping.service_request(order, commands.history_of(session, order)))


@router.get(
    "/ServiceRequest",
    summary="Search orders as FHIR ServiceRequests",
    responses=fhir.documented(fhir.searchset_example(mapping.CREATED_EXAMPLE)),
)
def search_service_requests(request: Request, session: SessionDep, caller: OrderingCaller) -> Response:
    """Orders in the caller's scope by `identifier` (the COI, `<system>|<coi>` or the bare value) or
    `patient` (`Patient/<patient_ref>`), oldest first, `_count` to a page with a `next` link."""
    search = fhir.search_request(request, {"identifier", "patient"})
    coi, patient = search.first("identifier"), search.first("patient")
    wanted = commands.OrderFilter(
        coi=coi.removeprefix(f"{fhir.COI_SYSTEM}|") if coi else None,
        patient_ref=patient.removeprefix("Patient/") if patient else None,
    )
    orders, next_cursor = commands.find_orders(
        session, caller_of(caller).site_scope, wanted, fhir.page_of_search(search)
    )
    resources = [mapping.service_request(o, commands.history_of(session, o)) for o in orders]
    return fhir.FhirJSONResponse(
        fhir.searchset(request, "ServiceRequest", resources, search, next_cursor=next_cursor)
    )


PatientRef = Annotated[str, Path(pattern=fhir.FHIR_ID.pattern)]


@router.get(
    "/Patient/{patient_ref}",
    summary="Read a patient (pseudonymous) as a FHIR Patient",
    responses=fhir.documented(mapping.PATIENT_EXAMPLE),
)
def read_patient(
    patient_ref: PatientRef, request: Request, session: SessionDep, caller: OrderingCaller
) -> Response:
    """The patient an order names, by its pseudonymous reference and nothing else: the identity stays
    encrypted here. Only a caller who may see one of the patient's orders reads it (404 otherwise)."""
    scope = caller_of(caller).site_scope
    query = select(Order).where(Order.patient_ref == patient_ref).order_by(col(Order.created_at).desc())
    if scope is not None:
        query = query.where(Order.treatment_center_id == scope)
    latest = session.exec(query.limit(1)).first()
    if latest is None:
        raise problems.ProblemError(404, "no such patient")
    return fhir.read_response(request, fhir.patient_resource(patient_ref, latest.created_at))
