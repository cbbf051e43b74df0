"""Scoping that holds, in process on SQLite and PostgreSQL (no broker): every GET route of every service
refuses a query parameter it does not declare (422 naming it) instead of ignoring it; the filters a list
declares are applied within the caller's scope; and a caller scoped to one site (or one courier company)
gets, for another's object, the same 404 body as for one that does not exist."""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from types import ModuleType
from typing import Any

import httpx
import pytest
from cgt_contracts.events import ShipmentLeg
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import select

from services.coi_tracking import api as tracking_api
from services.coi_tracking.domain import ShipmentStatus
from services.coi_tracking.models import TABLES as TRACKING_TABLES
from services.coi_tracking.models import Courier, Shipment, TemperatureReading
from services.common import problems
from services.common.edge import api_routes
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.order_intake import api as orders_api
from services.order_intake import registry
from services.scheduling import api as scheduling_api
from services.scheduling import network_api, webhook_api
from services.scheduling.models import TABLES as SCHEDULING_TABLES
from services.scheduling.models import Appointment, Case, Site, SlotAlert
from tests.support.infra import database

SERVICE_ROUTERS: dict[str, list[APIRouter]] = {
    "order_intake": [orders_api.router, registry.router],
    "scheduling": [scheduling_api.router, webhook_api.router, network_api.router],
    "coi_tracking": [tracking_api.router],
}


def _routers_only(routers: list[APIRouter]) -> FastAPI:
    """The service's routes alone: the edge refuses an undeclared parameter before any dependency (the
    caller's token, the database) runs, so no wiring is needed to see it."""
    app = FastAPI()
    problems.install_problem_handlers(app)
    for router in routers:
        app.include_router(router)
    return app


@pytest.mark.parametrize("service", sorted(SERVICE_ROUTERS))
def test_every_get_route_refuses_a_query_parameter_it_does_not_declare(service: str) -> None:
    app = _routers_only(SERVICE_ROUTERS[service])
    client = TestClient(app)
    # The FHIR and EPCIS query routers apply their standards' rules instead (`checks_query_itself`),
    # proven in tests/integration/test_fhir_scheduling.py and test_epcis_query.py
    routes = [route for route in api_routes(app.routes) if "GET" in (route.methods or set())]
    assert routes
    for route in routes:
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path)
        answer = client.get(path, params={"site": "TC-DENVER"})
        assert answer.status_code == 422, (route.path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert [(e["location"], e["pointer"]) for e in answer.json()["errors"]] == [("query", "/site")]
        assert "TC-DENVER" not in answer.text


# ---------------------------------------------------------------- the services in process, both databases

TOKENS = {
    "tokens": {
        "coordinator": {"subject": "coord", "role": "coordinator"},
        "boston": {"subject": "boston-desk", "role": "treatment_center", "treatment_center_id": "TC-BOSTON"},
        "cryo": {"subject": "courier-ben", "role": "courier", "courier_company": "CRYO-EXPRESS"},
        "qa": {"subject": "qa-jr", "role": "qa"},
        "other": {"subject": "courier-dee", "role": "courier", "courier_company": "OTHER-LOGISTICS"},
    }
}
COORDINATOR = {"Authorization": "Bearer coordinator"}
BOSTON = {"Authorization": "Bearer boston"}
CRYO = {"Authorization": "Bearer cryo"}
OTHER_COURIER = {"Authorization": "Bearer other"}
# Denver's check character is `*`: a filter must take every COI the form allows.
BOSTON_COI, DENVER_COI, MISSING_COI = "CHW4321260000014", "CHW43212600000M*", "CHW4321260000030"
MISSING_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def service_module(name: str, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The service's app module, imported in an environment of the test's own (it builds an app on import)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CGT_API_TOKENS", json.dumps(TOKENS))
        env.setenv("DATABASE_URL", f"sqlite:///{tmp_path_factory.mktemp('import') / 'unused.db'}")
        env.setenv("LOG_LEVEL", "WARNING")
        return importlib.import_module(f"services.{name}.app")


def same_404(first: httpx.Response, second: httpx.Response) -> bool:
    """Two answers that tell the caller nothing apart: both 404, the same body but for its instance."""
    assert first.status_code == second.status_code == 404, (first.text, second.text)

    def body(answer: httpx.Response) -> dict[str, Any]:
        # the instance is the correlation id; an OperationOutcome quotes it in its diagnostics
        text = answer.text.replace(answer.headers["x-correlation-id"], "<id>")
        document: dict[str, Any] = json.loads(text)
        return {k: v for k, v in document.items() if k != "instance"}

    return body(first) == body(second)


# ---------------------------------------------------------------- scheduling


@pytest.fixture(scope="module")
def scheduling(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Engine]]:
    """Scheduling's app (never started: no broker) on a database holding a Boston and a Denver case, each
    with an appointment, and both sites' calendars."""
    module = service_module("scheduling", tmp_path_factory)
    with database(kind, tmp_path_factory.mktemp(kind), [*COMMON_TABLES, *SCHEDULING_TABLES]) as engine:
        with session_factory(engine)() as session:
            for site, coi in (("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI)):
                session.add(Site(id=site, timezone="America/New_York"))
                session.add(
                    Case(
                        coi=coi,
                        order_id=uuid.uuid4(),
                        patient_ref=f"PSN-{site}",
                        therapy_code="WASKYRA",
                        treatment_center_id=site,
                        conditioning_days=4,
                    )
                )
                session.add(
                    Appointment(
                        coi=coi,
                        treatment_center_id=site,
                        conditioning_start_on=date(2026, 12, 4),
                        infusion_on=date(2026, 12, 8),
                    )
                )
            session.commit()
        settings = module.SchedulingSettings(
            database_url=engine.url.render_as_string(hide_password=False),
            cgt_api_tokens=json.dumps(TOKENS),
            log_level="WARNING",
        )
        client = TestClient(module.create_app(settings))  # used without `with`: its lifespan never runs
        yield client, engine
        client.close()


def appointment_of(engine: Engine, coi: str) -> str:
    with session_factory(engine)() as session:
        appointment = session.exec(select(Appointment).where(Appointment.coi == coi)).one()
        return str(appointment.id)


def test_another_sites_scheduling_object_is_the_same_404_as_a_missing_one(
    scheduling: tuple[TestClient, Engine],
) -> None:
    client, engine = scheduling
    denver = appointment_of(engine, DENVER_COI)
    assert client.get(f"/cases/{BOSTON_COI}", headers=BOSTON).status_code == 200
    assert (
        client.get(f"/appointments/{appointment_of(engine, BOSTON_COI)}", headers=BOSTON).status_code == 200
    )
    days = {"from": "2026-12-01", "to": "2026-12-10"}
    pairs = [
        (f"/cases/{DENVER_COI}", f"/cases/{MISSING_COI}", {}),
        (f"/cases/{DENVER_COI}/follow-up", f"/cases/{MISSING_COI}/follow-up", {}),
        (f"/appointments/{denver}", f"/appointments/{MISSING_ID}", {}),
        (f"/fhir/Appointment/{denver}", f"/fhir/Appointment/{MISSING_ID}", {}),
        (f"/appointments/{denver}/deliveries", f"/appointments/{MISSING_ID}/deliveries", {}),
        ("/sites/TC-DENVER/availability", "/sites/TC-NOWHERE/availability", days),
        ("/sites/TC-DENVER", "/sites/TC-NOWHERE", {}),
    ]
    for elsewhere, missing, query in pairs:
        other = client.get(elsewhere, params=query, headers=BOSTON)
        nothing = client.get(missing, params=query, headers=BOSTON)
        assert same_404(other, nothing), (elsewhere, other.text, nothing.text)
        assert (
            MISSING_ID not in nothing.text and MISSING_COI not in nothing.text and "DENVER" not in other.text
        )
    # A bad range too: the site is looked up first, so it cannot tell one apart from the other.
    bad_days = {"from": "2026-12-10", "to": "2026-12-01"}
    assert same_404(
        client.get("/sites/TC-DENVER/availability", params=bad_days, headers=BOSTON),
        client.get("/sites/TC-NOWHERE/availability", params=bad_days, headers=BOSTON),
    )
    slots = [
        client.get("/fhir/Slot", params={"schedule": f"Schedule/{site}"}, headers=BOSTON)
        for site in ("TC-DENVER", "TC-NOWHERE")
    ]
    assert same_404(*slots)
    assert (
        client.get("/fhir/Slot", params={"schedule": "Schedule/TC-BOSTON"}, headers=BOSTON).status_code == 200
    )


def test_appointment_filters_are_applied_within_the_callers_scope(
    scheduling: tuple[TestClient, Engine],
) -> None:
    client, _ = scheduling

    def listed(headers: dict[str, str], **query: str) -> list[str]:
        answer = client.get("/appointments", params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        return [a["coi"] for a in answer.json()]

    assert listed(COORDINATOR) == [BOSTON_COI, DENVER_COI]
    assert listed(COORDINATOR, treatment_center_id="TC-DENVER") == [DENVER_COI]
    assert listed(COORDINATOR, coi=BOSTON_COI) == [BOSTON_COI]
    assert listed(COORDINATOR, coi=DENVER_COI) == [DENVER_COI]
    assert listed(COORDINATOR, state="tentative") == [BOSTON_COI, DENVER_COI]
    assert listed(COORDINATOR, state="confirmed") == []
    assert listed(BOSTON) == [BOSTON_COI]
    assert listed(BOSTON, treatment_center_id="TC-DENVER") == []
    assert listed(BOSTON, coi=DENVER_COI) == []
    unknown = client.get("/appointments", params={"site": "TC-DENVER"}, headers=COORDINATOR)
    assert unknown.status_code == 422 and "TC-DENVER" not in unknown.text
    assert [(e["location"], e["pointer"]) for e in unknown.json()["errors"]] == [("query", "/site")]
    assert client.get("/appointments", params={"state": "lost"}, headers=COORDINATOR).status_code == 422


# ---------------------------------------------------------------- COI tracking


@pytest.fixture(scope="module")
def tracking(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """COI tracking's app (never started: no broker, no scan writer) on a database holding three return
    shipments: Boston's and Denver's carried by CRYO-EXPRESS, and one of Boston's by OTHER-LOGISTICS."""
    module = service_module("coi_tracking", tmp_path_factory)
    ids: dict[str, str] = {}
    with database(kind, tmp_path_factory.mktemp(kind), [*COMMON_TABLES, *TRACKING_TABLES]) as engine:
        with session_factory(engine)() as session:
            for name, coi, site, company in (
                ("boston", BOSTON_COI, "TC-BOSTON", "CRYO-EXPRESS"),
                ("denver", DENVER_COI, "TC-DENVER", "CRYO-EXPRESS"),
                ("other", "CHW4321260000048", "TC-BOSTON", "OTHER-LOGISTICS"),
            ):
                shipment = Shipment(
                    order_id=uuid.uuid4(),
                    coi=coi,
                    leg=ShipmentLeg.RETURN,
                    treatment_center_id=site,
                    courier_company=company,
                    storage_limit_celsius=-150.0,
                    destination=site,
                    custodian="manufacturer:AGC-MILAN",
                    status=ShipmentStatus.PLANNED,
                    physical_status=ShipmentStatus.PLANNED,
                    created_at=datetime(2026, 12, 1, len(ids), tzinfo=UTC),
                )
                session.add(shipment)
                session.flush()
                ids[name] = str(shipment.id)
            for n in range(READINGS):  # a logger's record, two readings at each instant (ties go by id)
                at = datetime(2026, 12, 1, 12, n // 2, tzinfo=UTC)
                session.add(
                    TemperatureReading(
                        shipment_id=uuid.UUID(ids["boston"]), read_at=at, celsius=-180.0 + n, source="logger"
                    )
                )
            for courier in ("courier-c", "courier-a", "courier-b"):
                session.add(Courier(id=courier, company="CRYO-EXPRESS"))
            session.commit()
        settings = module.TrackingSettings(
            database_url=engine.url.render_as_string(hide_password=False),
            cgt_api_tokens=json.dumps(TOKENS),
            log_level="WARNING",
        )
        client = TestClient(module.create_app(settings))  # used without `with`: its lifespan never runs
        yield client, ids
        client.close()


READ_PATHS = ("", "/readings", "/dispositions", "/scans", "/ledger")
READINGS = 7


def test_another_sites_or_companys_shipment_is_the_same_404_as_a_missing_one(
    tracking: tuple[TestClient, dict[str, str]],
) -> None:
    client, ids = tracking
    assert client.get(f"/shipments/{ids['boston']}", headers=BOSTON).status_code == 200
    assert client.get(f"/shipments/{ids['denver']}", headers=CRYO).status_code == 200
    for caller, elsewhere in ((BOSTON, ids["denver"]), (CRYO, ids["other"]), (OTHER_COURIER, ids["boston"])):
        for path in READ_PATHS:
            other = client.get(f"/shipments/{elsewhere}{path}", headers=caller)
            nothing = client.get(f"/shipments/{MISSING_ID}{path}", headers=caller)
            assert same_404(other, nothing), (path, other.text, nothing.text)
            assert MISSING_ID not in nothing.text and elsewhere not in other.text
    capture = client.get(f"/capture/{MISSING_ID}", headers=CRYO)
    assert capture.status_code == 404 and MISSING_ID not in capture.text


def test_a_courier_writing_to_another_companys_shipment_is_refused_with_the_reason(
    tracking: tuple[TestClient, dict[str, str]],
) -> None:
    client, ids = tracking
    readings = {"logger_id": "LG-1", "readings": [{"at": "2026-12-01T09:00:00Z", "celsius": -180.0}]}
    refused = client.post(f"/shipments/{ids['boston']}/readings", json=readings, headers=OTHER_COURIER)
    assert refused.status_code == 403 and "another courier company" in refused.text
    missing = client.post(f"/shipments/{MISSING_ID}/readings", json=readings, headers=OTHER_COURIER)
    assert missing.status_code == 404 and MISSING_ID not in missing.text


def test_shipment_filters_are_applied_within_the_callers_scope(
    tracking: tuple[TestClient, dict[str, str]],
) -> None:
    client, ids = tracking

    def listed(headers: dict[str, str], **query: str) -> list[str]:
        answer = client.get("/shipments", params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        return [s["id"] for s in answer.json()]

    everyone = [ids["boston"], ids["denver"], ids["other"]]
    assert listed(COORDINATOR) == everyone
    assert listed(COORDINATOR, treatment_center_id="TC-DENVER") == [ids["denver"]]
    assert listed(COORDINATOR, courier_company="OTHER-LOGISTICS") == [ids["other"]]
    assert listed(COORDINATOR, coi=BOSTON_COI) == [ids["boston"]]
    assert listed(COORDINATOR, coi=DENVER_COI) == [ids["denver"]]
    assert listed(COORDINATOR, leg="return", status="planned") == everyone
    assert listed(COORDINATOR, leg="outbound") == []
    assert listed(BOSTON) == [ids["boston"], ids["other"]]
    assert listed(BOSTON, treatment_center_id="TC-DENVER") == []
    assert listed(CRYO) == [ids["boston"], ids["denver"]]
    assert listed(CRYO, courier_company="OTHER-LOGISTICS") == []
    unknown = client.get("/shipments", params={"destination": "TC-DENVER"}, headers=COORDINATOR)
    assert unknown.status_code == 422 and "TC-DENVER" not in unknown.text
    assert [(e["location"], e["pointer"]) for e in unknown.json()["errors"]] == [("query", "/destination")]


# ---------------------------------------------------------------- paging, scoped, on every service's list


def walked(
    client: TestClient, path: str, headers: dict[str, str], **query: str
) -> list[list[dict[str, Any]]]:
    """Every page of `path` one row at a time, following `Link: rel="next"` (bounded)."""
    pages: list[list[dict[str, Any]]] = []
    answer = client.get(path, params={"limit": "1", **query}, headers=headers)
    for _ in range(20):
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        if "link" not in answer.headers:
            return pages
        answer = client.get(answer.headers["link"].removeprefix("<").split(">;")[0], headers=headers)
    raise AssertionError(f"{path} never reached its last page")


def test_appointment_pages_keep_the_callers_scope(scheduling: tuple[TestClient, Engine]) -> None:
    client, _ = scheduling
    assert [[a["coi"] for a in page] for page in walked(client, "/appointments", COORDINATOR)] == [
        [BOSTON_COI],
        [DENVER_COI],
    ]
    assert [[a["coi"] for a in page] for page in walked(client, "/appointments", BOSTON)] == [[BOSTON_COI]]
    bad = client.get("/appointments", params={"cursor": "WyJ4Il0"}, headers=COORDINATOR)
    assert bad.status_code == 422 and "WyJ4Il0" not in bad.text
    assert [e["pointer"] for e in bad.json()["errors"]] == ["/cursor"]


def test_shipment_pages_keep_the_callers_scope_and_filters(
    tracking: tuple[TestClient, dict[str, str]],
) -> None:
    client, ids = tracking

    def ids_of(pages: list[list[dict[str, Any]]]) -> list[list[str]]:
        return [[s["id"] for s in page] for page in pages]

    assert ids_of(walked(client, "/shipments", COORDINATOR)) == [
        [ids["boston"]],
        [ids["denver"]],
        [ids["other"]],
    ]
    assert ids_of(walked(client, "/shipments", BOSTON)) == [[ids["boston"]], [ids["other"]]]
    assert ids_of(walked(client, "/shipments", CRYO, leg="return")) == [[ids["boston"]], [ids["denver"]]]
    assert client.get("/shipments", params={"limit": "501"}, headers=COORDINATOR).status_code == 422


def test_a_shipments_readings_and_the_courier_registry_are_paged(
    tracking: tuple[TestClient, dict[str, str]],
) -> None:
    client, ids = tracking
    pages = walked(client, f"/shipments/{ids['boston']}/readings", COORDINATOR)
    assert [len(page) for page in pages] == [1] * READINGS
    assert [page[0]["celsius"] for page in pages] == [
        -180.0 + n for n in range(READINGS)
    ]  # each once, in order
    assert walked(client, f"/shipments/{ids['boston']}/readings", BOSTON) == pages
    assert [[c["id"] for c in page] for page in walked(client, "/couriers", COORDINATOR)] == [
        ["courier-a"],
        ["courier-b"],
        ["courier-c"],
    ]


def test_the_worklist_is_paged_oldest_first(scheduling: tuple[TestClient, Engine]) -> None:
    client, engine = scheduling
    with session_factory(engine)() as session:
        raised = datetime(2026, 11, 30, 9, tzinfo=UTC)
        for n in range(5):  # two alerts at each instant
            session.add(
                SlotAlert(
                    appointment_id=uuid.uuid4(),
                    coi=BOSTON_COI,
                    treatment_center_id="TC-BOSTON",
                    cause="delay",
                    detail=f"alert {n}",
                    raised_at=raised.replace(minute=n // 2),
                )
            )
        session.commit()
    whole = client.get("/worklist", params={"limit": "500"}, headers=COORDINATOR).json()
    pages = walked(client, "/worklist", COORDINATOR)
    assert [item for page in pages for item in page] == whole  # every item once, in the same order
    assert [item["since"] for item in whole] == sorted(item["since"] for item in whole)
    assert {item["detail"] for item in whole if item["kind"] == "at_risk"} >= {f"alert {n}" for n in range(5)}


def test_the_worklist_is_filtered_by_kind_and_site_and_a_treatment_center_sees_its_own(
    scheduling: tuple[TestClient, Engine],
) -> None:
    client, engine = scheduling
    with session_factory(engine)() as session:
        for minute, (site, coi) in enumerate((("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI))):
            session.add(
                SlotAlert(
                    appointment_id=uuid.uuid4(),
                    coi=coi,
                    treatment_center_id=site,
                    cause="delay",
                    detail=f"filtered {site}",
                    raised_at=datetime(2026, 11, 29, 9, minute, tzinfo=UTC),
                )
            )
        session.commit()

    def mine(headers: dict[str, str], **params: str) -> list[tuple[str, str]]:
        answer = client.get("/worklist", params={"limit": "500", **params}, headers=headers)
        assert answer.status_code == 200, answer.text
        return [
            (i["kind"], i["treatment_center_id"]) for i in answer.json() if i["detail"].startswith("filtered")
        ]

    assert mine(COORDINATOR) == [("at_risk", "TC-BOSTON"), ("at_risk", "TC-DENVER")]
    assert mine(COORDINATOR, treatment_center_id="TC-DENVER") == [("at_risk", "TC-DENVER")]
    assert mine(COORDINATOR, kind="on_hold") == []
    assert mine(BOSTON) == [("at_risk", "TC-BOSTON")]
    assert mine(BOSTON, treatment_center_id="TC-DENVER") == []  # another site's: none
    assert {i["treatment_center_id"] for i in client.get("/worklist", headers=BOSTON).json()} == {"TC-BOSTON"}
    refused = client.get("/worklist", params={"kind": "everything"}, headers=COORDINATOR)
    assert refused.status_code == 422
    assert [e["pointer"] for e in refused.json()["errors"]] == ["/kind"]
    assert client.get("/worklist", headers=CRYO).status_code == 403
    assert client.get("/sites/TC-BOSTON", headers=BOSTON).json()["timezone"] == "America/New_York"


def test_the_site_list_is_every_calendar_for_a_coordinator_and_its_own_for_a_treatment_center(
    scheduling: tuple[TestClient, Engine],
) -> None:
    client, _ = scheduling
    every = client.get("/sites", headers=COORDINATOR)
    assert every.status_code == 200, every.text
    assert [site["id"] for site in every.json()] == ["TC-BOSTON", "TC-DENVER"]
    assert every.json()[0] == {
        "id": "TC-BOSTON",
        "timezone": "America/New_York",
        "infusions_per_day": 1,
        "admissions_capacity": 2,
        "working_weekdays": [1, 2, 3, 4, 5],
        "blackout_dates": [],
    }
    assert [site["id"] for site in client.get("/sites", headers=BOSTON).json()] == ["TC-BOSTON"]
    # QA reads the calendars (their time zones: QA's pages show its signatures in the site's zone).
    qa = {"Authorization": "Bearer qa"}
    assert client.get("/sites", headers=qa).json() == every.json()
    assert client.get("/sites/TC-DENVER", headers=qa).json()["timezone"] == "America/New_York"
    assert client.get("/sites/TC-DENVER/availability", headers=qa).status_code == 403
    assert client.get("/sites", headers=CRYO).status_code == 403
