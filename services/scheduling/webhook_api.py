"""Scheduling HTTP routes for webhooks: a site's endpoints (register, list, read, change, pause and
resume, rotate the secret, delete) and the delivery logs. Thin adapters over `webhook_commands`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints
from pydantic.config import JsonDict
from sqlmodel import Session, select

from services.common import problems
from services.common.auth import Principal, Role
from services.common.edge import EdgeRoute, RequestModel
from services.common.paging import Page, link_next, page_of
from services.scheduling import webhook_commands, webhook_domain
from services.scheduling.api import COI, Ident, Reader, SessionDep, _appointment
from services.scheduling.models import WebhookDelivery, WebhookEndpoint
from services.scheduling.runtime import RuntimeDep
from services.scheduling.webhook_commands import (
    DuplicateEndpoint,
    EndpointChange,
    InvalidEndpoint,
    TooManyEndpoints,
    WebhookSettings,
)
from services.scheduling.webhook_domain import SIGNATURE_HEADER

router = APIRouter(route_class=EdgeRoute, tags=["webhooks"])
ENDPOINT_ID = "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b"
WebhookUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=webhook_domain.MAX_URL_LENGTH)]
Kinds = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
    Field(
        default=None,
        max_length=20,
        description="The kinds of message to receive (slot.proposed, slot.confirmed, slot.held, slot.resumed, "
        "slot.rescheduled, slot.at_risk, slot.cancelled, infusion.recorded); null or absent for every kind",
    ),
]
NOT_FOUND = "no such webhook endpoint"
DeliveryStatus = Literal["pending", "delivered", "failed", "suspended", "discarded"]


def webhook_settings(runtime: RuntimeDep) -> WebhookSettings:
    return runtime.webhooks


SettingsDep = Annotated[WebhookSettings, Depends(webhook_settings)]


def _scope(caller: Principal) -> str | None:
    """The one site a treatment center's caller acts for; None for a coordinator (every site)."""
    return caller.site_scope


def _endpoint(
    session: Session, endpoint_id: UUID, caller: Principal, *, to_change: bool = False
) -> WebhookEndpoint:
    endpoint = webhook_commands.visible_endpoint(session, endpoint_id, _scope(caller), to_change=to_change)
    if endpoint is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return endpoint


def _refused(error: InvalidEndpoint | DuplicateEndpoint | TooManyEndpoints) -> problems.ProblemError:
    if isinstance(error, InvalidEndpoint):
        return problems.invalid("body", error.field, error.detail)
    if isinstance(error, TooManyEndpoints):
        return problems.conflict(str(error), reasons=[f"at most {webhook_domain.MAX_ENDPOINTS_PER_SITE}"])
    return problems.conflict(
        "the site already has an endpoint at this URL: change or delete that one",
        reasons=[f"endpoint {error.existing}"],
    )


# ---------------------------------------------------------------- models

REGISTER_EXAMPLE: JsonDict = {"url": "https://hooks.tc-boston.example.org/cgt"}
VIEW_EXAMPLE: JsonDict = {
    "id": ENDPOINT_ID,
    "treatment_center_id": "TC-BOSTON",
    "url": "https://hooks.tc-boston.example.org/cgt",
    "state": "active",
    "event_types": None,
    "consecutive_failures": 0,
    "created_at": "2026-12-01T09:00:00Z",
    "updated_at": "2026-12-01T09:00:00Z",
    "paused_at": None,
    "disabled_at": None,
    "disabled_reason": None,
    "previous_secret_valid_until": None,
}
SECRET_EXAMPLE = "q3Xh7T0pZ2kLwE9vR4sY1mN8bC6dF5gHj2Kp9Lx4Vz7"


class WebhookRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                REGISTER_EXAMPLE,
                {
                    "url": "https://hooks.tc-denver.example.org/cgt",
                    "treatment_center_id": "TC-DENVER",
                    "event_types": ["slot.confirmed", "slot.held", "slot.cancelled"],
                },
            ]
        }
    )

    url: WebhookUrl
    treatment_center_id: Ident | None = Field(
        default=None, description="Coordinators name the site; a treatment center registers for its own"
    )
    event_types: Kinds


class WebhookUpdate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"paused": True},
                {"paused": False},
                {"url": "https://hooks2.tc-boston.example.org/cgt", "event_types": ["slot.confirmed"]},
            ]
        }
    )

    url: WebhookUrl | None = Field(default=None, description="A new URL, under the same policy")
    paused: bool | None = Field(
        default=None,
        description="true pauses; false resumes, and re-enables an endpoint disabled by failures",
    )
    event_types: Kinds


class RotateRequest(RequestModel):
    """Nothing to say: the new secret is generated by the service (a caller-chosen `secret` is 422)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}]})


class WebhookView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [VIEW_EXAMPLE]})

    id: UUID
    treatment_center_id: str
    url: str
    state: str = Field(
        description="active; paused (by the site or a coordinator); disabled (after consecutive failures, "
        "until resumed); deleted",
        examples=["active", "disabled"],
    )
    event_types: list[str] | None = Field(description="The kinds received; null for every kind")
    consecutive_failures: int = Field(
        description="Consecutive failed attempts (0 after a success or a resume)"
    )
    created_at: datetime
    updated_at: datetime | None
    paused_at: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    previous_secret_valid_until: datetime | None = Field(
        description="Until then deliveries also carry a signature under the secret replaced by the last rotation"
    )


class WebhookWithSecret(WebhookView):
    model_config = ConfigDict(json_schema_extra={"examples": [{**VIEW_EXAMPLE, "secret": SECRET_EXAMPLE}]})

    secret: str = Field(description=f"Shown only in this answer: verify {SIGNATURE_HEADER} with it")


def _view(endpoint: WebhookEndpoint) -> WebhookView:
    return WebhookView(
        id=endpoint.id,
        treatment_center_id=endpoint.treatment_center_id,
        url=endpoint.url,
        state=webhook_commands.state_of(endpoint).value,
        event_types=webhook_commands.event_types_of(endpoint),
        consecutive_failures=endpoint.consecutive_failures or 0,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
        paused_at=endpoint.paused_at,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        previous_secret_valid_until=endpoint.previous_secret_valid_until,
    )


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**_view(endpoint).model_dump(), secret=secret)


class DeliveryView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "8f7e6d5c-4b3a-4928-8170-6f5e4d3c2b1a",
                    "endpoint_id": ENDPOINT_ID,
                    "appointment_id": "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                    "coi": COI,
                    "kind": "slot.confirmed",
                    "status": "delivered",
                    "attempts": 1,
                    "last_status_code": 204,
                    "last_error": None,
                    "delivered_at": "2026-12-03T08:15:01Z",
                    "created_at": "2026-12-03T08:15:00Z",
                }
            ]
        }
    )

    id: UUID = Field(description="Also the message's Idempotency-Key")
    endpoint_id: UUID
    appointment_id: UUID
    coi: str
    kind: str = Field(examples=["slot.proposed", "slot.confirmed", "infusion.recorded"])
    status: str = Field(
        description="pending (being retried), delivered, failed, suspended (its endpoint is paused or "
        "disabled: sent on resume) or discarded (its endpoint was deleted)"
    )
    attempts: int = Field(description="Since the message was queued or its endpoint last resumed")
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


# ---------------------------------------------------------------- routes


def _site_for(caller: Principal, requested: str | None) -> str:
    if caller.role is Role.TREATMENT_CENTER:
        assert caller.treatment_center_id is not None
        if requested not in (None, caller.treatment_center_id):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "a treatment center registers only for its own site"
            )
        return caller.treatment_center_id
    if requested is None:
        raise problems.invalid("body", "treatment_center_id", "required for a coordinator")
    return requested


@router.post(
    "/webhooks",
    summary="Register a webhook",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookWithSecret,
    responses=problems.documented(409),
)
def register_webhook(
    body: WebhookRequest, session: SessionDep, caller: Reader, settings: SettingsDep
) -> WebhookWithSecret:
    """Register the URL where a site receives the messages about its appointments: `slot.proposed`,
    `slot.confirmed`, `slot.held`, `slot.resumed`, `slot.rescheduled`, `slot.at_risk`, `slot.cancelled`,
    `infusion.recorded` (all, or the `event_types` listed). Each is a JSON POST with `X-CGT-Timestamp`,
    an `Idempotency-Key` (the same on every retry) and `X-CGT-Signature: v2=<hex HMAC-SHA256 of
    "<timestamp>.<idempotency key>.<body>">` under the secret, retried with backoff. Only `https` URLs
    to public hosts, at most 2,048 characters, are taken (422 naming `url` otherwise); the same URL twice
    for a site is 409, and so is a sixth endpoint: a site has at most 5 (`MAX_ENDPOINTS_PER_SITE`). A
    treatment center registers for its own site (403 for another), a coordinator names the site. The
    secret is generated by the service (32 random bytes; never chosen by the caller), stored encrypted, and
    shown only in this answer."""
    site = _site_for(caller, body.treatment_center_id)
    try:
        endpoint, secret = webhook_commands.register(
            session, site=site, url=str(body.url), event_types=body.event_types, settings=settings
        )
    except (InvalidEndpoint, DuplicateEndpoint, TooManyEndpoints) as error:
        raise _refused(error) from error
    session.commit()
    return _with_secret(endpoint, secret)


@router.get("/webhooks", summary="List webhook endpoints", response_model=list[WebhookView])
def list_webhooks(
    request: Request,
    response: Response,
    session: SessionDep,
    caller: Reader,
    page: Page,
    treatment_center_id: Annotated[Ident | None, Query(description="Only this site's endpoints")] = None,
) -> list[WebhookView]:
    """The endpoints, oldest first, one page at a time (`limit`, `cursor`; the next page in `Link`): a coordinator sees every site's, a treatment center its
    own; `treatment_center_id` narrows the list (for a treatment center, another site's finds none)."""
    endpoints, next_cursor = webhook_commands.list_endpoints(
        session, site_scope=_scope(caller), site=treatment_center_id, page=page
    )
    link_next(request, response, next_cursor)
    return [_view(endpoint) for endpoint in endpoints]


@router.get("/webhooks/{endpoint_id}", summary="Read a webhook endpoint", response_model=WebhookView)
def read_webhook(endpoint_id: UUID, session: SessionDep, caller: Reader) -> WebhookView:
    """One endpoint: its URL, its state (active, paused, disabled after consecutive failures), its count of
    consecutive failures, and until when the secret it replaced still signs. Never the secret. Another site's
    endpoint is 404, like one that does not exist."""
    return _view(_endpoint(session, endpoint_id, caller))


@router.patch(
    "/webhooks/{endpoint_id}",
    summary="Change, pause or resume a webhook endpoint",
    response_model=WebhookView,
    responses=problems.documented(409),
)
def update_webhook(
    endpoint_id: UUID,
    body: WebhookUpdate,
    request: Request,
    session: SessionDep,
    caller: Reader,
    settings: SettingsDep,
) -> WebhookView:
    """Change what the body gives: `url` (under the same policy as registration), `event_types`, and
    `paused`. Paused, an endpoint gets no attempts and its messages wait; `paused: false` resumes it — also
    one disabled after consecutive failures — with its count of failures back to zero and its waiting
    messages sent, oldest first. The site's own caller or a coordinator; another site's endpoint is 404."""
    endpoint = _endpoint(session, endpoint_id, caller, to_change=True)
    change = EndpointChange(
        url=None if body.url is None else str(body.url),
        paused=body.paused,
        event_types_given="event_types" in body.model_fields_set,
        event_types=body.event_types,
    )
    try:
        webhook_commands.update_endpoint(session, endpoint, change, settings)
    except (InvalidEndpoint, DuplicateEndpoint) as error:
        raise _refused(error) from error
    session.commit()
    return _view(endpoint)


@router.post(
    "/webhooks/{endpoint_id}/rotate-secret",
    summary="Rotate a webhook endpoint's secret",
    response_model=WebhookWithSecret,
)
def rotate_webhook_secret(
    endpoint_id: UUID, body: RotateRequest, session: SessionDep, caller: Reader, settings: SettingsDep
) -> WebhookWithSecret:
    """A new secret (generated by the service; shown only in this answer) signs every delivery from
    now on. The secret it replaces keeps signing too until `previous_secret_valid_until` (the service's
    stated overlap): meanwhile `X-CGT-Signature` carries two signatures, `v2=<new>, v2=<previous>`, so the
    site can switch its receiver at any moment within the overlap. Another site's endpoint is 404."""
    endpoint = _endpoint(session, endpoint_id, caller, to_change=True)
    secret = webhook_commands.rotate_secret(session, endpoint, settings)
    session.commit()
    return _with_secret(endpoint, secret)


@router.delete("/webhooks/{endpoint_id}", summary="Delete a webhook endpoint", response_model=WebhookView)
def delete_webhook(endpoint_id: UUID, session: SessionDep, caller: Reader) -> WebhookView:
    """The endpoint receives nothing more and is 404 from now on; the messages it had not received are
    discarded, its secrets forgotten. The delivery logs keep naming it. Another site's endpoint is 404."""
    endpoint = _endpoint(session, endpoint_id, caller, to_change=True)
    webhook_commands.delete(session, endpoint)
    session.commit()
    return _view(endpoint)


@router.get(
    "/webhooks/{endpoint_id}/deliveries",
    summary="Read a webhook endpoint's deliveries",
    response_model=list[DeliveryView],
)
def endpoint_deliveries(
    request: Request,
    response: Response,
    endpoint_id: UUID,
    session: SessionDep,
    caller: Reader,
    page: Page,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
) -> list[DeliveryView]:
    """The messages sent (or waiting) for this endpoint, newest first, one page at a time (`limit`,
    `cursor`; the next page in `Link`), with how each went;
    `status` keeps those in one state. Another site's endpoint is 404."""
    endpoint = _endpoint(session, endpoint_id, caller)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if delivery_status is not None:
        query = query.where(WebhookDelivery.status == delivery_status)
    rows, next_cursor = page_of(session, query, WebhookDelivery, page, newest_first=True)
    link_next(request, response, next_cursor)
    return [DeliveryView.model_validate(r, from_attributes=True) for r in rows]


@router.get(
    "/appointments/{appointment_id}/deliveries",
    summary="Read an appointment's webhook deliveries",
    response_model=list[DeliveryView],
)
def delivery_log(
    request: Request,
    response: Response,
    appointment_id: UUID,
    session: SessionDep,
    caller: Reader,
    page: Page,
) -> list[DeliveryView]:
    """The webhook messages sent about this appointment, oldest first, one page at a time (`limit`,
    `cursor`; the next page in `Link`), the endpoint each went to, and how its delivery went: attempts,
    the last status code or error, when it was delivered."""
    _appointment(session, appointment_id, caller)
    query = select(WebhookDelivery).where(WebhookDelivery.appointment_id == appointment_id)
    rows, next_cursor = page_of(session, query, WebhookDelivery, page)
    link_next(request, response, next_cursor)
    return [DeliveryView.model_validate(r, from_attributes=True) for r in rows]
