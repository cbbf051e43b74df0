"""The three real service apps for the console's tests, never started (no broker): SQLite databases of their
own with the services' seeds, and `Relay`, which carries what each wrote to its outbox to the others'
handlers as their consumers would (one transaction per event), so that a case can be driven through the real
APIs from order to infusion. `console_site_running` runs the apps and the console under uvicorn on loopback
ports (`serving` of tests/support/console.py), for the browser tests (`console_relay_site` in
tests/browser/conftest.py)."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cgt_contracts.events import parse_event
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.coi_tracking import handlers as tracking_handlers
from services.coi_tracking.models import TABLES as TRACKING_TABLES
from services.coi_tracking.seed import seed_couriers
from services.common.outbox import OutboxMessage
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.order_intake import handlers as order_handlers
from services.order_intake.models import TABLES as ORDER_TABLES
from services.order_intake.seed import seed_registry
from services.scheduling import handlers as scheduling_handlers
from services.scheduling import runtime as scheduling_runtime
from services.scheduling.models import TABLES as SCHEDULING_TABLES
from tests.support.console import service_env, serving_console
from tests.support.infra import database

COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
COURIER = {"Authorization": "Bearer dev-courier-token"}
COURIER_2 = {"Authorization": "Bearer dev-courier2-token"}
SERVICES = {
    "order_intake": ("OrderIntakeSettings", [*COMMON_TABLES, *ORDER_TABLES]),
    "coi_tracking": ("TrackingSettings", [*COMMON_TABLES, *TRACKING_TABLES]),
    "scheduling": ("SchedulingSettings", [*COMMON_TABLES, *SCHEDULING_TABLES]),
}
PLANNING = tracking_handlers.Planning(
    courier_company="CRYO-EXPRESS",
    manufacturing_site="manufacturer:AGC-MILAN",
    bag_count=1,
    fresh_max_transit_hours=72.0,
)
"""COI tracking's defaults (TrackingSettings)."""
SCHEDULING = scheduling_handlers.Config(receipt_buffer_hours=24.0)

Handler = Callable[[Any, Any], None]


def _tracking_handlers() -> dict[str, Handler]:
    def accepted(session: Any, event: Any) -> None:
        tracking_handlers.plan_return_shipment(session, event, PLANNING)

    def collected(session: Any, event: Any) -> None:
        tracking_handlers.plan_outbound_leg(session, event, PLANNING)

    def failed(session: Any, event: Any) -> None:
        tracking_handlers.replan_return_leg(session, event, PLANNING)

    return {
        "OrderAccepted": accepted,
        "OrderAcceptedV2": accepted,
        "CollectionRecorded": collected,
        "OrderCancelled": tracking_handlers.mark_order_cancelled,
        "OrderCancelledV2": tracking_handlers.mark_order_cancelled,
        "ProductReleasedForShipment": tracking_handlers.open_return_leg,
        "ProductReleasedForShipmentV2": tracking_handlers.open_return_leg,
        "ManufacturingFailed": failed,
    }


CONSUMERS: dict[str, dict[str, Handler]] = {
    "coi_tracking": _tracking_handlers(),
    "order_intake": {
        "ShipmentDispatched": order_handlers.on_shipment_dispatched,
        "ShipmentDelivered": order_handlers.on_shipment_delivered,
        "InfusionRecorded": order_handlers.on_infusion_recorded,
    },
    "scheduling": {
        kind.__name__: (lambda session, event: scheduling_handlers.handle(session, event, SCHEDULING))
        for kind in scheduling_handlers.HANDLERS
    },
}
"""Who consumes what, as each service's `handlers.wire` registers it (by the event class's name)."""


@dataclass
class ServiceStack:
    apps: dict[str, FastAPI]
    engines: dict[str, Engine]
    seen: dict[str, int] = field(default_factory=dict)

    def relay(self) -> int:
        """Carry every event written since the last relay to the services that consume it, until none is
        left (a handler's own events are carried on too). How many were carried."""
        carried = 0
        while True:
            moved = 0
            for source, engine in self.engines.items():
                with session_factory(engine)() as session:
                    rows = session.exec(
                        select(OutboxMessage)
                        .where(col(OutboxMessage.id) > self.seen.get(source, 0))
                        .order_by(col(OutboxMessage.id))
                    ).all()
                for row in rows:
                    self.seen[source] = int(row.id or 0)
                    event = parse_event(row.payload)
                    for target, table in CONSUMERS.items():
                        handler = table.get(type(event).__name__)
                        if handler is None or target == source:
                            continue
                        with session_factory(self.engines[target])() as session:
                            handler(session, event)
                            session.commit()
                    moved += 1
            carried += moved
            if moved == 0:
                return carried


@contextmanager
def service_stack(scratch: Path) -> Iterator[ServiceStack]:
    """The three service apps on SQLite databases under `scratch`, seeded as `make up` seeds them (order
    intake's registry, COI tracking's couriers, scheduling's sites, network and protocol)."""
    with service_env(scratch), ExitStack() as stack:
        apps: dict[str, FastAPI] = {}
        engines: dict[str, Engine] = {}
        for service, (settings_class, tables) in SERVICES.items():
            (scratch / service).mkdir(exist_ok=True)
            engine = stack.enter_context(database("sqlite", scratch / service, tables))
            module = importlib.import_module(f"services.{service}.app")
            extra = {"webhook_allow_loopback": True} if service == "scheduling" else {}
            settings = getattr(module, settings_class)(
                database_url=engine.url.render_as_string(hide_password=False), **extra
            )
            apps[service] = module.create_app(settings)
            engines[service] = engine
        seed_registry(engines["order_intake"])
        seed_couriers(engines["coi_tracking"])
        scheduling_runtime.seed(engines["scheduling"])
        writer = apps["coi_tracking"].state.runtime.scan_writer  # the scan route's writer thread
        writer.start()
        try:
            yield ServiceStack(apps, engines)
        finally:
            writer.stop()


# --------------------------------------------------------------------------------- driving a case


def an_order(site: str = "TC-BOSTON") -> dict[str, Any]:
    """An order order intake accepts for the seeded site and therapy (a patient of its own)."""
    return {
        "patient_ref": f"PSN-{uuid.uuid4().hex[:8].upper()}",
        "patient": {
            "name": "Test Patient",
            "date_of_birth": "2019-04-02",
            "medical_record_number": f"MRN-{uuid.uuid4().hex[:8]}",
        },
        "therapy_code": "WASKYRA",
        "treatment_center_id": site,
        "prescriber_npi": "1234567893",
        "consent": {
            "signed_on": (date.today() - timedelta(days=3)).isoformat(),
            "form_version": "WAS-ICF-2.1",
        },
        "payer_authorization": {
            "reference": "PA-TEST",
            "expires_on": (date.today() + timedelta(days=365)).isoformat(),
        },
        "eligibility_attested": True,
    }


def scan(kind: str, coi: str, location: str, celsius: float, **extra: Any) -> dict[str, Any]:
    body = {
        "scan_type": kind,
        "bag_cois": [coi],
        "location": location,
        "device_time": datetime.now(UTC).isoformat(),
        "temperature_celsius": celsius,
        **extra,
    }
    if kind == "pick_up":
        body["eta_at"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    return body


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    answer = client.request(method, url, **kwargs)
    assert answer.is_success, (method, url, answer.status_code, answer.text)
    return answer.json() if answer.content else None


# --------------------------------------------------------------------------------- under uvicorn


@dataclass
class ConsoleSite:
    """The console and the three service apps under uvicorn on loopback: their base URLs, and the stack
    (its `relay()` carries events between the services, as their consumers would)."""

    url: str
    services: dict[str, str]
    stack: ServiceStack


@contextmanager
def console_site_running(scratch: Path) -> Iterator[ConsoleSite]:
    with service_stack(scratch) as stack, serving_console(stack.apps, lifespan="off") as (url, services):
        yield ConsoleSite(url, services, stack)
