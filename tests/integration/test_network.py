"""The planning network over HTTP, on SQLite and PostgreSQL: coordinators set collection centers,
manufacturing sites with their slots, a therapy's manufacturing protocol and a treatment center's
collection center; plans follow them; and a change that would strand a booked plan is refused."""

from __future__ import annotations

from datetime import date

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.integration import test_plans
from tests.integration.test_plans import COORDINATOR, a_case

engine, client = test_plans.engine, test_plans.client  # the same fixtures: seeded SQLite and PostgreSQL

SUNDAYS_ONLY = {"timezone": "America/Denver", "chairs_per_day": 1, "working_weekdays": [7]}
PROTOCOL = {
    "manufacturing_days": 30,
    "starting_material": "cryopreserved",
    "outbound_transit_hours": 24.0,
    "max_fresh_transit_hours": 48.0,
    "max_cryopreserved_age_days": 90,
    "return_transit_hours": 24.0,
}


def booked_plan(client: TestClient, coi: str) -> dict[str, str]:
    [plan] = client.post(f"/cases/{coi}/plans", json={"count": 1}, headers=COORDINATOR).json()
    booked = client.post(f"/cases/{coi}/plans/{plan['plan_id']}/book", json={}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text
    result: dict[str, str] = booked.json()
    return result


def test_plans_follow_the_network_a_coordinator_sets(engine: Engine, client: TestClient) -> None:
    center = client.put("/collection-centers/CC-DENVER", json=SUNDAYS_ONLY, headers=COORDINATOR)
    assert center.status_code == 200, center.text
    assert center.json() == {"id": "CC-DENVER", **SUNDAYS_ONLY, "blackout_dates": []}
    chosen = client.put(
        "/sites/TC-DENVER/collection-center", json={"collection_center_id": "CC-DENVER"}, headers=COORDINATOR
    )
    assert chosen.status_code == 200, chosen.text
    site = {"timezone": "America/Chicago", "blackout_weeks": [], "slots_per_week": {"WASKYRA": 1}}
    assert client.put("/manufacturing-sites/MFG-CHICAGO", json=site, headers=COORDINATOR).status_code == 200
    protocol = client.put("/therapies/WASKYRA/manufacturing-protocol", json=PROTOCOL, headers=COORDINATOR)
    assert protocol.status_code == 200, protocol.text
    assert client.get("/therapies/WASKYRA/manufacturing-protocol", headers=COORDINATOR).json() == PROTOCOL
    listed = client.get("/manufacturing-sites", headers=COORDINATOR).json()
    assert [s["id"] for s in listed] == ["MFG-AGC-MILAN", "MFG-CHICAGO"]

    coi = a_case(engine, site="TC-DENVER")
    plans = client.post(f"/cases/{coi}/plans", json={"count": 2}, headers=COORDINATOR).json()
    assert len(plans) == 2
    for plan in plans:
        assert plan["collection_center_id"] == "CC-DENVER"
        assert date.fromisoformat(plan["collection_on"]).isoweekday() == 7  # Sundays only
        # 30 days vein to release, no longer the seed's 45 (cryopreserved material waits for a slot)
        days = (date.fromisoformat(plan["release_on"]) - date.fromisoformat(plan["collection_on"])).days
        assert 30 <= days < 45, plan


def test_a_collection_center_change_that_strands_a_booked_collection_is_refused(
    engine: Engine,
    client: TestClient,
) -> None:
    plan = booked_plan(client, a_case(engine))
    day = plan["collection_on"]
    closing = {"timezone": "America/New_York", "chairs_per_day": 2, "blackout_dates": [day]}
    refused = client.put("/collection-centers/TC-BOSTON", json=closing, headers=COORDINATOR)
    assert refused.status_code == 409, refused.text
    assert refused.json()["reasons"] == [f"1 booked collection(s) on {day}, which the new calendar closes"]
    no_chair = client.put(
        "/collection-centers/TC-BOSTON",
        json={**closing, "blackout_dates": [], "chairs_per_day": 0},
        headers=COORDINATOR,
    )
    assert no_chair.status_code == 409, no_chair.text
    assert no_chair.json()["reasons"] == [f"1 booked collections on {day}, more than 0 chair(s)"]
    kept = client.get("/collection-centers/TC-BOSTON", headers=COORDINATOR).json()
    assert kept["blackout_dates"] == [] and kept["chairs_per_day"] == 2  # nothing changed

    another_day = {**closing, "blackout_dates": ["2099-12-25"]}
    assert (
        client.put("/collection-centers/TC-BOSTON", json=another_day, headers=COORDINATOR).status_code == 200
    )


def test_a_manufacturing_site_change_that_strands_a_booked_slot_is_refused(
    engine: Engine,
    client: TestClient,
) -> None:
    plan = booked_plan(client, a_case(engine))
    week = plan["manufacturing_week"]
    milan = {"timezone": "Europe/Rome", "blackout_weeks": [week], "slots_per_week": {"WASKYRA": 2}}
    refused = client.put("/manufacturing-sites/MFG-AGC-MILAN", json=milan, headers=COORDINATOR)
    assert refused.status_code == 409, refused.text
    assert refused.json()["reasons"] == [f"1 booked WASKYRA slot(s) in {week}, which becomes a blackout week"]
    dropped = client.put(
        "/manufacturing-sites/MFG-AGC-MILAN",
        json={**milan, "blackout_weeks": [], "slots_per_week": {}},
        headers=COORDINATOR,
    )
    assert dropped.status_code == 409, dropped.text
    assert dropped.json()["reasons"] == [f"1 booked WASKYRA slot(s) in {week}, more than 0"]
    kept = client.get("/manufacturing-sites/MFG-AGC-MILAN", headers=COORDINATOR).json()
    assert kept == {
        "id": "MFG-AGC-MILAN",
        "timezone": "Europe/Rome",
        "blackout_weeks": [],
        "slots_per_week": {"WASKYRA": 2},
    }

    more = {**milan, "blackout_weeks": ["2099-W01"], "slots_per_week": {"WASKYRA": 3}}
    assert client.put("/manufacturing-sites/MFG-AGC-MILAN", json=more, headers=COORDINATOR).json() == {
        "id": "MFG-AGC-MILAN",
        **more,
    }


def test_bad_network_input_is_a_problem_naming_the_field(client: TestClient) -> None:
    cases = [
        ("/collection-centers/CC-X", {**SUNDAYS_ONLY, "timezone": "Mars/Olympus"}, "/timezone"),
        ("/collection-centers/CC-X", {**SUNDAYS_ONLY, "working_weekdays": [8]}, "/working_weekdays/0"),
        (
            "/manufacturing-sites/MFG-X",
            {"timezone": "UTC", "blackout_weeks": ["2026-W99"], "slots_per_week": {}},
            "/blackout_weeks/0",
        ),
        (
            "/manufacturing-sites/MFG-X",
            {"timezone": "UTC", "slots_per_week": {"WASKYRA": -1}},
            "/slots_per_week/WASKYRA",
        ),
        (
            "/therapies/WASKYRA/manufacturing-protocol",
            {**PROTOCOL, "starting_material": "thawed"},
            "/starting_material",
        ),
        (
            "/sites/TC-DENVER/collection-center",
            {"collection_center_id": "CC-NOWHERE"},
            "/collection_center_id",
        ),
    ]
    for path, body, pointer in cases:
        answer = client.put(path, json=body, headers=COORDINATOR)
        assert answer.status_code == 422, (path, answer.text)
        problem = answer.json()
        assert [e["pointer"] for e in problem["errors"]] == [pointer], problem
        assert "Mars/Olympus" not in answer.text and "thawed" not in answer.text  # never echoed
    assert (
        client.put(
            "/sites/TC-NOWHERE/collection-center", json={"collection_center_id": None}, headers=COORDINATOR
        ).status_code
        == 404
    )
    unknown = client.put("/therapies/NEWTHERAPY/manufacturing-protocol", json=PROTOCOL, headers=COORDINATOR)
    assert unknown.status_code == 409
    assert unknown.json()["reasons"] == ["NEWTHERAPY has no scheduling protocol: set its conditioning first"]
    assert client.get("/collection-centers/CC-NOWHERE", headers=COORDINATOR).status_code == 404
    assert client.get("/manufacturing-sites", headers={"Authorization": "Bearer nobody"}).status_code == 401
