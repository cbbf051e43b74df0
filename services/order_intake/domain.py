"""Order intake rules: acceptance checks and the order's state machine. Pure Python, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CELLS_COLLECTED = "cells_collected"
    IN_MANUFACTURING = "in_manufacturing"
    PRODUCT_SHIPPED = "product_shipped"
    PRODUCT_DELIVERED = "product_delivered"
    INFUSED = "infused"
    IN_FOLLOW_UP = "in_follow_up"
    CLOSED = "closed"
    CANCELLED = "cancelled"


_FORWARD: tuple[OrderStatus, ...] = (
    OrderStatus.ACCEPTED,
    OrderStatus.CELLS_COLLECTED,
    OrderStatus.IN_MANUFACTURING,
    OrderStatus.PRODUCT_SHIPPED,
    OrderStatus.PRODUCT_DELIVERED,
    OrderStatus.INFUSED,
    OrderStatus.IN_FOLLOW_UP,
    OrderStatus.CLOSED,
)
CANCELLABLE: frozenset[OrderStatus] = frozenset(
    {OrderStatus.SUBMITTED, *_FORWARD[: _FORWARD.index(OrderStatus.INFUSED)]}
)
ACTIVE: frozenset[OrderStatus] = frozenset(_FORWARD[:-1]) | {OrderStatus.SUBMITTED}


def allowed_transitions(current: OrderStatus) -> frozenset[OrderStatus]:
    """The states an order may move to next. Collection and manufacturing may be skipped by events
    (the return shipment can be the first news order intake hears), never gone back to."""
    targets: set[OrderStatus] = set()
    if current is OrderStatus.SUBMITTED:
        targets |= {OrderStatus.ACCEPTED, OrderStatus.REJECTED}
    if current in _FORWARD:
        targets |= set(_FORWARD[_FORWARD.index(current) + 1 :])
    if current in CANCELLABLE:
        targets.add(OrderStatus.CANCELLED)
    return frozenset(targets)


class TransitionRefused(Exception):
    def __init__(self, current: OrderStatus, target: OrderStatus):
        super().__init__(f"an order that is {current} cannot become {target}")
        self.current = current
        self.target = target


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if target not in allowed_transitions(current):
        raise TransitionRefused(current, target)


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


@dataclass(frozen=True)
class OrderFacts:
    """What the acceptance checks need to know, gathered by the caller from the registry."""

    order_date: date
    therapy_known: bool
    site_known: bool
    site_certified_from: date | None
    site_certified_until: date | None
    prescriber_known: bool
    prescriber_may_order_for_site: bool
    has_active_order_for_patient_and_therapy: bool


def acceptance_failures(facts: OrderFacts) -> list[Failure]:
    """Every failed check, each with a code and a message (an order is rejected with all of them)."""
    failures: list[Failure] = []
    if not facts.therapy_known:
        failures.append(Failure("therapy_unknown", "the therapy is not in the registry"))
    if not facts.site_known:
        failures.append(Failure("site_unknown", "the treatment center is not in the registry"))
    elif facts.therapy_known and not _certified_on(facts):
        failures.append(
            Failure(
                "site_not_certified",
                f"the treatment center is not qualified for this therapy on {facts.order_date.isoformat()}",
            )
        )
    if not facts.prescriber_known:
        failures.append(Failure("prescriber_unknown", "the prescriber is not in the registry"))
    elif not facts.prescriber_may_order_for_site:
        failures.append(Failure("prescriber_not_at_site", "the prescriber may not order for this site"))
    if facts.has_active_order_for_patient_and_therapy:
        failures.append(
            Failure("duplicate_active_order", "the patient already has an active order for this therapy")
        )
    return failures


def _certified_on(facts: OrderFacts) -> bool:
    start, end = facts.site_certified_from, facts.site_certified_until
    if start is None:
        return False
    return start <= facts.order_date and (end is None or facts.order_date <= end)
