"""Webhook endpoints through the scheduling service's own HTTP routes, in process, on SQLite and
PostgreSQL (no broker): a site manages its own endpoints, a coordinator any site's, another site's endpoint
is the same 404 as a missing one, a private or metadata URL is refused naming `url`, the delivery logs
name the endpoint, and a disabled endpoint is one worklist entry until it is resumed."""

from __future__ import annotations

import base64
import importlib
import json
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cgt_contracts.envelope import utc_now
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import func, select

from services.common.development import DEV_WEBHOOK_SECRET_KEY
from services.common.encryption import key_ring
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.scheduling import webhook_commands, webhook_domain
from services.scheduling.models import TABLES, Appointment, WebhookEndpoint
from services.scheduling.webhook_commands import AttemptResult
from tests.support.infra import database
from tests.support.races import Contender

TOKENS = {
    "tokens": {
        "coordinator": {"subject": "coord", "role": "coordinator"},
        "boston": {"subject": "boston-desk", "role": "treatment_center", "treatment_center_id": "TC-BOSTON"},
        "denver": {"subject": "denver-desk", "role": "treatment_center", "treatment_center_id": "TC-DENVER"},
    }
}
COORDINATOR = {"Authorization": "Bearer coordinator"}
BOSTON = {"Authorization": "Bearer boston"}
DENVER = {"Authorization": "Bearer denver"}
HOOK = "https://hooks.tc-boston.example.org/cgt"
COI = "CHW4321260000014"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *TABLES]) as engine:
        yield engine


@pytest.fixture(scope="module")
def scheduling_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """services.scheduling.app, in an environment of the test's own (the tokens its settings read)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CGT_API_TOKENS", json.dumps(TOKENS))
        env.setenv("DATABASE_URL", f"sqlite:///{tmp_path_factory.mktemp('import') / 'unused.db'}")
        env.setenv("LOG_LEVEL", "WARNING")
        yield importlib.import_module("services.scheduling.app")


def app_client(module: ModuleType, engine: Engine, **overrides: Any) -> TestClient:
    """The service's app as production builds it (routes, edge, problems). Used without `with`, so its
    lifespan (which reaches for the broker) does not run: the test database already has the tables."""
    settings = module.SchedulingSettings(
        database_url=engine.url.render_as_string(hide_password=False),
        cgt_api_tokens=json.dumps(TOKENS),
        log_level="WARNING",
        webhook_max_attempts=4,
        webhook_disable_after_failures=3,
        webhook_secret_overlap_hours=6,
        **overrides,
    )
    return TestClient(module.create_app(settings))


@pytest.fixture
def client(scheduling_app: ModuleType, engine: Engine) -> Iterator[TestClient]:
    client = app_client(scheduling_app, engine, webhook_allow_loopback=True)
    yield client
    client.close()


def register(client: TestClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    answer: httpx.Response = client.post("/webhooks", json={"url": HOOK, **body}, headers=headers)
    return answer


def test_a_webhook_secret_is_generated_by_the_service_and_stored_encrypted(
    client: TestClient, engine: Engine
) -> None:
    chosen = register(client, BOSTON, secret="caller-chosen-secret-of-enough-length-0123456")
    assert chosen.status_code == 422 and chosen.json()["errors"][0]["pointer"] == "/secret"
    assert "caller-chosen" not in chosen.text

    first, second = register(client, BOSTON).json(), register(client, BOSTON, url=HOOK + "/2").json()
    assert first["secret"] != second["secret"]
    assert len(base64.urlsafe_b64decode(first["secret"] + "=")) >= webhook_commands.SECRET_BYTES
    rotated = client.post(f"/webhooks/{first['id']}/rotate-secret", json={}, headers=BOSTON).json()["secret"]
    with session_factory(engine)() as session:
        row = session.get(WebhookEndpoint, uuid.UUID(first["id"]))
        assert row is not None
        stored = {row.secret, row.previous_secret}
    assert rotated not in stored and first["secret"] not in stored  # only their encrypted forms
    ring = key_ring(DEV_WEBHOOK_SECRET_KEY, "WEBHOOK_SECRET_KEY")
    assert {ring.decrypt(value.encode()).decode() for value in stored if value} == {rotated, first["secret"]}


def without_instance(problem: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in problem.items() if k != "instance"}


def test_a_site_lists_reads_changes_pauses_resumes_rotates_and_deletes_its_endpoint(
    client: TestClient,
) -> None:
    created = register(client, BOSTON)
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["state"] == "active" and len(endpoint["secret"]) >= 32
    url = f"/webhooks/{endpoint['id']}"

    assert [e["id"] for e in client.get("/webhooks", headers=BOSTON).json()] == [endpoint["id"]]
    read = client.get(url, headers=BOSTON).json()
    assert read["url"] == HOOK and "secret" not in read and read["previous_secret_valid_until"] is None

    paused = client.patch(url, json={"paused": True}, headers=BOSTON)
    assert paused.status_code == 200 and paused.json()["state"] == "paused" and paused.json()["paused_at"]
    changed = client.patch(
        url, json={"paused": False, "event_types": ["slot.confirmed", "slot.held"]}, headers=BOSTON
    ).json()
    assert changed["state"] == "active" and changed["event_types"] == ["slot.confirmed", "slot.held"]
    moved = client.patch(url, json={"url": "https://hooks2.tc-boston.example.org/cgt"}, headers=BOSTON).json()
    assert moved["url"] == "https://hooks2.tc-boston.example.org/cgt" and moved["event_types"] is not None
    assert client.patch(url, json={"event_types": None}, headers=BOSTON).json()["event_types"] is None

    rotated = client.post(f"{url}/rotate-secret", json={}, headers=BOSTON)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != endpoint["secret"]
    overlap_end = datetime.fromisoformat(rotated.json()["previous_secret_valid_until"])
    assert timedelta(hours=5, minutes=59) < overlap_end - utc_now() <= timedelta(hours=6)
    chosen = client.post(f"{url}/rotate-secret", json={"secret": "s" * 43}, headers=BOSTON)
    assert chosen.status_code == 422 and chosen.json()["errors"][0]["pointer"] == "/secret"

    deleted = client.delete(url, headers=BOSTON)
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
    assert client.get(url, headers=BOSTON).status_code == 404
    assert client.get("/webhooks", headers=BOSTON).json() == []
    assert register(client, BOSTON).status_code == 201, "a deleted endpoint's URL can be registered again"


def test_another_sites_endpoint_is_the_same_404_as_a_missing_one(client: TestClient) -> None:
    boston = register(client, BOSTON).json()
    missing = str(uuid.uuid4())
    calls = [
        ("GET", "", None),
        ("PATCH", "", {"paused": True}),
        ("POST", "/rotate-secret", {}),
        ("GET", "/deliveries", None),
        ("DELETE", "", None),
    ]
    for method, suffix, body in calls:
        theirs = client.request(method, f"/webhooks/{boston['id']}{suffix}", json=body, headers=DENVER)
        nobodys = client.request(method, f"/webhooks/{missing}{suffix}", json=body, headers=DENVER)
        assert theirs.status_code == nobodys.status_code == 404, (method, suffix)
        assert without_instance(theirs.json()) == without_instance(nobodys.json())
        assert boston["id"] not in theirs.text and "TC-BOSTON" not in theirs.text
    assert client.get("/webhooks", headers=DENVER).json() == []
    assert client.get("/webhooks", params={"treatment_center_id": "TC-BOSTON"}, headers=DENVER).json() == []
    untouched = client.get(f"/webhooks/{boston['id']}", headers=BOSTON).json()
    assert untouched["state"] == "active" and untouched["previous_secret_valid_until"] is None
    other = client.post("/webhooks", json={"url": HOOK, "treatment_center_id": "TC-BOSTON"}, headers=DENVER)
    assert other.status_code == 403


def test_a_coordinator_manages_any_sites_endpoints_and_the_list_filter_is_applied(client: TestClient) -> None:
    boston = register(client, COORDINATOR, treatment_center_id="TC-BOSTON").json()
    denver = register(client, COORDINATOR, treatment_center_id="TC-DENVER").json()
    assert {e["id"] for e in client.get("/webhooks", headers=COORDINATOR).json()} == {
        boston["id"],
        denver["id"],
    }
    only = client.get("/webhooks", params={"treatment_center_id": "TC-DENVER"}, headers=COORDINATOR).json()
    assert [e["id"] for e in only] == [denver["id"]]
    assert (
        client.patch(f"/webhooks/{boston['id']}", json={"paused": True}, headers=COORDINATOR).status_code
        == 200
    )
    assert client.get(f"/webhooks/{boston['id']}", headers=BOSTON).json()["state"] == "paused"
    assert (
        client.post(f"/webhooks/{denver['id']}/rotate-secret", json={}, headers=COORDINATOR).status_code
        == 200
    )
    assert client.delete(f"/webhooks/{denver['id']}", headers=COORDINATOR).status_code == 200
    assert client.get(f"/webhooks/{denver['id']}", headers=DENVER).status_code == 404
    missing_site = client.post("/webhooks", json={"url": HOOK}, headers=COORDINATOR)
    assert missing_site.status_code == 422
    assert missing_site.json()["errors"][0]["pointer"] == "/treatment_center_id"


REFUSED = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://10.20.30.40/hooks",
    "https://192.168.0.1/hooks",
    "https://[fe80::1]/hooks",
    "https://0.0.0.0/hooks",
    "https://224.0.0.251/hooks",
    "http://hooks.tc-never.example.org/cgt",
]


@pytest.mark.parametrize("url", REFUSED)
def test_a_private_or_metadata_url_is_refused_naming_url_without_echoing_it(
    client: TestClient, url: str
) -> None:
    """For a site that never receives an event: nothing is stored, so nothing is ever sent there."""
    answer = client.post(
        "/webhooks", json={"url": url, "treatment_center_id": "TC-NEVER"}, headers=COORDINATOR
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert [e["pointer"] for e in answer.json()["errors"]] == ["/url"]
    host = httpx.URL(url).host
    assert host not in answer.text and url not in answer.text
    assert (
        client.get("/webhooks", params={"treatment_center_id": "TC-NEVER"}, headers=COORDINATOR).json() == []
    )


def test_a_url_change_is_held_to_the_same_policy(client: TestClient) -> None:
    endpoint = register(client, BOSTON).json()
    answer = client.patch(
        f"/webhooks/{endpoint['id']}", json={"url": "http://169.254.169.254/latest/"}, headers=BOSTON
    )
    assert answer.status_code == 422 and answer.json()["errors"][0]["pointer"] == "/url"
    assert client.get(f"/webhooks/{endpoint['id']}", headers=BOSTON).json()["url"] == HOOK


def test_by_default_loopback_and_plain_http_are_refused(scheduling_app: ModuleType, engine: Engine) -> None:
    strict = app_client(scheduling_app, engine)
    for url in ("http://127.0.0.1:9000/cgt", "https://localhost/cgt", "http://hooks.example.org/cgt"):
        answer = strict.post("/webhooks", json={"url": url}, headers=BOSTON)
        assert answer.status_code == 422 and answer.json()["errors"][0]["pointer"] == "/url", url
    assert register(strict, BOSTON).status_code == 201
    strict.close()


def test_development_allows_a_loopback_receiver(client: TestClient) -> None:
    assert (
        client.post("/webhooks", json={"url": "http://127.0.0.1:9000/cgt"}, headers=BOSTON).status_code == 201
    )


def test_the_same_url_twice_for_a_site_is_a_conflict_naming_the_existing_endpoint(client: TestClient) -> None:
    first = register(client, BOSTON).json()
    again = register(client, BOSTON)
    assert again.status_code == 409 and again.json()["reasons"] == [f"endpoint {first['id']}"]
    assert register(client, COORDINATOR, treatment_center_id="TC-DENVER").status_code == 201
    second = client.post("/webhooks", json={"url": HOOK + "/2"}, headers=BOSTON).json()
    moved = client.patch(f"/webhooks/{second['id']}", json={"url": HOOK}, headers=BOSTON)
    assert moved.status_code == 409


def test_a_site_has_at_most_the_stated_number_of_endpoints(client: TestClient) -> None:
    limit = webhook_domain.MAX_ENDPOINTS_PER_SITE
    created = [register(client, BOSTON, url=f"{HOOK}/{n}") for n in range(limit)]
    assert [answer.status_code for answer in created] == [201] * limit
    refused = register(client, BOSTON, url=f"{HOOK}/extra")
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert f"at most {limit}" in refused.json()["detail"]
    assert register(client, COORDINATOR, treatment_center_id="TC-DENVER").status_code == 201, "per site"
    assert client.delete(f"/webhooks/{created[0].json()['id']}", headers=BOSTON).status_code == 200
    assert register(client, BOSTON, url=f"{HOOK}/extra").status_code == 201, "a deleted one frees its place"


def test_two_registrations_at_once_never_pass_the_limit(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second waits for the first's lock on the site's endpoints and counts what the first committed."""
    settings = webhook_commands.WebhookSettings(
        allow_loopback=False,
        secret_overlap_hours=24,
        failure=webhook_domain.FailurePolicy(
            max_attempts=3, disable_after_failures=3, backoff_base_seconds=1
        ),
        secret_keys=key_ring(DEV_WEBHOOK_SECRET_KEY, "WEBHOOK_SECRET_KEY"),
    )
    limit = webhook_domain.MAX_ENDPOINTS_PER_SITE

    def registration(session: Any, n: int) -> None:
        webhook_commands.register(
            session, site="TC-RACE", url=f"{HOOK}/{n}", event_types=None, settings=settings
        )

    for n in range(limit - 1):
        with session_factory(engine)() as session:
            registration(session, n)
            session.commit()
    second: dict[str, Exception] = {}

    def second_site_desk() -> None:
        with session_factory(engine)() as session:
            try:
                registration(session, 100)
                session.commit()
            except webhook_commands.TooManyEndpoints as refused:
                second["refused"] = refused

    contender = Contender(monkeypatch, webhook_commands, "lock_site_endpoints", second_site_desk)
    with session_factory(engine)() as first:
        registration(first, limit)  # the last place, held until it commits
        contender.arrive()
        first.commit()
    contender.finish()
    assert "refused" in second, "both registrations took the last place"
    with session_factory(engine)() as session:
        count = session.exec(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.treatment_center_id == "TC-RACE")
        ).one()
    assert count == limit


def test_a_url_over_the_stated_length_is_refused_naming_url(client: TestClient) -> None:
    path = "a" * (webhook_domain.MAX_URL_LENGTH - len(HOOK) - 1)
    assert register(client, BOSTON, url=f"{HOOK}/{path}").status_code == 201
    too_long = register(client, BOSTON, url=f"{HOOK}/{path}b")
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["pointer"] == "/url"
    assert path not in too_long.text
    huge = register(client, BOSTON, url=f"{HOOK}/{'a' * 70_000}")
    assert huge.status_code == 413, "past the body limit before any URL is looked at"


def test_unknown_event_types_are_refused_naming_the_field(client: TestClient) -> None:
    answer = register(client, BOSTON, event_types=["slot.confirmed", "order.accepted"])
    assert answer.status_code == 422 and answer.json()["errors"][0]["pointer"] == "/event_types"
    assert "order.accepted" not in answer.text
    assert register(client, BOSTON, event_types=[]).status_code == 422


def appointment(engine: Engine, site: str = "TC-BOSTON") -> uuid.UUID:
    with session_factory(engine)() as session:
        row = Appointment(
            coi=COI,
            treatment_center_id=site,
            conditioning_start_on=date(2026, 12, 4),
            infusion_on=date(2026, 12, 8),
        )
        session.add(row)
        session.commit()
        return row.id


def queue(engine: Engine, appointment_id: uuid.UUID, kind: str = "slot.proposed") -> None:
    with session_factory(engine)() as session:
        webhook_commands.queue_deliveries(
            session, site="TC-BOSTON", appointment_id=appointment_id, coi=COI, kind=kind, payload="{}"
        )
        session.commit()


def test_delivery_logs_name_the_endpoint_and_outlive_it(client: TestClient, engine: Engine) -> None:
    endpoint = register(client, BOSTON).json()
    subscribed = register(client, BOSTON, url=HOOK + "/held-only", event_types=["slot.held"]).json()
    booked = appointment(engine)
    queue(engine, booked)
    log = client.get(f"/appointments/{booked}/deliveries", headers=BOSTON).json()
    assert [(d["endpoint_id"], d["status"]) for d in log] == [(endpoint["id"], "pending")]
    assert client.get(f"/webhooks/{subscribed['id']}/deliveries", headers=BOSTON).json() == []
    by_endpoint = client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=BOSTON).json()
    assert [d["id"] for d in by_endpoint] == [log[0]["id"]] and by_endpoint[0]["appointment_id"] == str(
        booked
    )
    assert client.get(f"/appointments/{booked}/deliveries", headers=DENVER).status_code == 404

    client.delete(f"/webhooks/{endpoint['id']}", headers=BOSTON)
    after = client.get(f"/appointments/{booked}/deliveries", headers=COORDINATOR).json()
    assert [(d["endpoint_id"], d["status"]) for d in after] == [(endpoint["id"], "discarded")]


def test_a_disabled_endpoint_is_one_worklist_entry_until_resumed(client: TestClient, engine: Engine) -> None:
    endpoint = register(client, BOSTON).json()
    booked = appointment(engine)
    for kind in ("slot.proposed", "slot.held", "slot.resumed"):
        queue(engine, booked, kind)
    rows = client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=BOSTON).json()
    failures = [
        AttemptResult(uuid.UUID(row["id"]), uuid.UUID(endpoint["id"]), False, 503, "HTTP 503") for row in rows
    ]
    with session_factory(engine)() as session:  # what the deliverer records after three failed attempts
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert webhook_commands.record_attempts(session, failures, runtime.webhooks.failure)
        session.commit()
    read = client.get(f"/webhooks/{endpoint['id']}", headers=BOSTON).json()
    assert read["state"] == "disabled" and read["consecutive_failures"] == 3
    assert "3 consecutive failed attempts" in read["disabled_reason"]

    def webhook_items() -> list[dict[str, Any]]:
        items = client.get("/worklist", headers=COORDINATOR).json()
        return [i for i in items if i["kind"] == "webhook_failing"]

    items = webhook_items()
    assert (
        len(items) == 1
        and endpoint["id"] in items[0]["detail"]
        and items[0]["treatment_center_id"] == "TC-BOSTON"
    )
    assert items[0]["coi"] == COI and "3 message(s)" in items[0]["detail"]
    statuses = {
        d["status"] for d in client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=BOSTON).json()
    }
    assert statuses == {"suspended"}

    resumed = client.patch(f"/webhooks/{endpoint['id']}", json={"paused": False}, headers=BOSTON).json()
    assert (
        resumed["state"] == "active"
        and resumed["consecutive_failures"] == 0
        and resumed["disabled_at"] is None
    )
    assert webhook_items() == []
    waiting = client.get(
        f"/webhooks/{endpoint['id']}/deliveries", params={"status": "pending"}, headers=BOSTON
    )
    assert [d["attempts"] for d in waiting.json()] == [0, 0, 0]
