"""Order intake rules: acceptance checks, NPI validation, the order's state machine (every step, and the
one way each is taken), collections, the product's release, and what a site-scoped caller sees. No I/O."""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from cgt_contracts.events import OosDocument, OrderRejectionCode

from services.common.scope import visible_to as visible_to  # the rule of every service, kept once


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CELLS_COLLECTED = "cells_collected"
    IN_MANUFACTURING = "in_manufacturing"
    PRODUCT_RELEASED = "product_released"
    PRODUCT_SHIPPED = "product_shipped"
    PRODUCT_DELIVERED = "product_delivered"
    INFUSED = "infused"
    IN_FOLLOW_UP = "in_follow_up"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    MANUFACTURING_FAILED = "manufacturing_failed"
    """The lot failed: a new collection (a new DIN under the same COI) starts the next attempt."""


LIFECYCLE: tuple[OrderStatus, ...] = (
    OrderStatus.ACCEPTED,
    OrderStatus.CELLS_COLLECTED,
    OrderStatus.IN_MANUFACTURING,
    OrderStatus.PRODUCT_RELEASED,
    OrderStatus.PRODUCT_SHIPPED,
    OrderStatus.PRODUCT_DELIVERED,
    OrderStatus.INFUSED,
    OrderStatus.IN_FOLLOW_UP,
    OrderStatus.CLOSED,
)
"""The therapy's path, one step at a time: no step is skipped, none is gone back to."""

CANCELLABLE: frozenset[OrderStatus] = frozenset(
    {
        OrderStatus.SUBMITTED,
        *LIFECYCLE[: LIFECYCLE.index(OrderStatus.INFUSED)],
        OrderStatus.MANUFACTURING_FAILED,
    }
)
ACTIVE: frozenset[OrderStatus] = frozenset(
    {OrderStatus.SUBMITTED, *LIFECYCLE[:-1], OrderStatus.MANUFACTURING_FAILED}
)
"""Orders that block a second order for the same patient and therapy: a rejected, cancelled or closed
order does not."""

DUPLICATE_ACTIVE_ORDER = "the patient already has an active order for this therapy"
"""The refusal of a second active order (409): it names no patient data, only the rule."""


def allowed_transitions(current: OrderStatus) -> frozenset[OrderStatus]:
    targets: set[OrderStatus] = set()
    if current is OrderStatus.SUBMITTED:
        targets |= {OrderStatus.ACCEPTED, OrderStatus.REJECTED}
    if current in LIFECYCLE and current is not OrderStatus.CLOSED:
        targets.add(LIFECYCLE[LIFECYCLE.index(current) + 1])
    if current is OrderStatus.IN_MANUFACTURING:
        targets.add(OrderStatus.MANUFACTURING_FAILED)  # the one way back: a lot failed
    if current is OrderStatus.MANUFACTURING_FAILED:
        targets.add(OrderStatus.CELLS_COLLECTED)  # the next attempt starts with a new collection
    if current in CANCELLABLE:
        targets.add(OrderStatus.CANCELLED)
    return frozenset(targets)


class Way(StrEnum):
    """How a step reaches the order: the use case that takes it. Each step has its own ways, so that a
    step carrying facts (a DIN, a lot, a reason) is never set without them."""

    PLACEMENT = "placement"
    """The acceptance checks, when the order is placed."""
    COLLECTION = "collection"
    """A collection recorded with its DIN."""
    STEP = "step"
    """A coordinator records a step that happened outside the system."""
    RELEASE = "manufacturing_release"
    """The manufacturer's release of the product, with its lot."""
    CANCELLATION = "cancellation"
    """A cancellation, with its reason."""
    SHIPMENT_EVENT = "shipment_event"
    """COI tracking's shipment events."""
    INFUSION_EVENT = "infusion_event"
    """Scheduling's infusion recorded."""
    FAILURE = "manufacturing_failure"
    """A lot that failed in manufacturing, with its reason."""


WAYS: Mapping[OrderStatus, frozenset[Way]] = {
    OrderStatus.SUBMITTED: frozenset(),
    OrderStatus.ACCEPTED: frozenset({Way.PLACEMENT}),
    OrderStatus.REJECTED: frozenset({Way.PLACEMENT}),
    OrderStatus.CELLS_COLLECTED: frozenset({Way.COLLECTION, Way.STEP}),
    OrderStatus.IN_MANUFACTURING: frozenset({Way.STEP}),
    OrderStatus.PRODUCT_RELEASED: frozenset({Way.RELEASE}),
    OrderStatus.PRODUCT_SHIPPED: frozenset({Way.SHIPMENT_EVENT}),
    OrderStatus.PRODUCT_DELIVERED: frozenset({Way.SHIPMENT_EVENT}),
    OrderStatus.INFUSED: frozenset({Way.STEP, Way.INFUSION_EVENT}),
    OrderStatus.IN_FOLLOW_UP: frozenset({Way.STEP, Way.INFUSION_EVENT}),
    OrderStatus.CLOSED: frozenset({Way.STEP}),
    OrderStatus.CANCELLED: frozenset({Way.CANCELLATION}),
    OrderStatus.MANUFACTURING_FAILED: frozenset({Way.FAILURE}),
}
"""The ways each status may be reached; `check_transition` refuses any other."""

WAY_HINTS: Mapping[Way, str] = {
    Way.PLACEMENT: "decided by the checks when the order is placed",
    Way.COLLECTION: "recorded with its collection and DIN: POST …/collections",
    Way.STEP: "recorded by a coordinator: POST …/status",
    Way.RELEASE: "the product's release is recorded with its lot: POST …/manufacturing-release",
    Way.CANCELLATION: "a cancellation is recorded with its reason: POST …/cancel",
    Way.SHIPMENT_EVENT: "set by the shipment's events, not by hand",
    Way.INFUSION_EVENT: "set by scheduling's infusion event",
    Way.FAILURE: "a failed lot is recorded with its reason: POST …/manufacturing-failure",
}


class TransitionRefused(Exception):
    """A step the state machine refuses: out of order, or taken another way than its own."""

    def __init__(self, current: OrderStatus, target: OrderStatus, why: str | None = None):
        if why is None:
            allowed = ", ".join(sorted(allowed_transitions(current))) or "nothing"
            why = f"an order that is {current} cannot become {target} (it may become: {allowed})"
        super().__init__(why)
        self.current = current
        self.target = target


def check_transition(current: OrderStatus, target: OrderStatus, way: Way) -> None:
    """Every change of an order's status is judged here: by the way it comes (a step with facts of its
    own only with them), then by the order of the therapy's steps."""
    ways = WAYS[target]
    if way not in ways:
        hints = "; ".join(WAY_HINTS[w] for w in sorted(ways)) or "it is where every order starts"
        raise TransitionRefused(current, target, f"{target} is not set this way ({hints})")
    if target not in allowed_transitions(current):
        raise TransitionRefused(current, target)
    # After a failed lot the next attempt's cells are recorded with their new DIN, never by a step.
    failed = current is OrderStatus.MANUFACTURING_FAILED
    if failed and target is OrderStatus.CELLS_COLLECTED and way is not Way.COLLECTION:
        raise TransitionRefused(
            current, target, f"after a failed lot, {target} is reached only by a new collection with its DIN"
        )


COLLECTING: frozenset[OrderStatus] = frozenset(
    {OrderStatus.ACCEPTED, OrderStatus.CELLS_COLLECTED, OrderStatus.MANUFACTURING_FAILED}
)
"""Collections are recorded for an accepted order until manufacturing starts (more than one may be), and
again after a failed lot: the next attempt's collection, with a new DIN under the same COI."""

MAX_COLLECTIONS = 20
"""Collections of one order (ISBT 128 allows several per therapy event; the events say 1..20)."""


def collection_refusal(status: OrderStatus, has_coi: bool, collections: int = 0) -> str | None:
    """Why a collection cannot be recorded for the order, or None."""
    if status not in COLLECTING or not has_coi:
        return f"cannot record a collection for an order that is {status}"
    if collections >= MAX_COLLECTIONS:
        return f"the order already has {MAX_COLLECTIONS} collections, the most one COI links"
    return None


def status_after_collection(status: OrderStatus) -> OrderStatus | None:
    """The first collection of an attempt (the order's first, or the first after a failed lot) moves the
    order to cells_collected; later ones leave it there."""
    if status in (OrderStatus.ACCEPTED, OrderStatus.MANUFACTURING_FAILED):
        return OrderStatus.CELLS_COLLECTED
    return None


def manufacturing_failure_refusal(status: OrderStatus, collections: int) -> str | None:
    """Why a failed lot cannot be recorded for the order, or None: only while its order is in
    manufacturing (a released product is not a failed lot; a cancelled order has none), and only of a
    lot made from a collection."""
    if OrderStatus.MANUFACTURING_FAILED not in allowed_transitions(status):
        return (
            f"a manufacturing failure is recorded only while its order is {OrderStatus.IN_MANUFACTURING}; "
            f"this order is {status}"
        )
    if collections == 0:
        return "the order has no collection the failed lot was made from"
    return None


RENEWABLE: frozenset[OrderStatus] = CANCELLABLE - {OrderStatus.SUBMITTED}
"""Orders whose payer authorization may be renewed: accepted, not yet infused, not cancelled."""


@dataclass(frozen=True)
class Refusal:
    """A refusal, and the request field it is about (None: the order's state, a 409)."""

    detail: str
    field: str | None = None


def payer_authorization_renewal_refusal(status: OrderStatus, expires_on: date, today: date) -> Refusal | None:
    """Why a renewed payer authorization cannot be recorded for the order, or None: only for an order the
    chain still runs for, and only one that covers today at least (the server's date)."""
    if status not in RENEWABLE:
        return Refusal(
            f"a payer authorization is renewed only for an accepted order not yet infused; this one is {status}"
        )
    if expires_on < today:
        return Refusal(f"expires before today ({today.isoformat()})", field="expires_on")
    return None


def manufacturing_delay_refusal(status: OrderStatus) -> str | None:
    """Why a delay of the lot's release cannot be recorded, or None: only while the order is in
    manufacturing (a released product is shipped, not delayed in manufacturing; a failed lot has none)."""
    if status is not OrderStatus.IN_MANUFACTURING:
        return (
            f"a manufacturing delay is recorded only while its order is {OrderStatus.IN_MANUFACTURING}; "
            f"this order is {status}"
        )
    return None


def expected_release_refusal(expected_release_on: date, today: date) -> str | None:
    """Why a delayed lot's new expected release day cannot be right (422 naming the field), or None: a
    delay looks ahead, so not before today (UTC)."""
    if expected_release_on < today:
        return "the expected release day is in the past"
    return None


RELEASE_CLOCK_TOLERANCE = timedelta(minutes=5)


def manufacturing_release_refusal(
    status: OrderStatus, released_at: datetime, now: datetime, manufacturing_started_at: datetime | None
) -> str | None:
    """Why the manufacturer's release of the order's product cannot be recorded, or None. The release is
    what lets the return shipment be picked up (COI tracking gates its pick-up on it). A product is
    released only of an order in manufacturing: not before cells were collected and manufacturing
    started, not twice, not for a cancelled or rejected order (the state machine says which)."""
    if OrderStatus.PRODUCT_RELEASED not in allowed_transitions(status):
        return (
            f"a product is released for shipment only while its order is {OrderStatus.IN_MANUFACTURING}; "
            f"this order is {status}"
        )
    if released_at > now + RELEASE_CLOCK_TOLERANCE:
        return "released_at is in the future"
    # To the second: a release stated in whole seconds (as people and most systems give times) in the
    # second manufacturing started is not before it.
    if manufacturing_started_at is not None and released_at < manufacturing_started_at.replace(microsecond=0):
        return f"released_at is before manufacturing started ({manufacturing_started_at.isoformat()})"
    return None


# ---------------------------------------------------------------- a product released out of specification

IND_COUNTRIES = frozenset({"US"})
"""Where an out-of-specification product is infused under an expanded-access or single-patient IND."""


def oos_documents_required(country: str | None) -> tuple[OosDocument, ...]:
    """What the file of a product released out of specification must hold before it is scheduled for
    infusion: the treating physician's request, the patient's consent to receive it, the manufacturer's
    risk assessment, and, in the US, the expanded-access or single-patient IND. A site whose country is
    not known is held to the strictest list (the IND too)."""
    base = (OosDocument.PHYSICIAN_REQUEST, OosDocument.PATIENT_CONSENT, OosDocument.RISK_ASSESSMENT)
    return (*base, OosDocument.IND) if country is None or country in IND_COUNTRIES else base


def oos_documents_missing(
    on_file: Mapping[OosDocument, str | None], country: str | None
) -> tuple[OosDocument, ...]:
    """The required documents the file does not hold a reference to yet (none: the file is complete)."""
    return tuple(d for d in oos_documents_required(country) if not on_file.get(d))


def release_specification_problem(out_of_specification: bool, code_given: bool) -> str | None:
    """Why a release's specification fields do not fit together, or None (about the code's field): a
    release out of specification says what it missed; one in specification names nothing."""
    if out_of_specification and not code_given:
        return "a release out of specification says what was out of specification"
    if not out_of_specification and code_given:
        return "only a release out of specification names what was out of specification"
    return None


def oos_file_refusal(released_out_of_specification: bool, completed: bool) -> str | None:
    """Why documents cannot be added to an order's out-of-specification file, or None: only a product
    released out of specification has one, and a complete file is not changed (it let the product be
    scheduled)."""
    if not released_out_of_specification:
        return "the order's product was not released out of specification: it has no such file"
    if completed:
        return "the out-of-specification file is already complete"
    return None


def npi_is_valid(npi: str) -> bool:
    """NPI check digit: the Luhn formula over the prefix 80840 and the first nine digits (CMS)."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    return luhn_check_digit("80840" + npi[:9]) == int(npi[9])


def luhn_check_digit(digits: str) -> int:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


EARLIEST_DATE_OF_BIRTH = date(1900, 1, 1)
"""No living patient was born before this day: an earlier date of birth is a typing error."""


def date_of_birth_refusal(date_of_birth: date, today: date) -> str | None:
    """Why a patient's date of birth cannot be right, or None: not after today (the server's date), not
    before `EARLIEST_DATE_OF_BIRTH`. The message names the limits, never the date given."""
    if date_of_birth > today:
        return "the date of birth is in the future"
    if date_of_birth < EARLIEST_DATE_OF_BIRTH:
        return f"the date of birth is before {EARLIEST_DATE_OF_BIRTH.isoformat()}"
    return None


def normalised_identity_part(text: str) -> str:
    """One part of a patient's identity as the match compares it: Unicode NFKC (full-width and
    compatibility forms fold to their plain letters), case folded, whitespace trimmed and every inner
    run of it made one space. Accents are kept: "Müller" and "Muller" may be two people, and a missed
    match is caught by the coordinator while a false one refuses a patient's order."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def patient_match(key: bytes, name: str, date_of_birth: date, medical_record_number: str) -> str:
    """The keyed hash (HMAC-SHA256, hex) that says two orders are for the same patient however their
    `patient_ref` is spelled: of the normalised name, the date of birth and the normalised record number.
    Keyed, so that it cannot be reversed by hashing guessed identities without the key; it stays in
    order intake (never logged, never in an event)."""
    parts = (
        normalised_identity_part(name),
        date_of_birth.isoformat(),
        normalised_identity_part(medical_record_number),
    )
    return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Failure:
    code: OrderRejectionCode
    """What is published (`order.rejected.v2`); the message stays with the order."""
    message: str


@dataclass(frozen=True)
class OrderFacts:
    """What the acceptance checks need, gathered by the caller from the registry and the request."""

    order_date: date
    """The server's date when the order is placed: the caller's stated date never passes a check."""
    therapy_known: bool
    site_known: bool
    certifications: tuple[tuple[date, date | None], ...]
    """The site's (effective, expiry) qualifications for this therapy."""
    prescriber_npi: str
    prescriber_known: bool
    prescriber_may_order_for_site: bool
    consent_signed_on: date | None
    consent_form_version: str | None
    payer_authorization_expires_on: date | None
    eligibility_attested: bool


def certified_on(certifications: tuple[tuple[date, date | None], ...], day: date) -> bool:
    return any(start <= day and (end is None or day <= end) for start, end in certifications)


def acceptance_failures(facts: OrderFacts) -> list[Failure]:
    """Every failed check, each with a code and a message: an order is rejected with all of them."""
    failures: list[Failure] = []
    if not facts.therapy_known:
        failures.append(Failure(OrderRejectionCode.THERAPY_UNKNOWN, "the therapy is not in the registry"))
    if not facts.site_known:
        failures.append(
            Failure(OrderRejectionCode.SITE_UNKNOWN, "the treatment center is not in the registry")
        )
    elif facts.therapy_known and not certified_on(facts.certifications, facts.order_date):
        failures.append(
            Failure(
                OrderRejectionCode.SITE_NOT_CERTIFIED,
                f"the treatment center is not qualified for this therapy on {facts.order_date.isoformat()}",
            )
        )
    if not npi_is_valid(facts.prescriber_npi):
        failures.append(
            Failure(OrderRejectionCode.PRESCRIBER_NPI_INVALID, "the prescriber's NPI fails its check digit")
        )
    elif not facts.prescriber_known:
        failures.append(
            Failure(OrderRejectionCode.PRESCRIBER_UNKNOWN, "the prescriber is not in the registry")
        )
    elif not facts.prescriber_may_order_for_site:
        failures.append(
            Failure(OrderRejectionCode.PRESCRIBER_NOT_AT_SITE, "the prescriber may not order for this site")
        )
    if facts.consent_signed_on is None or not facts.consent_form_version:
        failures.append(
            Failure(OrderRejectionCode.CONSENT_MISSING, "no consent recorded (date and form version)")
        )
    elif facts.consent_signed_on > facts.order_date:
        failures.append(Failure(OrderRejectionCode.CONSENT_AFTER_ORDER, "consent is dated after the order"))
    if facts.payer_authorization_expires_on is None:
        failures.append(
            Failure(OrderRejectionCode.PAYER_AUTHORIZATION_MISSING, "no payer authorization on file")
        )
    elif facts.payer_authorization_expires_on < facts.order_date:
        failures.append(
            Failure(
                OrderRejectionCode.PAYER_AUTHORIZATION_EXPIRED,
                f"the payer authorization expired on {facts.payer_authorization_expires_on.isoformat()}",
            )
        )
    if not facts.eligibility_attested:
        failures.append(
            Failure(OrderRejectionCode.ELIGIBILITY_NOT_ATTESTED, "clinical eligibility has not been attested")
        )
    return failures
