"""Who may do what on the broker: one principal per service and per courier company, and their ACLs.

Each service writes only its own topic and the dead-letter topics of what it consumes, and reads only what
it consumes (with its own consumer groups); a courier company's system writes only `couriers.scans`. Any
principal may create (not write) the project's topics, so that whichever service starts first finds them
all. Tools (dead letters, `verify`, the tests' and benchmarks' raw clients) log in as the broker's super
user. `make up`, the tests and the fault suite give these to the broker they start (`deploy/kafka`); an
operator of another cluster creates the same (README, "Security").
"""

from __future__ import annotations

from dataclasses import dataclass

from services.coi_tracking.handlers import GROUP_ID as TRACKING_GROUP
from services.coi_tracking.handlers import SCANS_GROUP_ID
from services.common.topics import ALL_TOPICS, COURIER_SCANS, LEDGER_HEADS, ORDERS, SCHEDULING, SHIPMENTS, dlq
from services.order_intake.handlers import GROUP_ID as ORDERS_GROUP
from services.scheduling.handlers import GROUP_ID as SCHEDULING_GROUP


@dataclass(frozen=True)
class Grant:
    writes: tuple[str, ...]
    reads: tuple[str, ...]
    groups: tuple[str, ...] = ()


SERVICE_GRANTS: dict[str, Grant] = {
    "order-intake": Grant(
        writes=(ORDERS, dlq(SHIPMENTS), dlq(SCHEDULING)),
        reads=(SHIPMENTS, SCHEDULING),
        groups=(ORDERS_GROUP,),
    ),
    "coi-tracking": Grant(
        writes=(SHIPMENTS, LEDGER_HEADS, dlq(ORDERS), dlq(COURIER_SCANS)),
        reads=(ORDERS, COURIER_SCANS, LEDGER_HEADS),
        groups=(TRACKING_GROUP, SCANS_GROUP_ID),
    ),
    "scheduling": Grant(
        writes=(SCHEDULING, dlq(ORDERS), dlq(SHIPMENTS)),
        reads=(ORDERS, SHIPMENTS),
        groups=(SCHEDULING_GROUP,),
    ),
}
"""Service name (its SERVICE_NAME and its principal) -> what the broker lets it do."""

COURIER_COMPANIES = ("CRYO-EXPRESS", "OTHER-LOGISTICS")
"""The development couriers' companies (COI tracking's seed); each has its own principal."""


def courier_principal(company: str) -> str:
    return f"courier-{company.lower()}"


COURIER_GRANT = Grant(writes=(COURIER_SCANS,), reads=())


def grants() -> dict[str, Grant]:
    return {**SERVICE_GRANTS, **{courier_principal(company): COURIER_GRANT for company in COURIER_COMPANIES}}


def users() -> tuple[str, ...]:
    return tuple(grants())


def acl_lines() -> tuple[str, ...]:
    """The ACLs in CreateAcls.java's line form: PRINCIPAL RESOURCE_TYPE PATTERN_TYPE NAME OPERATION."""
    lines: list[str] = []
    for user, grant in grants().items():
        principal = f"User:{user}"
        lines += [
            f"{principal} TOPIC LITERAL {topic} {op}"
            for topic in grant.writes
            for op in ("WRITE", "DESCRIBE")
        ]
        lines += [
            f"{principal} TOPIC LITERAL {topic} {op}" for topic in grant.reads for op in ("READ", "DESCRIBE")
        ]
        lines += [f"{principal} GROUP LITERAL {group} READ" for group in grant.groups]
        if user in SERVICE_GRANTS:
            lines += [
                f"{principal} TOPIC LITERAL {spec.name} {op}"
                for spec in ALL_TOPICS
                for op in ("CREATE", "DESCRIBE")
            ]
    return tuple(dict.fromkeys(lines))
