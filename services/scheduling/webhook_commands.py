"""Webhook use cases — registering, changing, pausing, resuming, rotating the secret of and deleting a
site's endpoint; queueing a message to a site; recording what delivery attempts did — each inside the
caller's transaction, each asking `webhook_domain` for the rule. HTTP routes and the deliverer are thin
adapters over these functions.

An endpoint is locked (its row, on PostgreSQL) before its deliveries are touched, by every command here:
the attempts of the deliverer and a site's pause or resume never interleave half-way.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from cgt_contracts.envelope import utc_now
from cgt_contracts.events import WebhookDeliveryFailedV2, WebhookDeliveryFailedV2Data
from cryptography.fernet import MultiFernet
from sqlmodel import Session, col, func, select, update

from services.common.db import lock_name, locked
from services.common.outbox import enqueue
from services.common.paging import FIRST_PAGE, PageRequest, page_of
from services.common.topics import SCHEDULING, SCHEDULING_SOURCE
from services.scheduling import webhook_domain
from services.scheduling.models import FhirSubscription, WebhookDelivery, WebhookEndpoint
from services.scheduling.webhook_domain import AttemptOutcome, FailurePolicy

SOURCE = SCHEDULING_SOURCE


SECRET_BYTES = 32
"""A webhook secret's entropy: generated here, never chosen by the caller."""


@dataclass(frozen=True)
class WebhookSettings:
    allow_loopback: bool
    secret_overlap_hours: float
    failure: FailurePolicy
    secret_keys: MultiFernet = field(repr=False)
    """The key ring the stored secrets are encrypted with (WEBHOOK_SECRET_KEY: newest first)."""


def new_secret(settings: WebhookSettings) -> tuple[str, str]:
    """A fresh secret, and the form it is stored in (encrypted): a database reader cannot sign."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return secret, settings.secret_keys.encrypt(secret.encode()).decode()


def signing_secrets(endpoint: WebhookEndpoint, settings: WebhookSettings, now: datetime) -> list[str]:
    """The endpoint's secrets a message is signed with now, decrypted (`webhook_domain.signing_secrets`)."""
    current, previous = (
        settings.secret_keys.decrypt(stored.encode()).decode() if stored else None
        for stored in (endpoint.secret, endpoint.previous_secret)
    )
    assert current is not None, "a deleted endpoint signs nothing"
    return webhook_domain.signing_secrets(current, previous, endpoint.previous_secret_valid_until, now)


class EndpointState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DISABLED = "disabled"
    DELETED = "deleted"


class InvalidEndpoint(Exception):
    """A request a rule refuses, naming the field (HTTP 422)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field} {detail}")
        self.field = field
        self.detail = detail


class DuplicateEndpoint(Exception):
    """The site already has an endpoint at this URL: a second would get every message twice (HTTP 409)."""

    def __init__(self, existing: UUID) -> None:
        super().__init__(f"endpoint {existing} already has this URL")
        self.existing = existing


class TooManyEndpoints(Exception):
    """The site has as many endpoints as `webhook_domain.MAX_ENDPOINTS_PER_SITE` allows (HTTP 409)."""


def state_of(endpoint: WebhookEndpoint) -> EndpointState:
    if endpoint.deleted_at is not None:
        return EndpointState.DELETED
    if endpoint.paused_at is not None:
        return EndpointState.PAUSED
    if endpoint.disabled_at is not None:
        return EndpointState.DISABLED
    return EndpointState.ACTIVE


def event_types_of(endpoint: WebhookEndpoint) -> list[str] | None:
    return None if endpoint.event_types is None else [k for k in endpoint.event_types.split(",") if k]


def _checked_url(url: str, settings: WebhookSettings) -> str:
    refusal = webhook_domain.url_refusal(url, allow_loopback=settings.allow_loopback)
    if refusal is not None:
        raise InvalidEndpoint("url", refusal)
    return url


def _checked_kinds(kinds: Sequence[str] | None) -> str | None:
    if kinds is None:
        return None
    unknown = webhook_domain.unknown_kinds(kinds)
    if unknown:
        known = ", ".join(sorted(webhook_domain.WEBHOOK_KINDS))
        raise InvalidEndpoint("event_types", f"lists {len(unknown)} unknown kind(s); known: {known}")
    if not kinds:
        raise InvalidEndpoint("event_types", "is empty: omit it (or send null) for every kind")
    return ",".join(sorted(set(kinds)))


def _refuse_duplicate(session: Session, site: str, url: str, itself: UUID | None = None) -> None:
    query = (
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.treatment_center_id == site)
        .where(WebhookEndpoint.url == url)
        .where(col(WebhookEndpoint.deleted_at).is_(None))
        .where(col(WebhookEndpoint.channel).is_(None))
    )
    if itself is not None:
        query = query.where(WebhookEndpoint.id != itself)
    existing = session.exec(query).first()
    if existing is not None:
        raise DuplicateEndpoint(existing)


def register(
    session: Session,
    *,
    site: str,
    url: str,
    event_types: Sequence[str] | None,
    settings: WebhookSettings,
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint, and its secret: generated, stored encrypted, returned once for the answer."""
    secret, stored = new_secret(settings)
    endpoint = WebhookEndpoint(
        treatment_center_id=site,
        url=_checked_url(url, settings),
        secret=stored,
        event_types=_checked_kinds(event_types),
        consecutive_failures=0,
        updated_at=utc_now(),
    )
    lock_site_endpoints(session, site)
    _refuse_duplicate(session, site, endpoint.url)
    _refuse_past_limit(session, site)
    session.add(endpoint)
    return endpoint, secret


def lock_site_endpoints(session: Session, site: str) -> None:
    """Registrations for one site one at a time, until the transaction ends: two at once could both count
    four endpoints and make seven, or both find a URL new and register it twice."""
    lock_name(session, f"webhook-endpoints:{site}")


def _refuse_past_limit(session: Session, site: str) -> None:
    existing = session.exec(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.treatment_center_id == site)
        .where(col(WebhookEndpoint.deleted_at).is_(None))
        .where(col(WebhookEndpoint.channel).is_(None))
    ).one()
    refusal = webhook_domain.endpoint_limit_refusal(existing)
    if refusal is not None:
        raise TooManyEndpoints(refusal)


def visible_endpoint(
    session: Session, endpoint_id: UUID, site_scope: str | None, *, to_change: bool = False
) -> WebhookEndpoint | None:
    """The endpoint (locked when it is `to_change`), or None when it does not exist, was deleted, or
    belongs to another site than the caller's (`site_scope`; None for a coordinator): all three look
    the same to the caller."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    endpoint = session.exec(locked(session, query) if to_change else query).first()
    if endpoint is None or endpoint.deleted_at is not None or endpoint.channel is not None:
        return None
    if site_scope is not None and endpoint.treatment_center_id != site_scope:
        return None
    return endpoint


def list_endpoints(
    session: Session, *, site_scope: str | None, site: str | None, page: PageRequest = FIRST_PAGE
) -> tuple[list[WebhookEndpoint], str | None]:
    """One page of the endpoints the caller may see, oldest first, and the next page's cursor; `site`
    narrows them (for a site's own caller, another site's id finds nothing)."""
    query = (
        select(WebhookEndpoint)
        .where(col(WebhookEndpoint.deleted_at).is_(None))
        .where(col(WebhookEndpoint.channel).is_(None))
    )
    for narrowed in {site_scope, site} - {None}:
        query = query.where(WebhookEndpoint.treatment_center_id == narrowed)
    return page_of(session, query, WebhookEndpoint, page)


def _set_deliveries(session: Session, endpoint: WebhookEndpoint, old: str, new: str) -> None:
    values: dict[str, object] = {"status": new}
    if new == "pending":
        # A resumed endpoint starts afresh: its messages get their full number of attempts again.
        values |= {"next_attempt_at": utc_now(), "attempts": 0}
    session.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint_id) == endpoint.id)
        .where(col(WebhookDelivery.status) == old)
        .values(**values)
    )


def pause(session: Session, endpoint: WebhookEndpoint) -> None:
    """No attempts while paused; messages for the site wait (suspended) and go out on resume."""
    now = utc_now()
    endpoint.paused_at = endpoint.paused_at or now
    endpoint.active = False
    endpoint.updated_at = now
    session.add(endpoint)
    _set_deliveries(session, endpoint, "pending", "suspended")


def resume(session: Session, endpoint: WebhookEndpoint) -> None:
    """Paused or disabled, the endpoint receives again: its count of failures starts at zero and its
    waiting messages go out, oldest first."""
    endpoint.paused_at = None
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    endpoint.consecutive_failures = 0
    endpoint.active = True
    endpoint.updated_at = utc_now()
    session.add(endpoint)
    _set_deliveries(session, endpoint, "suspended", "pending")


@dataclass(frozen=True)
class EndpointChange:
    """What a PATCH gives: each field None when it is not to change (`event_types` None means every
    kind, so whether it is given is said apart)."""

    url: str | None = None
    paused: bool | None = None
    event_types_given: bool = False
    event_types: Sequence[str] | None = None


def update_endpoint(
    session: Session, endpoint: WebhookEndpoint, change: EndpointChange, settings: WebhookSettings
) -> None:
    """Change what is given: the URL (under the same policy as registration), the kinds subscribed to,
    paused or not (un-pausing also re-enables a disabled endpoint)."""
    if change.url is not None and change.url != endpoint.url:
        endpoint.url = _checked_url(change.url, settings)
        lock_site_endpoints(session, endpoint.treatment_center_id)
        _refuse_duplicate(session, endpoint.treatment_center_id, endpoint.url, itself=endpoint.id)
    if change.event_types_given:
        endpoint.event_types = _checked_kinds(change.event_types)
    endpoint.updated_at = utc_now()
    session.add(endpoint)
    if change.paused is True:
        pause(session, endpoint)
    elif change.paused is False and state_of(endpoint) is not EndpointState.ACTIVE:
        resume(session, endpoint)


def rotate_secret(session: Session, endpoint: WebhookEndpoint, settings: WebhookSettings) -> str:
    """A new secret (generated; returned once for the answer) signs from now on; the one it replaces signs
    too until the overlap ends (a rotation within the overlap drops the oldest: two secrets at most)."""
    secret, stored = new_secret(settings)
    now = utc_now()
    overlap = timedelta(hours=settings.secret_overlap_hours)
    endpoint.previous_secret = endpoint.secret if overlap else None
    endpoint.previous_secret_valid_until = now + overlap if overlap else None
    endpoint.secret = stored
    endpoint.updated_at = now
    session.add(endpoint)
    return secret


def delete(session: Session, endpoint: WebhookEndpoint) -> None:
    """The endpoint is gone for its site (404 from now on); its delivery log stays, naming it, and the
    messages it had not received are discarded. Its secrets are wiped."""
    now = utc_now()
    endpoint.deleted_at = now
    endpoint.active = False
    endpoint.secret = ""
    endpoint.previous_secret = None
    endpoint.previous_secret_valid_until = None
    endpoint.updated_at = now
    session.add(endpoint)
    for waiting in ("pending", "suspended"):
        _set_deliveries(session, endpoint, waiting, "discarded")


def queue_deliveries(
    session: Session, *, site: str, appointment_id: UUID, coi: str, kind: str, payload: str
) -> None:
    """One delivery per endpoint of the site subscribed to `kind`, in the caller's transaction: pending
    for an active endpoint, suspended (sent on resume) for a paused or disabled one."""
    endpoints = session.exec(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.treatment_center_id == site)
        .where(col(WebhookEndpoint.deleted_at).is_(None))
        .where(col(WebhookEndpoint.channel).is_(None))
    ).all()
    for endpoint in endpoints:
        kinds = event_types_of(endpoint)
        if kinds is not None and kind not in kinds:
            continue
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                appointment_id=appointment_id,
                coi=coi,
                kind=kind,
                payload=payload,
                status="pending" if endpoint.active else "suspended",
            )
        )


@dataclass(frozen=True)
class AttemptResult:
    """What one POST to an endpoint did (or why it was not sent)."""

    delivery_id: UUID
    endpoint_id: UUID
    succeeded: bool
    status_code: int | None
    error: str | None


def record_attempts(session: Session, results: Sequence[AttemptResult], policy: FailurePolicy) -> bool:
    """Apply attempts in the order they finished; True if a failure was published. The endpoints are
    locked first (in id order, as every command locks them before their deliveries)."""
    endpoints: dict[UUID, WebhookEndpoint] = {}
    for endpoint_id in sorted({r.endpoint_id for r in results}):
        endpoint = session.exec(
            locked(session, select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
        ).first()
        if endpoint is not None:
            endpoints[endpoint_id] = endpoint
    published = False
    for result in results:
        delivery = session.get(WebhookDelivery, result.delivery_id)
        endpoint = endpoints.get(result.endpoint_id)
        if delivery is None or endpoint is None:
            continue
        published |= _record_attempt(session, delivery, endpoint, result, policy)
    return published


def _record_attempt(
    session: Session,
    delivery: WebhookDelivery,
    endpoint: WebhookEndpoint,
    result: AttemptResult,
    policy: FailurePolicy,
) -> bool:
    now = utc_now()
    delivery.attempts += 1
    delivery.last_status_code = result.status_code
    delivery.last_error = None if result.succeeded else (result.error or "failed")[:1000]
    decision = webhook_domain.judge_attempt(
        succeeded=result.succeeded,
        delivery_attempts=delivery.attempts,
        consecutive_failures=endpoint.consecutive_failures or 0,
        endpoint_active=endpoint.active,
        policy=policy,
    )
    endpoint.consecutive_failures = decision.consecutive_failures
    session.add_all([delivery, endpoint])
    match decision.outcome:
        case AttemptOutcome.DELIVERED:
            delivery.status = "delivered"
            delivery.delivered_at = now
        case AttemptOutcome.RETRY:
            assert decision.retry_in_seconds is not None
            delivery.next_attempt_at = now + timedelta(seconds=decision.retry_in_seconds)
        case AttemptOutcome.GIVE_UP:
            delivery.status = "failed"
            _publish_failure(session, delivery, endpoint, disabled=False)
            return True
        case AttemptOutcome.DISABLE_ENDPOINT:
            _disable(session, endpoint, delivery, now)
            _publish_failure(session, delivery, endpoint, disabled=True)
            return True
        case AttemptOutcome.SET_ASIDE:
            delivery.status = "discarded" if endpoint.deleted_at is not None else "suspended"
    return False


def _disable(session: Session, endpoint: WebhookEndpoint, delivery: WebhookDelivery, now: datetime) -> None:
    endpoint.active = False
    endpoint.disabled_at = now
    endpoint.disabled_reason = (
        f"{endpoint.consecutive_failures} consecutive failed attempts, the last: {delivery.last_error}"
    )[:1000]
    endpoint.updated_at = now
    delivery.status = "suspended"
    session.flush()
    _set_deliveries(session, endpoint, "pending", "suspended")


def _publish_failure(
    session: Session, delivery: WebhookDelivery, endpoint: WebhookEndpoint, *, disabled: bool
) -> None:
    enqueue(
        session,
        SCHEDULING,
        WebhookDeliveryFailedV2(
            source=SOURCE,
            subject=delivery.coi,
            correlationid=str(delivery.id),
            data=WebhookDeliveryFailedV2Data(
                delivery_id=delivery.id,
                endpoint_id=endpoint.id,
                appointment_id=delivery.appointment_id,
                coi=delivery.coi,
                treatment_center_id=endpoint.treatment_center_id,
                kind=delivery.kind,
                attempts=delivery.attempts,
                consecutive_failures=endpoint.consecutive_failures or 0,
                endpoint_disabled=disabled,
                last_error=delivery.last_error or "failed",
            ),
        ),
    )


@dataclass(frozen=True)
class FailingWork:
    """A worklist entry: one per disabled endpoint, one per message that failed alone."""

    coi: str
    treatment_center_id: str
    since: datetime
    detail: str
    appointment_id: UUID | None


def _named(session: Session, endpoint: WebhookEndpoint) -> str:
    """How the worklist names an endpoint: a FHIR Subscription's channel by the Subscription's id."""
    if endpoint.channel is None:
        return f"webhook endpoint {endpoint.id}"
    subscription = session.exec(
        select(FhirSubscription.id).where(FhirSubscription.endpoint_id == endpoint.id)
    ).first()
    return f"FHIR Subscription/{subscription} (channel {endpoint.id})"


def failing_work(session: Session) -> list[FailingWork]:
    """What a coordinator must see about webhooks: each disabled endpoint once (with how many messages
    wait for it), and each message that ran out of attempts on an endpoint that still answers."""
    work: list[FailingWork] = []
    disabled = session.exec(
        select(WebhookEndpoint)
        .where(col(WebhookEndpoint.disabled_at).is_not(None))
        .where(col(WebhookEndpoint.paused_at).is_(None))
        .where(col(WebhookEndpoint.deleted_at).is_(None))
    ).all()
    for endpoint in disabled:
        waiting = session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .where(WebhookDelivery.status == "suspended")
            .order_by(col(WebhookDelivery.created_at))
        ).all()
        assert endpoint.disabled_at is not None
        work.append(
            FailingWork(
                coi=waiting[0].coi if waiting else "",
                treatment_center_id=endpoint.treatment_center_id,
                since=endpoint.disabled_at,
                detail=f"{_named(session, endpoint)} disabled after {endpoint.disabled_reason}; "
                f"{len(waiting)} message(s) wait until it is resumed",
                appointment_id=waiting[0].appointment_id if waiting else None,
            )
        )
    failed = session.exec(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(WebhookDelivery.status == "failed")
        .where(col(WebhookEndpoint.deleted_at).is_(None))
    ).all()
    for delivery, endpoint in failed:
        work.append(
            FailingWork(
                coi=delivery.coi,
                treatment_center_id=endpoint.treatment_center_id,
                since=delivery.created_at,
                detail=f"{delivery.kind} to {_named(session, endpoint)}: failed after "
                f"{delivery.attempts} attempts ({delivery.last_error})",
                appointment_id=delivery.appointment_id,
            )
        )
    return work
