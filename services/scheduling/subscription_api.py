"""Scheduling's FHIR Subscription routes (R4 subscriptions backport, topic-based, rest-hook): create, read,
delete and `$status`. Thin adapters over `subscription_commands`; errors are OperationOutcomes (under
`/fhir`). `SUBSCRIPTION_CAPABILITIES` and `TOPIC_CANONICAL` are what the CapabilityStatement lists."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import HTTPException, Request, Response, status

from services.common import fhir, problems
from services.common.edge import json_body
from services.common.fhir import FHIR_JSON, FhirJSONResponse
from services.scheduling import subscription_commands, subscription_domain
from services.scheduling.api import Reader, SessionDep
from services.scheduling.models import FhirSubscription, WebhookEndpoint
from services.scheduling.runtime import RuntimeDep
from services.scheduling.subscription_commands import SubscriptionRefused, TooManySubscriptions
from services.scheduling.subscription_domain import TOPIC

router = fhir.router()
NOT_FOUND = "no such Subscription"

TOPIC_CANONICAL: dict[str, Any] = {
    "url": subscription_domain.TOPIC_CANONICAL_EXTENSION,
    "valueCanonical": TOPIC,
}
"""The backport's extension on the CapabilityStatement's Subscription entry, naming the topic served."""
SUBSCRIPTION_CAPABILITIES: tuple[fhir.ResourceCapability, ...] = (
    fhir.ResourceCapability(
        type="Subscription",
        interactions=("create", "read", "update", "delete"),
        documentation="Topic-based rest-hook subscriptions (R4 subscriptions backport) to a site's appointment "
        f"changes: criteria {TOPIC}, filter Appointment?actor=Location/<site>; payload empty, id-only or "
        "full-resource. A treatment center subscribes to its own site.",
        operations={"status": "/{id}/$status"},
        profile=subscription_domain.SUBSCRIPTION_PROFILE,
        extensions=(TOPIC_CANONICAL,),
    ),
)


EXAMPLE: dict[str, Any] = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "Infusion appointments of TC-BOSTON",
    "criteria": TOPIC,
    "_criteria": {
        "extension": [
            {
                "url": subscription_domain.FILTER_CRITERIA_EXTENSION,
                "valueString": "Appointment?actor=Location/TC-BOSTON",
            }
        ]
    },
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://fhir.tc-boston.example.org/notifications",
        "payload": FHIR_JSON,
        "_payload": {
            "extension": [
                {"url": subscription_domain.PAYLOAD_CONTENT_EXTENSION, "valueCode": "full-resource"}
            ]
        },
        "header": ["Authorization: Bearer <the site's token>"],
    },
}


SUBSCRIPTION_ID = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
READ_EXAMPLE: dict[str, Any] = {
    **EXAMPLE,
    "id": SUBSCRIPTION_ID,
    "meta": {
        "versionId": "1",
        "lastUpdated": "2026-12-01T09:00:00+00:00",
        "profile": [subscription_domain.SUBSCRIPTION_PROFILE],
    },
    "status": "active",
    "channel": {**EXAMPLE["channel"], "header": [f"Authorization: {subscription_domain.MASKED}"]},
}
STATUS_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "searchset",
    "total": 1,
    "entry": [
        {
            "fullUrl": "urn:uuid:3dd3c88d-1f7c-40ce-bf41-6b0d8186c311",
            "resource": {
                "resourceType": "Parameters",
                "id": "3dd3c88d-1f7c-40ce-bf41-6b0d8186c311",
                "meta": {"profile": [subscription_domain.STATUS_PROFILE]},
                "parameter": [
                    {
                        "name": "subscription",
                        "valueReference": {
                            "reference": f"https://scheduling.example.org/fhir/Subscription/{SUBSCRIPTION_ID}"
                        },
                    },
                    {"name": "topic", "valueCanonical": TOPIC},
                    {"name": "status", "valueCode": "active"},
                    {"name": "type", "valueCode": "query-status"},
                    {"name": "events-since-subscription-start", "valueString": "3"},
                ],
            },
            "search": {"mode": "match"},
        }
    ],
}


_body = json_body(media_types=(FHIR_JSON, "application/json"))
for _media in _body["requestBody"]["content"].values():
    _media["example"] = EXAMPLE


DELETED: dict[str, Any] = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "deleted", "diagnostics": "the Subscription was deleted"}],
}


_update_body = json_body(media_types=(FHIR_JSON, "application/json"))
for _media in _update_body["requestBody"]["content"].values():
    _media["example"] = READ_EXAMPLE


def _documented(example: dict[str, Any]) -> dict[str, Any]:
    return {"content": {FHIR_JSON: {"example": example}}}


def _found(session: SessionDep, subscription_id: UUID, caller: Reader, *, to_change: bool = False) -> Any:
    found = subscription_commands.visible(session, subscription_id, caller.site_scope, to_change=to_change)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    subscription, endpoint = found
    if subscription.deleted_at is not None:
        raise HTTPException(status.HTTP_410_GONE, "the Subscription was deleted")
    return subscription, endpoint


def _resource(subscription: FhirSubscription, endpoint: WebhookEndpoint) -> dict[str, Any]:
    return subscription_domain.subscription_resource(subscription_commands.stored(subscription, endpoint))


@router.post(
    "/Subscription",
    summary="Subscribe to a site's appointment changes (FHIR)",
    response_class=FhirJSONResponse,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_body,
    responses={201: _documented(READ_EXAMPLE), **problems.documented(403, 409)},
)
async def create_subscription(
    request: Request, session: SessionDep, caller: Reader, runtime: RuntimeDep
) -> Response:
    """An R4 Subscription (subscriptions backport): `criteria` the topic
    `https://cgt-logistics.example/fhir/SubscriptionTopic/appointment-change`, one `backport-filter-criteria`
    on `_criteria` (`Appointment?actor=Location/<site>`: a treatment center names its own site, else 403),
    `channel.type` `rest-hook`, `channel.endpoint` under the webhooks' URL policy (https to a public host),
    `channel.payload` `application/fhir+json` with `backport-payload-content` `empty`, `id-only` (the
    default) or `full-resource`, `channel.header` sent with each notification (stored encrypted; a read
    shows only their names). Active at once (no handshake); at most 5 per site (409). 422 names the
    element a rule refuses."""
    document = await request.json()
    if not isinstance(document, dict):
        raise problems.invalid("body", "resourceType", "must be a Subscription resource")
    settings = runtime.settings
    base = f"{settings.public_base_url.rstrip('/')}{fhir.BASE_PATH}" if settings.public_base_url else None
    try:
        subscription = subscription_commands.create(
            session,
            document,
            caller_site=caller.site_scope,
            base=base or fhir.base_url(request),
            settings=runtime.webhooks,
        )
    except SubscriptionRefused as refused:
        if refused.status == 403:
            raise HTTPException(status.HTTP_403_FORBIDDEN, refused.detail) from refused
        raise problems.invalid("body", refused.element, refused.detail) from refused
    except TooManySubscriptions as error:
        raise problems.conflict(str(error)) from error
    endpoint = session.get(WebhookEndpoint, subscription.endpoint_id)
    assert endpoint is not None
    resource = _resource(subscription, endpoint)
    session.commit()
    location = (
        f"{fhir.base_url(request)}/Subscription/{resource['id']}/_history/{resource['meta']['versionId']}"
    )
    return FhirJSONResponse(
        resource,
        status_code=status.HTTP_201_CREATED,
        headers={"Location": location, "ETag": fhir.version_tag(resource)},
    )


@router.get(
    "/Subscription/{subscription_id}",
    summary="Read a Subscription (FHIR)",
    response_class=FhirJSONResponse,
    responses={200: _documented(READ_EXAMPLE), **problems.documented(404, 410)},
)
def read_subscription(
    subscription_id: UUID, request: Request, session: SessionDep, caller: Reader
) -> Response:
    """The Subscription with `ETag`; `status` `active`, `error` while its channel is disabled after
    consecutive failed notifications (`error` says the last), `off` after its `end`. Another site's is
    404, a deleted one 410."""
    subscription, endpoint = _found(session, subscription_id, caller)
    return fhir.read_response(request, _resource(subscription, endpoint))


@router.put(
    "/Subscription/{subscription_id}",
    summary="Change or re-activate a Subscription (FHIR)",
    response_class=FhirJSONResponse,
    openapi_extra=_update_body,
    responses={200: _documented(READ_EXAMPLE), **problems.documented(404, 410)},
)
async def update_subscription(
    subscription_id: UUID, request: Request, session: SessionDep, caller: Reader, runtime: RuntimeDep
) -> Response:
    """The whole Subscription again, with its `id`, under the rules of creation; its site cannot change.
    A header sent back masked (`Authorization: ***`, as read) keeps its stored value. The channel is
    active again: one disabled after consecutive failures (`status` `error`) resumes, its count of
    failures at zero and its waiting notifications sent, oldest first. Another site's is 404."""
    document = await request.json()
    if not isinstance(document, dict):
        raise problems.invalid("body", "resourceType", "must be a Subscription resource")
    subscription, endpoint = _found(session, subscription_id, caller, to_change=True)
    try:
        subscription_commands.update(
            session,
            subscription,
            endpoint,
            document,
            caller_site=caller.site_scope,
            settings=runtime.webhooks,
        )
    except SubscriptionRefused as refused:
        if refused.status == 403:
            raise HTTPException(status.HTTP_403_FORBIDDEN, refused.detail) from refused
        raise problems.invalid("body", refused.element, refused.detail) from refused
    session.flush()
    session.refresh(endpoint)
    resource = _resource(subscription, endpoint)
    session.commit()
    return FhirJSONResponse(resource, headers={"ETag": fhir.version_tag(resource)})


@router.delete(
    "/Subscription/{subscription_id}",
    summary="Delete a Subscription (FHIR)",
    response_class=FhirJSONResponse,
    responses={200: _documented(DELETED), **problems.documented(404, 410)},
)
def delete_subscription(subscription_id: UUID, session: SessionDep, caller: Reader) -> Response:
    """Nothing more is sent; notifications not yet delivered are discarded. 200 with an OperationOutcome;
    then the Subscription is 410; another site's is 404."""
    subscription, endpoint = _found(session, subscription_id, caller, to_change=True)
    subscription_commands.delete(session, subscription, endpoint)
    session.commit()
    return FhirJSONResponse(DELETED)


@router.get(
    "/Subscription/{subscription_id}/$status",
    summary="A Subscription's status (FHIR)",
    response_class=FhirJSONResponse,
    responses={200: _documented(STATUS_EXAMPLE), **problems.documented(404, 410)},
)
def subscription_status(subscription_id: UUID, session: SessionDep, caller: Reader) -> Response:
    """A searchset Bundle with the SubscriptionStatus (`query-status`): its status and how many events
    it was notified of since it started."""
    subscription, endpoint = _found(session, subscription_id, caller)
    state = subscription_commands.state_of(subscription, endpoint)
    return FhirJSONResponse(subscription_domain.status_bundle(state))
