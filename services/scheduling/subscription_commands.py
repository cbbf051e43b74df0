"""FHIR Subscription use cases — create, read, delete, and queue a notification for each appointment change
— inside the caller's transaction, asking `subscription_domain` for the rules.

A Subscription's rest-hook channel is a `WebhookEndpoint` of its site (`channel` `fhir`, hidden from
`/webhooks`): its notifications are `WebhookDelivery` rows, queued in the transaction of the change like
the site's webhooks, and sent by the same deliverer with the same address checks, retries and failure
policy (a channel that keeps failing is disabled once, and the coordinators' worklist shows it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from cgt_contracts.envelope import utc_now
from sqlmodel import Session, col, func, select

from services.common.db import locked
from services.scheduling import fhir, subscription_domain, webhook_commands, webhook_domain
from services.scheduling.domain import SiteCalendar
from services.scheduling.models import (
    Appointment,
    Case,
    FhirSubscription,
    SlotAlert,
    WebhookDelivery,
    WebhookEndpoint,
)
from services.scheduling.subscription_domain import (
    StoredSubscription,
    SubscriptionRefused,
    SubscriptionRequest,
    SubscriptionState,
)
from services.scheduling.webhook_commands import WebhookSettings

FHIR_CHANNEL = "fhir"


class TooManySubscriptions(Exception):
    """The site has `webhook_domain.MAX_ENDPOINTS_PER_SITE` Subscriptions already (HTTP 409)."""


def create(
    session: Session,
    document: dict[str, Any],
    *,
    caller_site: str | None,
    base: str,
    settings: WebhookSettings,
) -> FhirSubscription:
    """The new Subscription (active at once: no handshake) and its channel, or `SubscriptionRefused`."""
    request: SubscriptionRequest = subscription_domain.requested(
        document, caller_site=caller_site, allow_loopback=settings.allow_loopback, now=utc_now()
    )
    webhook_commands.lock_site_endpoints(session, request.site)
    existing = session.exec(
        select(func.count())
        .select_from(FhirSubscription)
        .where(FhirSubscription.treatment_center_id == request.site)
        .where(col(FhirSubscription.deleted_at).is_(None))
    ).one()
    refusal = webhook_domain.endpoint_limit_refusal(existing)
    if refusal is not None:
        raise TooManySubscriptions(refusal.replace("webhook endpoints", "FHIR Subscriptions"))
    endpoint = WebhookEndpoint(
        treatment_center_id=request.site,
        url=request.endpoint,
        secret="",  # a notification is not signed: the channel's headers authenticate it
        consecutive_failures=0,
        updated_at=utc_now(),
        channel=FHIR_CHANNEL,
    )
    session.add(endpoint)
    session.flush()
    subscription = FhirSubscription(
        endpoint_id=endpoint.id,
        treatment_center_id=request.site,
        payload_content=request.payload_content,
        reason=request.reason,
        end_at=request.end,
        fhir_base=base,
    )
    _store_headers(subscription, request.headers, settings)
    session.add(subscription)
    session.flush()
    return subscription


def _store_headers(
    subscription: FhirSubscription, headers: Sequence[tuple[str, str]], settings: WebhookSettings
) -> None:
    pairs = [list(pair) for pair in headers]
    subscription.headers = (
        settings.secret_keys.encrypt(json.dumps(pairs).encode()).decode() if pairs else None
    )
    subscription.header_names = ",".join(name for name, _ in headers)


def update(
    session: Session,
    subscription: FhirSubscription,
    endpoint: WebhookEndpoint,
    document: dict[str, Any],
    *,
    caller_site: str | None,
    settings: WebhookSettings,
) -> None:
    """The Subscription as `document` says (under the rules of creation; its site stays), and its channel
    active again: one disabled after consecutive failures resumes with its count at zero and its waiting
    notifications sent (FHIR's way to re-activate: update it with status `requested` or `active`)."""
    if document.get("id") != str(subscription.id):
        raise SubscriptionRefused("id", "must be the id in the URL")
    request = subscription_domain.requested(
        document, caller_site=caller_site, allow_loopback=settings.allow_loopback, now=utc_now()
    )
    if request.site != subscription.treatment_center_id:
        raise SubscriptionRefused("_criteria", "a Subscription's site cannot change: create another")
    headers = subscription_domain.kept_headers(request.headers, channel_headers(subscription, settings))
    locked_endpoint = session.exec(
        locked(session, select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))
    ).one()
    locked_endpoint.url = request.endpoint
    locked_endpoint.updated_at = utc_now()
    session.add(locked_endpoint)
    if not locked_endpoint.active:
        webhook_commands.resume(session, locked_endpoint)
    subscription.payload_content = request.payload_content
    subscription.reason = request.reason
    subscription.end_at = request.end
    _store_headers(subscription, headers, settings)
    subscription.version += 1
    subscription.updated_at = utc_now()
    session.add(subscription)


def visible(
    session: Session, subscription_id: UUID, site_scope: str | None, *, to_change: bool = False
) -> tuple[FhirSubscription, WebhookEndpoint] | None:
    """The subscription and its channel, or None when it does not exist or is another site's (the same
    to the caller). A deleted one is returned: the route answers 410 for it."""
    query = select(FhirSubscription).where(FhirSubscription.id == subscription_id)
    subscription = session.exec(locked(session, query) if to_change else query).first()
    if subscription is None or (site_scope is not None and subscription.treatment_center_id != site_scope):
        return None
    endpoint = session.get(WebhookEndpoint, subscription.endpoint_id)
    assert endpoint is not None
    return subscription, endpoint


def state_of(subscription: FhirSubscription, endpoint: WebhookEndpoint) -> SubscriptionState:
    status = subscription_domain.status_of(
        disabled=endpoint.disabled_at is not None, end=subscription.end_at, now=utc_now()
    )
    return SubscriptionState(
        id=str(subscription.id),
        base=subscription.fhir_base,
        status=status,
        events_since_start=subscription.events_since_start,
    )


def stored(subscription: FhirSubscription, endpoint: WebhookEndpoint) -> StoredSubscription:
    return StoredSubscription(
        state=state_of(subscription, endpoint),
        site=subscription.treatment_center_id,
        endpoint=endpoint.url,
        payload_content=subscription.payload_content,
        header_names=tuple(n for n in subscription.header_names.split(",") if n),
        reason=subscription.reason,
        end=subscription.end_at,
        version=subscription.version,
        updated_at=subscription.updated_at,
        error=endpoint.disabled_reason if endpoint.disabled_at is not None else None,
    )


def delete(session: Session, subscription: FhirSubscription, endpoint: WebhookEndpoint) -> None:
    """Nothing more is sent; waiting notifications are discarded, the headers forgotten."""
    now = utc_now()
    subscription.deleted_at = now
    subscription.headers = None
    subscription.version += 1
    subscription.updated_at = now
    session.add(subscription)
    locked_endpoint = session.exec(
        locked(session, select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))
    ).one()
    webhook_commands.delete(session, locked_endpoint)


def channel_headers(
    subscription: FhirSubscription | None, settings: WebhookSettings
) -> list[tuple[str, str]]:
    """The channel's headers, decrypted, for the deliverer."""
    if subscription is None or not subscription.headers:
        return []
    pairs = json.loads(settings.secret_keys.decrypt(subscription.headers.encode()))
    return [(str(name), str(value)) for name, value in pairs]


def appointment_resource(
    session: Session, appointment: Appointment, calendar: SiteCalendar
) -> dict[str, Any]:
    """The Appointment as `GET /fhir/Appointment/{id}` shows it now (its unresolved alerts included)."""
    alerts: Sequence[SlotAlert] = session.exec(
        select(SlotAlert)
        .where(SlotAlert.appointment_id == appointment.id)
        .where(col(SlotAlert.resolved_at).is_(None))
        .order_by(col(SlotAlert.raised_at))
    ).all()
    return fhir.appointment_resource(appointment, session.get(Case, appointment.coi), calendar, alerts)


def queue_notifications(
    session: Session, appointment: Appointment, kind: str, calendar: SiteCalendar
) -> None:
    """One notification per live Subscription of the appointment's site, in the caller's transaction:
    its event number is the subscription's next (the rows are locked, so numbers never repeat)."""
    subscriptions = session.exec(
        locked(
            session,
            select(FhirSubscription)
            .where(FhirSubscription.treatment_center_id == appointment.treatment_center_id)
            .where(col(FhirSubscription.deleted_at).is_(None))
            .order_by(col(FhirSubscription.id)),
        )
    ).all()
    now = utc_now()
    resource: dict[str, Any] | None = None
    for subscription in subscriptions:
        endpoint = session.get(WebhookEndpoint, subscription.endpoint_id)
        if endpoint is None or endpoint.deleted_at is not None:
            continue
        if subscription.end_at is not None and subscription.end_at <= now:
            continue
        if subscription.payload_content == "full-resource" and resource is None:
            resource = appointment_resource(session, appointment, calendar)
        subscription.events_since_start += 1
        session.add(subscription)
        bundle = subscription_domain.notification_bundle(
            state_of(subscription, endpoint),
            payload_content=subscription.payload_content,
            event_number=subscription.events_since_start,
            timestamp=now,
            appointment_id=str(appointment.id),
            appointment=resource,
        )
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                appointment_id=appointment.id,
                coi=appointment.coi,
                kind=kind,
                payload=json.dumps(bundle, sort_keys=True),
                status="pending" if endpoint.active else "suspended",
            )
        )


__all__ = ["SubscriptionRefused", "TooManySubscriptions", "create", "delete", "queue_notifications"]
