"""Scheduling's FHIR search (issue 19), on SQLite and PostgreSQL over HTTP without the broker: `Slot`
and `Appointment` searched with FHIR's parameters (`schedule`, `status`, `start`/`date` with every
prefix and `eq` by default, full date-times compared with the chair's start, `patient`, `_id`,
`_count` paging with `next` links), unknown parameters reported (or refused under strict handling),
every reference served resolving, reads with `ETag` and 304, a treatment center confined to its site,
and the CapabilityStatement listing exactly what is served."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy.engine import Engine

from services.common import fhir
from services.common.edge import api_routes
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import fhir_api
from services.scheduling.domain import AppointmentState
from services.scheduling.models import TABLES, Appointment, Case, Site
from tests.support.apps import scheduling_client
from tests.support.infra import database

TOKENS = {
    "tokens": {
        "coordinator": {"subject": "coord", "role": "coordinator"},
        "boston": {"subject": "boston-desk", "role": "treatment_center", "treatment_center_id": "TC-BOSTON"},
    }
}
COORDINATOR = {"Authorization": "Bearer coordinator"}
BOSTON = {"Authorization": "Bearer boston"}
DAYS = [date(2026, 12, d) for d in (7, 8, 9, 10)]
"""Boston's chairs (08:00 to 12:00 New York, 13:00 UTC in December) on four days; Denver's on the 8th."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stocked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, dict[str, Any]]]:
    """A Boston site with four appointments (one per state but cancelled: tentative, on hold, confirmed,
    cancelled), a Denver site with one; the ids by name."""
    kind = str(request.param)
    with database(kind, tmp_path_factory.mktemp(kind), [*COMMON_TABLES, *TABLES]) as engine:
        ids: dict[str, Any] = {}
        states = [
            AppointmentState.TENTATIVE,
            AppointmentState.ON_HOLD,
            AppointmentState.CONFIRMED,
            AppointmentState.CANCELLED,
        ]
        with session_factory(engine)() as session:
            session.add(Site(id="TC-BOSTON", timezone="America/New_York"))
            session.add(Site(id="TC-DENVER", timezone="America/Denver"))
            for number, (day, state) in enumerate(zip(DAYS, states, strict=True)):
                rows = _case("TC-BOSTON", f"PSN-B{number}", day, state)
                session.add_all(rows)
                ids[state.value] = rows[1].id
            denver = _case("TC-DENVER", "PSN-D0", DAYS[1], AppointmentState.CONFIRMED)
            session.add_all(denver)
            ids["denver"] = denver[1].id
            session.commit()
        yield engine, ids


def _case(site: str, patient_ref: str, day: date, state: AppointmentState) -> tuple[Case, Appointment]:
    coi = f"CHW43212600{uuid.uuid4().int % 100000:05d}"
    case = Case(
        coi=coi,
        order_id=uuid.uuid4(),
        patient_ref=patient_ref,
        therapy_code="WASKYRA",
        treatment_center_id=site,
        conditioning_days=4,
    )
    appointment = Appointment(
        coi=coi, treatment_center_id=site, conditioning_start_on=day, infusion_on=day, state=state
    )
    return case, appointment


@pytest.fixture(scope="module")
def client(
    stocked: tuple[Engine, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with scheduling_client(stocked[0], tmp_path_factory.mktemp("app"), TOKENS) as client:
        yield client


@pytest.fixture
def ids(stocked: tuple[Engine, dict[str, Any]]) -> dict[str, Any]:
    return stocked[1]


def search(
    client: TestClient, kind: str, params: Any, headers: dict[str, str] = COORDINATOR
) -> dict[str, Any]:
    answer = client.get(f"/fhir/{kind}", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == fhir.FHIR_JSON
    Bundle.model_validate(answer.json())
    return dict(answer.json())


def matched(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_slots_by_schedule_and_status_leave_out_a_cancelled_appointment(
    client: TestClient, ids: dict[str, Any]
) -> None:
    bundle = search(client, "Slot", {"schedule": "Schedule/TC-BOSTON"})
    assert matched(bundle) == [str(ids["tentative"]), str(ids["on_hold"]), str(ids["confirmed"])]
    assert bundle["total"] == 3
    held = search(client, "Slot", {"schedule": "Schedule/TC-BOSTON", "status": "busy-unavailable,busy"})
    assert matched(held) == [str(ids["on_hold"]), str(ids["confirmed"])]


@pytest.mark.parametrize(
    ("start", "days"),
    [
        ("2026-12-08", [8]),  # eq by default: the site-local day
        ("eq2026-12-08", [8]),
        ("ne2026-12-08", [7, 9]),
        ("ge2026-12-08", [8, 9]),
        ("gt2026-12-08", [9]),
        ("le2026-12-08", [7, 8]),
        ("lt2026-12-08", [7]),
        ("sa2026-12-08", [9]),
        ("eb2026-12-08", [7]),
        ("2026-12", [7, 8, 9]),
        ("2026-12-08T13:00:00Z", [8]),  # exactly the chair's start (08:00 in New York)
        ("ge2026-12-08T13:00:01Z", [9]),  # a second after it: the next chair
        ("lt2026-12-08T13:00:01Z", [7, 8]),
        ("ge2026-12-08T08:00", [8, 9]),  # no offset: site-local
        ("gt2026-12-08T07:59:59-05:00", [8, 9]),
    ],
)
def test_start_compares_full_date_times_with_the_chairs_start(
    client: TestClient, ids: dict[str, Any], start: str, days: list[int]
) -> None:
    by_day = {7: ids["tentative"], 8: ids["on_hold"], 9: ids["confirmed"]}
    bundle = search(client, "Slot", {"schedule": "Schedule/TC-BOSTON", "start": start})
    assert matched(bundle) == [str(by_day[d]) for d in days]


def test_two_start_bounds_narrow_together_and_a_bad_one_is_refused(
    client: TestClient, ids: dict[str, Any]
) -> None:
    bundle = search(
        client,
        "Slot",
        [("schedule", "Schedule/TC-BOSTON"), ("start", "ge2026-12-08"), ("start", "lt2026-12-09")],
    )
    assert matched(bundle) == [str(ids["on_hold"])]
    bad = client.get("/fhir/Slot", params={"start": "xx2026-12-08"}, headers=COORDINATOR)
    assert bad.status_code == 422
    assert [(i["code"], i["expression"]) for i in bad.json()["issue"]] == [("invalid", ["start"])]
    assert "xx2026" not in bad.text


def test_appointments_by_patient_status_date_and_id(client: TestClient, ids: dict[str, Any]) -> None:
    assert matched(search(client, "Appointment", {"patient": "Patient/PSN-B3"})) == [str(ids["cancelled"])]
    assert matched(search(client, "Appointment", {"patient": "PSN-D0"})) == [str(ids["denver"])]
    booked = search(client, "Appointment", {"status": "booked"})
    assert matched(booked) == [str(ids["denver"]), str(ids["confirmed"])]  # by start: the 8th, the 9th
    on_the_8th = search(client, "Appointment", {"date": "2026-12-08", "actor": "Location/TC-DENVER"})
    assert matched(on_the_8th) == [str(ids["denver"])]
    assert matched(search(client, "Appointment", {"_id": str(ids["on_hold"])})) == [str(ids["on_hold"])]


def test_count_pages_with_next_links_that_walk_every_match_once(client: TestClient) -> None:
    seen: list[str] = []
    bundle = search(client, "Appointment", {"_count": "2"})
    assert bundle["total"] == 5, "every match, not the page's"
    pages = 1
    while True:
        seen += matched(bundle)
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith("http://testserver/fhir/Appointment?")
        if "next" not in links:
            break
        bundle = search(client, "Appointment", links["next"].split("?", 1)[1])
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == 5


def test_an_unknown_parameter_is_reported_or_refused_under_strict_handling(client: TestClient) -> None:
    bundle = search(client, "Slot", {"schedule": "Schedule/TC-BOSTON", "colour": "red"})
    [outcome] = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["issue"][0]["diagnostics"] == "parameters ignored: colour"
    assert "colour" not in bundle["link"][0]["url"]
    strict = client.get(
        "/fhir/Slot", params={"colour": "red"}, headers={**COORDINATOR, "Prefer": "handling=strict"}
    )
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"


def test_every_reference_served_resolves_with_an_etag(client: TestClient, ids: dict[str, Any]) -> None:
    appointment = client.get(f"/fhir/Appointment/{ids['confirmed']}", headers=BOSTON)
    references = [p["actor"]["reference"] for p in appointment.json()["participant"]]
    references += [s["reference"] for s in appointment.json()["slot"]]
    slot = client.get(f"/fhir/{appointment.json()['slot'][0]['reference']}", headers=BOSTON).json()
    references.append(slot["schedule"]["reference"])
    schedule = client.get(f"/fhir/{slot['schedule']['reference']}", headers=BOSTON).json()
    references += [a["reference"] for a in schedule["actor"]]
    for reference in references:
        answer = client.get(f"/fhir/{reference}", headers=BOSTON)
        assert answer.status_code == 200, reference
        assert answer.json()["resourceType"] == reference.split("/")[0]
    assert sorted({r.split("/")[0] for r in references}) == ["Location", "Patient", "Schedule", "Slot"]
    etag = appointment.headers["etag"]
    again = client.get(f"/fhir/Appointment/{ids['confirmed']}", headers={**BOSTON, "If-None-Match": etag})
    assert again.status_code == 304


def test_a_treatment_center_sees_its_own_site_only(client: TestClient, ids: dict[str, Any]) -> None:
    everything = search(client, "Appointment", {}, headers=BOSTON)
    assert str(ids["denver"]) not in matched(everything) and len(matched(everything)) == 4
    assert matched(search(client, "Appointment", {"actor": "Location/TC-DENVER"}, headers=BOSTON)) == []
    for path in (
        f"Appointment/{ids['denver']}",
        f"Slot/{ids['denver']}",
        "Schedule/TC-DENVER",
        "Location/TC-DENVER",
        "Patient/PSN-D0",
    ):
        assert client.get(f"/fhir/{path}", headers=BOSTON).status_code == 404, path
    assert matched(search(client, "Schedule", {}, headers=BOSTON)) == ["TC-BOSTON"]


def test_the_capability_statement_lists_exactly_what_is_served(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    assert [r["type"] for r in statement["rest"][0]["resource"]] == [r.type for r in fhir_api.capabilities()]
    assert fhir.undeclared_routes(api_routes(client.app.routes), fhir_api.capabilities()) == (set(), set())  # type: ignore[attr-defined]
