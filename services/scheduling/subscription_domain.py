"""FHIR Subscription rules, pure Python, no I/O: the R4 subscriptions backport (topic-based, `rest-hook`)
for a site's appointment changes. What a Subscription may ask for (`requested`), the notification Bundle
one change becomes (`notification_bundle`), the `$status` answer and the resource a read returns.

Where a notification may go is the webhooks' rule (`webhook_domain.url_refusal`): one rule, one place.
Spec: http://hl7.org/fhir/uv/subscriptions-backport/ (STU 1.1, R4 profiles).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription
from pydantic import ValidationError

from services.common.fhir import FHIR_JSON
from services.scheduling import webhook_domain

TOPIC = "https://cgt-logistics.example/fhir/SubscriptionTopic/appointment-change"
"""The one topic: every change to an appointment that the site's webhooks announce (proposed, confirmed,
held, resumed, rescheduled, at risk, cancelled, infused, its plan replanned). Served only as a canonical."""
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
FILTER_CRITERIA_EXTENSION = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT_EXTENSION = f"{BACKPORT}/backport-payload-content"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
NOTIFICATION_PROFILE = f"{BACKPORT}/backport-subscription-notification-r4"
TOPIC_CANONICAL_EXTENSION = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
PAYLOAD_CONTENTS = ("empty", "id-only", "full-resource")
DEFAULT_PAYLOAD_CONTENT = "id-only"
"""When `_payload` names none: the least a subscriber needs (it reads the Appointment with its token)."""
FILTER = re.compile(r"Appointment\?actor=Location/(?P<site>[A-Za-z0-9][A-Za-z0-9._-]{0,63})")
"""The one filter: a site's appointments (`Appointment?actor=Location/<site>`)."""
MAX_HEADERS = 10
MAX_HEADER_LENGTH = 1024
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "user-agent",
        webhook_domain.IDEMPOTENCY_HEADER.lower(),
        webhook_domain.TIMESTAMP_HEADER.lower(),
        webhook_domain.SIGNATURE_HEADER.lower(),
    }
)
"""Headers the deliverer sets itself: a channel header may not replace them."""
MASKED = "***"


class SubscriptionRefused(Exception):
    """A Subscription a rule refuses: 422 naming the element, or 403 for another site's appointments."""

    def __init__(self, element: str, detail: str, status: int = 422) -> None:
        super().__init__(f"{element} {detail}")
        self.element = element
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class SubscriptionRequest:
    site: str
    endpoint: str
    payload_content: str
    headers: tuple[tuple[str, str], ...]
    reason: str
    end: datetime | None


def _pointer(location: Sequence[int | str]) -> str:
    return "/".join(str(part) for part in location if part != "__root__")


def _filter_site(document: Mapping[str, Any]) -> str:
    extensions = (document.get("_criteria") or {}).get("extension") or []
    filters = [e.get("valueString") for e in extensions if e.get("url") == FILTER_CRITERIA_EXTENSION]
    if len(filters) != 1 or not isinstance(filters[0], str):
        raise SubscriptionRefused(
            "_criteria", "needs one backport-filter-criteria extension: Appointment?actor=Location/<site>"
        )
    match = FILTER.fullmatch(filters[0])
    if match is None:
        raise SubscriptionRefused("_criteria", "the filter must be Appointment?actor=Location/<site>")
    return match["site"]


def _payload_content(channel: Mapping[str, Any]) -> str:
    extensions = (channel.get("_payload") or {}).get("extension") or []
    contents = [e.get("valueCode") for e in extensions if e.get("url") == PAYLOAD_CONTENT_EXTENSION]
    if not contents:
        return DEFAULT_PAYLOAD_CONTENT
    if len(contents) > 1 or contents[0] not in PAYLOAD_CONTENTS:
        raise SubscriptionRefused(
            "channel._payload", f"payload content must be one of {', '.join(PAYLOAD_CONTENTS)}"
        )
    return str(contents[0])


def _headers(raw: Sequence[str]) -> tuple[tuple[str, str], ...]:
    if len(raw) > MAX_HEADERS:
        raise SubscriptionRefused("channel.header", f"at most {MAX_HEADERS} headers")
    headers: list[tuple[str, str]] = []
    for index, line in enumerate(raw):
        element = f"channel.header[{index}]"
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or HEADER_NAME.fullmatch(name) is None or not value:
            raise SubscriptionRefused(element, "must be 'Name: value'")
        if len(line) > MAX_HEADER_LENGTH or not value.isprintable() or not value.isascii():
            raise SubscriptionRefused(
                element, f"must be printable ASCII, at most {MAX_HEADER_LENGTH} characters"
            )
        if name.lower() in RESERVED_HEADERS:
            raise SubscriptionRefused(element, "names a header the service sets itself")
        headers.append((name, value))
    return tuple(headers)


def requested(
    document: Mapping[str, Any], *, caller_site: str | None, allow_loopback: bool, now: datetime
) -> SubscriptionRequest:
    """What a Subscription asks for, or `SubscriptionRefused` naming the first element a rule refuses.
    `caller_site`: a treatment center's own site (it may subscribe only to it); None for a coordinator."""
    if document.get("resourceType") != "Subscription":
        raise SubscriptionRefused("resourceType", "must be Subscription")
    try:
        resource = Subscription.model_validate(dict(document))
    except ValidationError as error:
        first = error.errors()[0]
        raise SubscriptionRefused(_pointer(first["loc"]) or "Subscription", first["msg"][:200]) from None
    if resource.status not in ("requested", "active"):
        raise SubscriptionRefused("status", "must be requested (or active)")
    if resource.criteria != TOPIC:
        raise SubscriptionRefused("criteria", f"must be the topic {TOPIC}")
    site = _filter_site(document)
    if caller_site is not None and site != caller_site:
        raise SubscriptionRefused("_criteria", "a treatment center subscribes only to its own site", 403)
    channel = resource.channel
    if channel.type != "rest-hook":
        raise SubscriptionRefused("channel.type", "must be rest-hook")
    if not channel.endpoint:
        raise SubscriptionRefused("channel.endpoint", "is required for rest-hook")
    endpoint = str(channel.endpoint)
    if len(endpoint) > webhook_domain.MAX_URL_LENGTH:
        raise SubscriptionRefused("channel.endpoint", f"at most {webhook_domain.MAX_URL_LENGTH} characters")
    refusal = webhook_domain.url_refusal(endpoint, allow_loopback=allow_loopback)
    if refusal is not None:
        raise SubscriptionRefused("channel.endpoint", refusal)
    if channel.payload != FHIR_JSON:
        raise SubscriptionRefused("channel.payload", f"must be {FHIR_JSON}")
    end = resource.end
    if end is not None and (end.tzinfo is None or end <= now):
        raise SubscriptionRefused("end", "must be a future instant with its time zone")
    return SubscriptionRequest(
        site=site,
        endpoint=endpoint,
        payload_content=_payload_content(document.get("channel") or {}),
        headers=_headers([h or "" for h in channel.header or []]),
        reason=str(resource.reason)[:1000],
        end=end,
    )


def kept_headers(
    given: Sequence[tuple[str, str]], stored: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """The headers an update leaves: those given, where a masked value (`Name: ***`, as a read shows
    it) keeps the stored value of that name — a client may send back what it read. A masked header
    with no stored value is refused (it would send `***`)."""
    previous = {name.lower(): value for name, value in stored}
    kept: list[tuple[str, str]] = []
    for index, (name, value) in enumerate(given):
        if value == MASKED:
            if name.lower() not in previous:
                raise SubscriptionRefused(f"channel.header[{index}]", "is masked but has no stored value")
            value = previous[name.lower()]
        kept.append((name, value))
    return tuple(kept)


# ---------------------------------------------------------------- what is sent and read


@dataclass(frozen=True)
class SubscriptionState:
    """What a notification or a read says about a subscription."""

    id: str
    base: str
    """The absolute FHIR base (`https://…/fhir`)."""
    status: str
    events_since_start: int


def status_of(*, disabled: bool, end: datetime | None, now: datetime) -> str:
    """`error` while its channel is disabled after consecutive failures (until it is resumed), `off` once
    its `end` passed, else `active` (the handshake is skipped: active from creation)."""
    if end is not None and end <= now:
        return "off"
    return "error" if disabled else "active"


def _status_parameters(
    state: SubscriptionState, kind: str, events: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{state.base}/Subscription/{state.id}"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": state.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(state.events_since_start)},
        *events,
    ]
    document = {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }
    return Parameters.model_validate(document).model_dump(mode="json", exclude_none=True)


def _status_entry(state: SubscriptionState, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{parameters['id']}",
        "resource": parameters,
        "request": {"method": "GET", "url": f"{state.base}/Subscription/{state.id}/$status"},
        "response": {"status": "200"},
    }


def notification_bundle(
    state: SubscriptionState,
    *,
    payload_content: str,
    event_number: int,
    timestamp: datetime,
    appointment_id: str,
    appointment: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One change as a notification Bundle (`history`): first the SubscriptionStatus (a Parameters), with
    the event (its number, when, and its focus — the Appointment — unless the payload is `empty`); then,
    for `id-only` an entry naming the Appointment, for `full-resource` the Appointment itself."""
    focus = f"{state.base}/Appointment/{appointment_id}"
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(event_number)},
        {"name": "timestamp", "valueInstant": timestamp.isoformat()},
    ]
    if payload_content != "empty":
        parts.append({"name": "focus", "valueReference": {"reference": focus}})
    parameters = _status_parameters(
        state, "event-notification", [{"name": "notification-event", "part": parts}]
    )
    entries = [_status_entry(state, parameters)]
    if payload_content != "empty":
        entry: dict[str, Any] = {
            "fullUrl": focus,
            "request": {"method": "PUT", "url": f"Appointment/{appointment_id}"},
            "response": {"status": "200"},
        }
        if payload_content == "full-resource":
            assert appointment is not None, "a full-resource notification carries the Appointment"
            entry["resource"] = dict(appointment)
        entries.append(entry)
    document = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": timestamp.isoformat(),
        "entry": entries,
    }
    return Bundle.model_validate(document).model_dump(mode="json", exclude_none=True)


def status_bundle(state: SubscriptionState) -> dict[str, Any]:
    """`$status`: a searchset Bundle with the SubscriptionStatus (`query-status`)."""
    parameters = _status_parameters(state, "query-status", [])
    entry = {"fullUrl": f"urn:uuid:{parameters['id']}", "resource": parameters, "search": {"mode": "match"}}
    document = {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [entry]}
    return Bundle.model_validate(document).model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class StoredSubscription:
    """What a read shows: the stored subscription (header values never: only their names, masked)."""

    state: SubscriptionState
    site: str
    endpoint: str
    payload_content: str
    header_names: tuple[str, ...]
    reason: str
    end: datetime | None
    version: int
    updated_at: datetime
    error: str | None


def subscription_resource(stored: StoredSubscription) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": stored.endpoint,
        "payload": FHIR_JSON,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": stored.payload_content}]},
    }
    if stored.header_names:
        channel["header"] = [f"{name}: {MASKED}" for name in stored.header_names]
    document: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": stored.state.id,
        "meta": {
            "versionId": str(stored.version),
            "lastUpdated": stored.updated_at.isoformat(),
            "profile": [SUBSCRIPTION_PROFILE],
        },
        "status": stored.state.status,
        "reason": stored.reason,
        "criteria": TOPIC,
        "_criteria": {
            "extension": [
                {"url": FILTER_CRITERIA_EXTENSION, "valueString": f"Appointment?actor=Location/{stored.site}"}
            ]
        },
        "channel": channel,
    }
    if stored.end is not None:
        document["end"] = stored.end.isoformat()
    if stored.error:
        document["error"] = stored.error[:500]
    return Subscription.model_validate(document).model_dump(mode="json", exclude_none=True)
