"""The console over the three REAL service apps, for the console's page tests: in process (TestClient, its
client mounted on the apps over `httpx.ASGITransport`) and, for the browser, on loopback ports (uvicorn in
threads). Each service on a SQLite database of its own; nothing mocked. Shipments are quarantined the way a
courier does it (a warm logger reading posted to COI tracking), and QA signers enrol their PIN through
COI tracking's API."""

from __future__ import annotations

import importlib
import itertools
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from cgt_contracts.events import ShipmentLeg
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import TABLES as TRACKING_TABLES
from services.coi_tracking.models import Bag, Container, Shipment
from services.common.identifiers import coi_identifier
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.console import app as console_app
from services.console.sessions import CSRF_FIELD
from services.console.settings import ConsoleSettings
from services.order_intake.models import TABLES as ORDER_TABLES
from services.scheduling.models import TABLES as SCHEDULING_TABLES
from services.scheduling.models import Case, OfferedOption
from tests.support.infra import database

ROOT = Path(__file__).resolve().parents[2]
TOKENS_FILE = ROOT / "deploy" / "dev-tokens.json"
COORDINATOR, CENTER, COURIER, QA, QA2 = (
    "dev-coordinator-token",
    "dev-center-token",
    "dev-courier-token",
    "dev-qa-token",
    "dev-qa2-token",
)
QA_PIN = "97531864"
"""The PIN `enrol_pin` sets for a QA signer (strong enough for COI tracking's rule)."""
SERVICE_URLS = {
    "order_intake": "http://order-intake.test",
    "coi_tracking": "http://coi-tracking.test",
    "scheduling": "http://scheduling.test",
}
SETTINGS = {
    "order_intake": ("OrderIntakeSettings", [*COMMON_TABLES, *ORDER_TABLES]),
    "coi_tracking": ("TrackingSettings", [*COMMON_TABLES, *TRACKING_TABLES]),
    "scheduling": ("SchedulingSettings", [*COMMON_TABLES, *SCHEDULING_TABLES]),
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class ServiceApps:
    apps: dict[str, FastAPI]
    engines: dict[str, Engine]

    def client(self, service: str) -> TestClient:
        """The service's app under TestClient (its lifespan never runs: no broker)."""
        return TestClient(self.apps[service])


@contextmanager
def service_env(scratch: Path) -> Iterator[None]:
    """The environment a service app reads at creation: the dev tokens, fresh keys, a database URL in
    `scratch` that nothing uses (each app is given its own), quiet logs."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CGT_API_TOKENS_FILE", str(TOKENS_FILE))
        env.setenv("PHI_ENCRYPTION_KEY", Fernet.generate_key().decode())
        env.setenv("PATIENT_MATCH_KEY", "test-patient-match-key-of-32-chars-or-more")
        env.setenv("DATABASE_URL", f"sqlite:///{scratch / 'unused.db'}")
        env.setenv("LOG_LEVEL", "WARNING")
        yield


@contextmanager
def service_apps(scratch: Path) -> Iterator[ServiceApps]:
    """The three service apps (never started: no broker) on SQLite databases of their own in `scratch`."""
    with service_env(scratch):
        apps: dict[str, FastAPI] = {}
        engines: dict[str, Engine] = {}
        with ExitStack() as stack:
            for service, (settings_class, tables) in SETTINGS.items():
                (scratch / service).mkdir()
                engine = stack.enter_context(database("sqlite", scratch / service, tables))
                module = importlib.import_module(f"services.{service}.app")
                settings = getattr(module, settings_class)(
                    database_url=engine.url.render_as_string(hide_password=False)
                )
                apps[service] = module.create_app(settings)
                engines[service] = engine
            yield ServiceApps(apps, engines)


def console_settings(urls: dict[str, str] | None = None, **overrides: Any) -> ConsoleSettings:
    urls = urls or SERVICE_URLS
    values: dict[str, Any] = {
        "console_session_key": "test-console-session-key-of-32-chars-or-more",
        "console_cookie_secure": False,
        "order_intake_url": urls["order_intake"],
        "coi_tracking_url": urls["coi_tracking"],
        "scheduling_url": urls["scheduling"],
        "log_level": "WARNING",
        **overrides,
    }
    return ConsoleSettings(**values)


def mounts(services: ServiceApps) -> dict[str, httpx.AsyncBaseTransport]:
    """The console client's transports to the service apps in process, by the URLs `console_settings` gives."""
    return {SERVICE_URLS[name]: httpx.ASGITransport(app=app) for name, app in services.apps.items()}


@contextmanager
def console_client(services: ServiceApps) -> Iterator[TestClient]:
    """The console under TestClient, its client wired to the service apps in process."""
    app = console_app.create_app(console_settings(), mounts=mounts(services))
    client = TestClient(app, follow_redirects=False)
    with client:
        yield client


def hidden(page: str, name: str = CSRF_FIELD) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def sign_in(client: TestClient, token: str, status: int = 303) -> httpx.Response:
    """The sign-in form posted with `token`; its answer, whose status must be `status` (303: signed in)."""
    form = client.get("/sign-in")
    assert form.status_code == 200
    answer: httpx.Response = client.post("/sign-in", data={CSRF_FIELD: hidden(form.text), "token": token})
    assert answer.status_code == status, answer.text
    return answer


def post_forms(page: str) -> list[str]:
    """The action of every POST form on a page."""
    return re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', page)


# ---------------------------------------------------------------- facts made through the services' APIs


def put_site(scheduling: TestClient, site: str, **calendar: Any) -> None:
    body = {
        "timezone": "America/New_York",
        "infusions_per_day": 2,
        "admissions_capacity": 4,
        "working_weekdays": [1, 2, 3, 4, 5],
        "blackout_dates": [],
        **calendar,
    }
    answer = scheduling.put(f"/sites/{site}", json=body, headers=bearer(COORDINATOR))
    assert answer.status_code == 200, answer.text


def enrol_pin(tracking: TestClient, token: str, pin: str = QA_PIN) -> None:
    answer = tracking.put("/qa-signers/me/signing-pin", json={"signing_pin": pin}, headers=bearer(token))
    assert answer.status_code == 200, answer.text


CASE_ETA = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
OFFERED_AT = datetime(2026, 11, 30, 14, 5, tzinfo=UTC)


def add_cases(
    engine: Engine,
    cases: Iterable[tuple[str, str]],
    *,
    eta_at: datetime | None = CASE_ETA,
    offered: Iterable[str] = (),
) -> None:
    """Into scheduling's database: a case per (site, COI) (4 days of conditioning, its ETA `eta_at`), and
    for each COI in `offered` one option offered at OFFERED_AT (conditioning 2026-12-04, infusion 12-08)."""
    with session_factory(engine)() as session:
        for site, coi in cases:
            session.add(
                Case(
                    coi=coi,
                    order_id=uuid.uuid4(),
                    patient_ref=f"PSN-{site}",
                    therapy_code="WASKYRA",
                    treatment_center_id=site,
                    conditioning_days=4,
                    eta_at=eta_at,
                )
            )
        for coi in offered:
            session.add(
                OfferedOption(
                    coi=coi,
                    conditioning_start_on=date(2026, 12, 4),
                    infusion_on=date(2026, 12, 8),
                    offered_at=OFFERED_AT,
                )
            )
        session.commit()


SHIPMENT_NUMBERS = itertools.count(1)


def shipment_in_transit(engine: Engine, site: str = "TC-BOSTON") -> Shipment:
    """A return shipment in transit to `site`, its product released, held by courier-ben, with a container
    and one bag (as tests/support/shipments.py plans them, each with a COI and container of its own)."""
    n = next(SHIPMENT_NUMBERS)
    coi = coi_identifier("Q0000", 2026, n)
    with session_factory(engine)(expire_on_commit=False) as session:
        shipment = Shipment(
            order_id=uuid.uuid4(),
            coi=coi,
            leg=ShipmentLeg.RETURN,
            treatment_center_id=site,
            courier_company="CRYO-EXPRESS",
            storage_limit_celsius=-150.0,
            destination=site,
            custodian="courier-ben",
            status=ShipmentStatus.IN_TRANSIT,
            physical_status=ShipmentStatus.IN_TRANSIT,
            dispatched_at=datetime.now(UTC),
            product_released_at=datetime.now(UTC),
            eta_at=datetime.now(UTC) + timedelta(days=2),
        )
        session.add(shipment)
        session.flush()
        session.add(Container(id=f"DS-Q{n}", shipment_id=shipment.id))
        session.add(Bag(shipment_id=shipment.id, coi=coi, number=1, of=1))
        session.commit()
    return shipment


def quarantined_shipment(
    services: ServiceApps, tracking: TestClient, site: str = "TC-BOSTON"
) -> dict[str, Any]:
    """A return shipment in transit to `site`, quarantined by the courier's logger through COI tracking's
    API: two readings, one of -140.0 °C above the -150.0 °C limit."""
    shipment = shipment_in_transit(services.engines["coi_tracking"], site)
    now = datetime.now(UTC).replace(microsecond=0)
    readings = [
        {"at": now.replace(second=0).isoformat(), "celsius": -180.0},
        {"at": now.isoformat(), "celsius": -140.0},
    ]
    posted = tracking.post(
        f"/shipments/{shipment.id}/readings",
        json={"logger_id": "LG-QA", "readings": readings},
        headers=bearer(COURIER),
    )
    assert posted.status_code == 201, posted.text
    assert posted.json()["quarantined"] is True
    view = tracking.get(f"/shipments/{shipment.id}", headers=bearer(COORDINATOR)).json()
    assert view["status"] == "quarantined"
    found: dict[str, Any] = view
    return found


# ---------------------------------------------------------------- on loopback ports, for the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(app: FastAPI, *, lifespan: Literal["on", "off"]) -> Iterator[str]:
    """`app` under uvicorn on a free loopback port in a thread, until the block ends; its base URL. With
    `lifespan="off"` no broker is started: a service app's routes need only its database."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan=lifespan, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class ConsoleSite:
    """The console and the three services on loopback: the console's URL, the services' URLs, and the
    services in process (their apps and databases) to make facts through their APIs."""

    url: str
    service_urls: dict[str, str]
    services: ServiceApps


@contextmanager
def serving_console(
    apps: dict[str, FastAPI], *, lifespan: Literal["on", "off"]
) -> Iterator[tuple[str, dict[str, str]]]:
    """The service apps (lifespan off: no broker) and a console wired to them, each under uvicorn on
    loopback, until the block ends: the console's URL (its lifespan as given) and the services' URLs."""
    with ExitStack() as stack:
        urls = {name: stack.enter_context(serving(app, lifespan="off")) for name, app in apps.items()}
        console = console_app.create_app(console_settings(urls))
        yield stack.enter_context(serving(console, lifespan=lifespan)), urls


@contextmanager
def running_console(scratch: Path) -> Iterator[ConsoleSite]:
    """The three service apps (lifespan off: no broker) and the console, each under uvicorn on loopback."""
    with service_apps(scratch) as services, serving_console(services.apps, lifespan="on") as (url, urls):
        yield ConsoleSite(url, urls, services)
