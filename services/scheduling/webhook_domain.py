"""Webhook rules, pure Python, no I/O: where a message to a treatment center may go, how it is signed
(and with which secrets while one is being rotated), how a receiver checks it, and what a failed attempt
means for the delivery and for its endpoint. Registration, update, sending and the reference receiver
(`deploy/webhook_receiver.py`) all ask these functions; none decides for itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

from services.scheduling.domain import retry_delay_seconds

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SIGNATURE_HEADER = "X-CGT-Signature"
TIMESTAMP_HEADER = "X-CGT-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_SCHEME = "v2"
"""v2 signs `<timestamp>.<idempotency key>.<body>`; v1 (before) signed no key, so a replay could carry a
new key and be taken for a new message."""
TIMESTAMP_TOLERANCE_SECONDS = 300

WEBHOOK_KINDS = frozenset(
    {
        "slot.proposed",
        "slot.confirmed",
        "slot.held",
        "slot.resumed",
        "slot.rescheduled",
        "slot.at_risk",
        "slot.cancelled",
        "infusion.recorded",
        "plan.replanned",
    }
)
"""The messages a site can subscribe to (an endpoint with no list receives every kind)."""


# ---------------------------------------------------------------- where a webhook may go

MAX_ENDPOINTS_PER_SITE = 5
"""Endpoints (not deleted) a site may have at once: every message is sent to each, so more would only
multiply the work one site puts on the deliverer."""
MAX_URL_LENGTH = 2048
"""Characters in a webhook URL at most (the `url` column's width; `create_tables` widens an older, narrower
column). A URL over 64 KiB had stalled every site's deliveries."""


def endpoint_limit_refusal(existing: int) -> str | None:
    """Why a site that has `existing` endpoints may not register one more (None if it may)."""
    if existing >= MAX_ENDPOINTS_PER_SITE:
        return f"a site may have at most {MAX_ENDPOINTS_PER_SITE} webhook endpoints: delete one first"
    return None


METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (a "global" address by the registry: only this list refuses it)
    )
)
LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain"})
PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan", ".intranet")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> list[IPAddress]:
    """IPv4 addresses an IPv6 address reaches (mapped, NAT64, 6to4, Teredo): each is judged as well."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    embedded: list[IPAddress] = []
    if address.ipv4_mapped is not None:
        embedded.append(address.ipv4_mapped)
    if address in NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    return embedded


def _one_address_refusal(address: IPAddress, allow_loopback: bool) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "an address that is not public"
    return None


def address_refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why a webhook may not be sent to this address (None if it may): only public addresses, and
    loopback when development allows it. An IPv6 address is judged with the IPv4 address it embeds."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    # An IPv4-mapped address is the IPv4 address itself (its own range only says "mapped").
    candidates = [mapped] if mapped is not None else [*_embedded_ipv4(address), address]
    for candidate in candidates:
        refusal = _one_address_refusal(candidate, allow_loopback)
        if refusal is not None:
            return refusal
    return None


def _is_loopback(address: IPAddress) -> bool:
    return any(a.is_loopback for a in (address, *_embedded_ipv4(address)))


def literal_address(host: str) -> IPAddress | None:
    """The address a host names by itself: `203.0.113.7`, `::1`, and the legacy IPv4 forms a resolver
    also takes (`127.1`, `2130706433`, `0x7f.0.0.1`) — judged as what they are, not as names."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host.lower()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def url_refusal(url: str, *, allow_loopback: bool) -> str | None:
    """Why a webhook may not be registered at `url` (None if it may): `https` to a public host; with
    `allow_loopback` (development and tests), also `http` or `https` to a loopback host. The host's name
    is judged here; its addresses are judged again, after resolution, every time a message is sent."""
    if len(url) > MAX_URL_LENGTH:
        return f"may be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError:
        return "is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return "must be an https URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if not host:
        return "must name a host"
    literal = literal_address(host)
    if literal is not None:
        refusal = address_refusal(literal, allow_loopback=allow_loopback)
        if refusal is not None:
            return f"points to {refusal}"
        loopback = _is_loopback(literal)
    else:
        name = host.rstrip(".").lower()
        loopback = name in LOCALHOST_NAMES or name.endswith(".localhost")
        if loopback and not allow_loopback:
            return "points to a loopback host"
        if not loopback and ("." not in name or name.endswith(PRIVATE_SUFFIXES)):
            return "must name a public host"
    if scheme == "http" and not loopback:
        return "must be an https URL"
    return None


def resolved_refusal(addresses: Sequence[IPAddress], *, scheme: str, allow_loopback: bool) -> str | None:
    """Why a message may not go to a host that resolved to `addresses` (None if it may). Every address
    must pass, so that a name answering with a public and a private address cannot reach the private one;
    plain `http` goes only to loopback."""
    if not addresses:
        return "the host did not resolve"
    for address in addresses:
        refusal = address_refusal(address, allow_loopback=allow_loopback)
        if refusal is not None:
            return f"the host resolved to {refusal}"
    if scheme.lower() == "http" and not all(_is_loopback(a) for a in addresses):
        return "http is allowed only to a loopback host"
    return None


def unknown_kinds(kinds: Iterable[str]) -> list[str]:
    return sorted(set(kinds) - WEBHOOK_KINDS)


# ---------------------------------------------------------------- signatures


def signature(secret: str, timestamp: int, idempotency_key: str, body: bytes) -> str:
    """`v2=` and the hex HMAC-SHA256, under the secret, of `<timestamp>.<idempotency key>.<body>`."""
    message = f"{timestamp}.{idempotency_key}.".encode() + body
    return f"{SIGNATURE_SCHEME}=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, idempotency_key: str, body: bytes) -> str:
    """One signature per valid secret, newest first, separated by `, ` (two during a rotation's overlap)."""
    return ", ".join(signature(secret, timestamp, idempotency_key, body) for secret in secrets)


def signature_matches(
    secrets: Sequence[str], timestamp: int, idempotency_key: str, body: bytes, header: str
) -> bool:
    """True if any signature in the header is one of `secrets`' (compared in constant time)."""
    offered = [part.strip() for part in header.split(",") if part.strip()]
    expected = [signature(secret, timestamp, idempotency_key, body) for secret in secrets]
    # Every pair is compared (no early exit), so the time taken says nothing about which one matched.
    matches = [hmac.compare_digest(e, o) for e in expected for o in offered]
    return any(matches)


def signing_secrets(
    current: str, previous: str | None, previous_valid_until: datetime | None, now: datetime
) -> list[str]:
    """The secrets a message is signed with: the current one, and the one it replaced until the
    rotation's overlap ends (so a receiver can switch to the new secret at any time within it)."""
    if previous and previous_valid_until is not None and now < previous_valid_until:
        return [current, previous]
    return [current]


@dataclass(frozen=True)
class Refusal:
    """Why a receiver refuses a request: 400 when it is malformed or stale, 401 when it is not signed."""

    status: int
    reason: str


def parse_timestamp(raw: str | None) -> int | None:
    """Seconds since the epoch as sent in X-CGT-Timestamp: decimal digits only (no sign, no fraction)."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        return None
    return int(raw)


def request_refusal(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_seconds: int = TIMESTAMP_TOLERANCE_SECONDS,
) -> Refusal | None:
    """What a receiver checks before it reads a message: a well-formed timestamp within the tolerance,
    an idempotency key, and a signature over the three under one of its secrets. `headers` has lower-case
    names. A replay outside the tolerance is refused; one with another key fails the signature."""
    timestamp = parse_timestamp(headers.get(TIMESTAMP_HEADER.lower()))
    if timestamp is None:
        return Refusal(400, f"{TIMESTAMP_HEADER} is missing or not a whole number of seconds")
    if abs(now - timestamp) > tolerance_seconds:
        return Refusal(400, f"{TIMESTAMP_HEADER} is outside the tolerance of {tolerance_seconds} s")
    key = headers.get(IDEMPOTENCY_HEADER.lower(), "")
    if not key or len(key) > 128 or not key.isascii() or not key.isprintable():
        return Refusal(400, f"{IDEMPOTENCY_HEADER} is missing or malformed")
    if not signature_matches(secrets, timestamp, key, body, headers.get(SIGNATURE_HEADER.lower(), "")):
        return Refusal(401, f"{SIGNATURE_HEADER} does not match")
    return None


# ---------------------------------------------------------------- failures


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give_up"
    """This message ran out of attempts while its endpoint still answers others: it alone failed."""
    DISABLE_ENDPOINT = "disable_endpoint"
    """The endpoint failed too many times in a row: it is disabled, its waiting messages kept for later."""
    SET_ASIDE = "set_aside"
    """The endpoint was paused, disabled or deleted meanwhile: the failure is not counted against it."""


@dataclass(frozen=True)
class FailurePolicy:
    max_attempts: int
    disable_after_failures: int
    backoff_base_seconds: float

    def __post_init__(self) -> None:
        # A dead endpoint must be disabled by the time its first message runs out of attempts; otherwise
        # each of its messages would fail on its own first (one event and one worklist item each).
        if not 1 <= self.disable_after_failures <= self.max_attempts:
            raise ValueError("disable_after_failures must be between 1 and max_attempts")


@dataclass(frozen=True)
class AttemptDecision:
    outcome: AttemptOutcome
    consecutive_failures: int
    """The endpoint's count of failed attempts in a row after this one (0 after a success)."""
    retry_in_seconds: float | None = None


def judge_attempt(
    *,
    succeeded: bool,
    delivery_attempts: int,
    consecutive_failures: int,
    endpoint_active: bool,
    policy: FailurePolicy,
) -> AttemptDecision:
    """What one attempt means. `delivery_attempts` counts this attempt; `consecutive_failures` is the
    endpoint's count before it. An endpoint is disabled once: when it is no longer active, nothing is
    counted and nothing more is decided for it."""
    if succeeded:
        return AttemptDecision(AttemptOutcome.DELIVERED, 0)
    if not endpoint_active:
        return AttemptDecision(AttemptOutcome.SET_ASIDE, consecutive_failures)
    failures = consecutive_failures + 1
    if failures >= policy.disable_after_failures:
        return AttemptDecision(AttemptOutcome.DISABLE_ENDPOINT, failures)
    if delivery_attempts >= policy.max_attempts:
        return AttemptDecision(AttemptOutcome.GIVE_UP, failures)
    delay = retry_delay_seconds(delivery_attempts, policy.backoff_base_seconds)
    return AttemptDecision(AttemptOutcome.RETRY, failures, delay)
