"""Order intake publishes what scheduling checks again (issue 18), on SQLite and PostgreSQL over HTTP
without the broker: the site's qualification windows and the payer authorization's last day on
`order.accepted.v2`, a registry change to every order whose chain still runs, a renewed authorization —
dates only, never the authorization's reference."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from cgt_contracts.events import CancellationReasonCode
from sqlalchemy.engine import Engine

from services.common.unit_of_work import session_factory
from services.order_intake import commands
from services.order_intake.seed import DEMO_SITE, WASKYRA
from tests.support.orders import (
    COORDINATOR,
    a_new_order,
    order_database,
    order_intake_client,
    outbox,
    place,
    start_afresh,
    stored,
)

COORD = {"Authorization": "Bearer dev-coordinator-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}
TODAY = date.today()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with order_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        yield engine


@pytest.fixture
def engine(database: Engine) -> Engine:
    return start_afresh(database)


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[Any]:
    with order_intake_client(engine, tmp_path) as client:
        yield client


def events(engine: Engine, coi: str | None, kind: str) -> list[dict[str, Any]]:
    return [data for k, data in outbox(engine, coi) if k == kind]


def test_an_accepted_order_carries_the_sites_windows_and_the_authorizations_last_day(engine: Engine) -> None:
    order = place(engine, a_new_order(payer_authorization_expires_on=TODAY + timedelta(days=40)))
    [accepted] = events(engine, order.coi, "order.accepted.v2")
    assert accepted["site_qualifications"] == [{"effective_on": "2026-01-01", "expires_on": None}]
    assert accepted["payer_authorization_expires_on"] == (TODAY + timedelta(days=40)).isoformat()
    assert "PA-1" not in json.dumps(accepted), "the authorization's reference stays in order intake"


def test_a_changed_qualification_is_told_to_every_order_whose_chain_runs(engine: Engine, client: Any) -> None:
    running, ended = place(engine), place(engine)
    with session_factory(engine)() as session:
        commands.cancel_order(session, ended.id, CancellationReasonCode.OTHER, None, COORDINATOR, "c")
        session.commit()
    windows = [{"effective_on": "2026-01-01", "expires_on": (TODAY + timedelta(days=10)).isoformat()}]

    answer = client.put(
        f"/treatment-centers/{DEMO_SITE}/certifications/{WASKYRA}",
        json={"qualifications": windows},
        headers=COORD,
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["certifications"] == [{"therapy_code": WASKYRA, **windows[0]}]
    [changed] = events(engine, running.coi, "site.qualification_changed.v1")
    assert changed["site_qualifications"] == windows and changed["treatment_center_id"] == DEMO_SITE
    assert events(engine, ended.coi, "site.qualification_changed.v1") == []

    withdrawn = client.put(
        f"/treatment-centers/{DEMO_SITE}/certifications/{WASKYRA}", json={"qualifications": []}, headers=COORD
    )
    assert withdrawn.status_code == 200 and withdrawn.json()["certifications"] == []
    assert events(engine, running.coi, "site.qualification_changed.v1")[-1]["site_qualifications"] == []
    refused = place(engine)  # new orders are judged on it too
    assert refused.status.value == "rejected"

    added = client.post(
        f"/treatment-centers/{DEMO_SITE}/certifications",
        json={"therapy_code": WASKYRA, "effective_on": "2026-02-01"},
        headers=COORD,
    )
    assert added.status_code == 201, added.text
    assert events(engine, running.coi, "site.qualification_changed.v1")[-1]["site_qualifications"] == [
        {"effective_on": "2026-02-01", "expires_on": None}
    ]


def test_qualifications_are_kept_by_coordinators_only_and_checked_at_the_edge(client: Any) -> None:
    path = f"/treatment-centers/{DEMO_SITE}/certifications/{WASKYRA}"
    assert client.put(path, json={"qualifications": []}, headers=CENTER).status_code == 403
    backwards = client.put(
        path,
        json={"qualifications": [{"effective_on": "2026-05-01", "expires_on": "2026-04-01"}]},
        headers=COORD,
    )
    assert backwards.status_code == 422
    assert "2026-04-01" not in backwards.text
    assert (
        client.put(
            f"/treatment-centers/TC-NOWHERE/certifications/{WASKYRA}",
            json={"qualifications": []},
            headers=COORD,
        ).status_code
        == 404
    )
    assert (
        client.put(
            f"/treatment-centers/{DEMO_SITE}/certifications/NOPE", json={"qualifications": []}, headers=COORD
        ).status_code
        == 404
    )


def test_a_renewed_authorization_is_recorded_and_published_as_a_date(engine: Engine, client: Any) -> None:
    order = place(engine)
    renewal = {"reference": "PA-RENEWED-77", "expires_on": (TODAY + timedelta(days=200)).isoformat()}

    answer = client.post(f"/orders/{order.id}/payer-authorization", json=renewal, headers=COORD)

    assert answer.status_code == 200, answer.text
    assert answer.json()["payer_authorization_expires_on"] == renewal["expires_on"]
    assert stored(engine, order.id).payer_authorization_reference == "PA-RENEWED-77"
    [renewed] = events(engine, order.coi, "order.payer_authorization_renewed.v1")
    assert renewed["expires_on"] == renewal["expires_on"] and renewed["renewed_by"] == "coord-ana"
    assert "PA-RENEWED-77" not in json.dumps(outbox(engine))


def test_a_renewal_ending_before_today_or_for_a_cancelled_order_is_refused(
    engine: Engine, client: Any
) -> None:
    order = place(engine)
    past = {"reference": "PA-2", "expires_on": (TODAY - timedelta(days=1)).isoformat()}
    answer = client.post(f"/orders/{order.id}/payer-authorization", json=past, headers=COORD)
    assert answer.status_code == 422
    assert [e["pointer"] for e in answer.json()["errors"]] == ["/expires_on"]
    assert past["expires_on"] not in answer.text and "PA-2" not in answer.text

    with session_factory(engine)() as session:
        commands.cancel_order(session, order.id, CancellationReasonCode.OTHER, None, COORDINATOR, "c")
        session.commit()
    future = {"reference": "PA-3", "expires_on": (TODAY + timedelta(days=1)).isoformat()}
    assert (
        client.post(f"/orders/{order.id}/payer-authorization", json=future, headers=COORD).status_code == 409
    )
    assert (
        client.post(f"/orders/{order.id}/payer-authorization", json=future, headers=CENTER).status_code == 403
    )
    assert events(engine, order.coi, "order.payer_authorization_renewed.v1") == []
