"""FHIR Subscriptions through scheduling's own HTTP routes, in process, on SQLite and PostgreSQL (no
broker): a site subscribes to its own appointments (not another site's), a private or metadata endpoint is
refused naming `channel.endpoint`, channel headers are stored encrypted and never shown, and each change
the webhooks announce queues one notification Bundle per Subscription, numbered, on the webhook queue."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from services.common.development import DEV_WEBHOOK_SECRET_KEY
from services.common.encryption import key_ring
from services.common.fhir import FHIR_JSON
from services.common.unit_of_work import session_factory
from services.scheduling import commands, webhook_commands, webhook_domain
from services.scheduling.models import Appointment, FhirSubscription, WebhookDelivery
from services.scheduling.subscription_domain import (
    FILTER_CRITERIA_EXTENSION,
    PAYLOAD_CONTENT_EXTENSION,
    TOPIC,
)
from tests.integration import test_webhook_endpoints as webhook_tests
from tests.integration.test_webhook_endpoints import BOSTON, COORDINATOR, DENVER, register

# The webhook tests' fixtures: the same app, environment and databases.
engine = webhook_tests.engine
scheduling_app = webhook_tests.scheduling_app
client = webhook_tests.client

FHIR = {"Content-Type": FHIR_JSON}
SUBSCRIPTION: dict[str, Any] = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "TC-BOSTON's infusions",
    "criteria": TOPIC,
    "_criteria": {
        "extension": [
            {"url": FILTER_CRITERIA_EXTENSION, "valueString": "Appointment?actor=Location/TC-BOSTON"}
        ]
    },
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://fhir.tc-boston.example.org/notify",
        "payload": FHIR_JSON,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": "full-resource"}]},
        "header": ["Authorization: Bearer site-secret-token"],
    },
}


def subscribe(client: TestClient, headers: dict[str, str], **channel: Any) -> Any:
    document = copy.deepcopy(SUBSCRIPTION)
    document["channel"].update(channel)
    return client.post("/fhir/Subscription", json=document, headers={**headers, **FHIR})


def test_a_site_subscribes_reads_and_deletes_its_subscription(client: TestClient, engine: Engine) -> None:
    created = subscribe(client, BOSTON)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith(FHIR_JSON)
    resource = created.json()
    assert resource["status"] == "active" and resource["criteria"] == TOPIC
    assert resource["channel"]["header"] == ["Authorization: ***"]
    assert "site-secret-token" not in created.text
    location = created.headers["location"]
    assert location.endswith(f"/fhir/Subscription/{resource['id']}/_history/1")
    assert created.headers["etag"] == 'W/"1"'

    with session_factory(engine)() as session:
        row = session.get(FhirSubscription, uuid.UUID(resource["id"]))
        assert row is not None and row.headers is not None and "site-secret-token" not in row.headers
        ring = key_ring(DEV_WEBHOOK_SECRET_KEY, "WEBHOOK_SECRET_KEY")
        assert json.loads(ring.decrypt(row.headers.encode())) == [
            ["Authorization", "Bearer site-secret-token"]
        ]
    # The channel is no webhook endpoint of the site's: /webhooks does not list it.
    assert client.get("/webhooks", headers=BOSTON).json() == []

    url = f"/fhir/Subscription/{resource['id']}"
    read = client.get(url, headers=BOSTON)
    assert read.status_code == 200 and read.json() == resource and read.headers["etag"] == 'W/"1"'
    assert client.get(url, headers={**BOSTON, "If-None-Match": 'W/"1"'}).status_code == 304
    status = client.get(f"{url}/$status", headers=BOSTON).json()
    Bundle.model_validate(status)
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["events-since-subscription-start"]["valueString"] == "0"
    assert parameters["status"]["valueCode"] == "active"

    assert client.get(url, headers=DENVER).status_code == 404
    assert client.delete(url, headers=DENVER).status_code == 404
    deleted = client.delete(url, headers=BOSTON)
    assert deleted.status_code == 200 and deleted.json()["issue"][0]["code"] == "deleted"
    gone = client.get(url, headers=BOSTON)
    assert gone.status_code == 410 and gone.json()["resourceType"] == "OperationOutcome"


def test_a_site_cannot_subscribe_to_another_sites_appointments(client: TestClient, engine: Engine) -> None:
    refused = subscribe(client, DENVER)
    assert refused.status_code == 403, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert refused.json()["issue"][0]["code"] == "forbidden"
    with session_factory(engine)() as session:
        assert session.exec(select(FhirSubscription)).all() == []
    # A coordinator may subscribe for any site.
    assert subscribe(client, COORDINATOR).status_code == 201


@pytest.mark.parametrize(
    "endpoint",
    ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.5/notify", "https://[fd00:ec2::254]/"],
)
def test_a_private_or_metadata_endpoint_is_refused_naming_it(
    client: TestClient, engine: Engine, endpoint: str
) -> None:
    refused = subscribe(client, BOSTON, endpoint=endpoint)
    assert refused.status_code == 422, refused.text
    issues = refused.json()["issue"]
    assert [i["expression"] for i in issues] == [["channel.endpoint"]]
    assert endpoint not in refused.text
    with session_factory(engine)() as session:
        assert session.exec(select(FhirSubscription)).all() == []


def test_a_site_has_at_most_five_subscriptions(client: TestClient) -> None:
    for n in range(5):
        assert (
            subscribe(client, BOSTON, endpoint=f"https://fhir.tc-boston.example.org/{n}").status_code == 201
        )
    sixth = subscribe(client, BOSTON)
    assert sixth.status_code == 409 and sixth.json()["resourceType"] == "OperationOutcome"


def test_each_change_queues_one_numbered_notification_per_subscription(
    client: TestClient, engine: Engine
) -> None:
    full = subscribe(client, BOSTON).json()
    empty = subscribe(
        client,
        BOSTON,
        endpoint="https://fhir.tc-boston.example.org/empty",
        _payload={"extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": "empty"}]},
    ).json()
    webhook = register(client, BOSTON).json()
    coordinators = subscribe(client, COORDINATOR).json()  # TC-BOSTON's too: a second full-resource one
    with session_factory(engine)() as session:
        appointment = Appointment(
            coi="CHW4321260000014",
            treatment_center_id="TC-BOSTON",
            conditioning_start_on=date(2026, 12, 10),
            infusion_on=date(2026, 12, 14),
        )
        session.add(appointment)
        appointment_id = appointment.id
        commands.notify_site(session, appointment, "slot.proposed")
        commands.notify_site(session, appointment, "slot.confirmed")
        session.commit()
        rows = session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.created_at))).all()
        by_endpoint: dict[str, list[WebhookDelivery]] = {}
        for row in rows:
            by_endpoint.setdefault(str(row.endpoint_id), []).append(row)
        channels = {str(s.id): str(s.endpoint_id) for s in session.exec(select(FhirSubscription)).all()}
    assert [r.kind for r in by_endpoint[webhook["id"]]] == ["slot.proposed", "slot.confirmed"]
    assert json.loads(by_endpoint[webhook["id"]][0].payload)["kind"] == "slot.proposed"

    for subscription in (full, empty, coordinators):
        notifications = [json.loads(r.payload) for r in by_endpoint[channels[subscription["id"]]]]
        assert [r.kind for r in by_endpoint[channels[subscription["id"]]]] == [
            "slot.proposed",
            "slot.confirmed",
        ]
        numbers = []
        for bundle in notifications:
            Bundle.model_validate(bundle)
            assert bundle["type"] == "history"
            parameters = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
            assert parameters["subscription"]["valueReference"]["reference"].endswith(
                f"/fhir/Subscription/{subscription['id']}"
            )
            parts = {p["name"]: p for p in parameters["notification-event"]["part"]}
            numbers.append(parts["event-number"]["valueString"])
        assert numbers == ["1", "2"]
    confirmed = json.loads(by_endpoint[channels[full["id"]]][1].payload)
    assert confirmed["entry"][1]["fullUrl"] == f"http://testserver/fhir/Appointment/{appointment_id}"
    assert confirmed["entry"][1]["resource"]["id"] == str(appointment_id)
    assert len(json.loads(by_endpoint[channels[empty["id"]]][1].payload)["entry"]) == 1
    status = client.get(f"/fhir/Subscription/{full['id']}/$status", headers=BOSTON).json()
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["events-since-subscription-start"]["valueString"] == "2"


def test_an_update_re_activates_a_channel_disabled_after_failures_and_keeps_masked_headers(
    client: TestClient, engine: Engine
) -> None:
    created = subscribe(client, BOSTON).json()
    url = f"/fhir/Subscription/{created['id']}"
    with session_factory(engine)() as session:
        row = session.get(FhirSubscription, uuid.UUID(created["id"]))
        assert row is not None
        appointment = Appointment(
            coi="CHW4321260000014",
            treatment_center_id="TC-BOSTON",
            conditioning_start_on=date(2026, 12, 10),
            infusion_on=date(2026, 12, 14),
        )
        session.add(appointment)
        commands.notify_site(session, appointment, "slot.proposed")
        session.flush()
        [delivery] = session.exec(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.endpoint_id)
        ).all()
        results = [
            webhook_commands.AttemptResult(delivery.id, row.endpoint_id, False, 503, "HTTP 503")
            for _ in range(3)
        ]
        assert webhook_commands.record_attempts(session, results, runtime_failure_policy())
        session.commit()
    read = client.get(url, headers=BOSTON).json()
    assert read["status"] == "error" and "HTTP 503" in read["error"]
    worklist = client.get("/worklist", headers=COORDINATOR).json()
    assert [i["detail"].split(" (channel")[0] for i in worklist if i["kind"] == "webhook_failing"] == [
        f"FHIR Subscription/{created['id']}"
    ]

    # The client sends back what it read (the header masked), asking for it to be active again.
    updated = client.put(url, json={**read, "status": "requested"}, headers={**BOSTON, **FHIR})
    assert updated.status_code == 200, updated.text
    assert updated.json()["status"] == "active" and updated.json()["meta"]["versionId"] == "2"
    assert updated.headers["etag"] == 'W/"2"'
    with session_factory(engine)() as session:
        row = session.get(FhirSubscription, uuid.UUID(created["id"]))
        assert row is not None and row.headers is not None
        ring = key_ring(DEV_WEBHOOK_SECRET_KEY, "WEBHOOK_SECRET_KEY")
        assert json.loads(ring.decrypt(row.headers.encode())) == [
            ["Authorization", "Bearer site-secret-token"]
        ]
        statuses = session.exec(
            select(WebhookDelivery.status).where(WebhookDelivery.endpoint_id == row.endpoint_id)
        ).all()
    assert list(statuses) == ["pending"]

    moved = {
        **read,
        "_criteria": {
            "extension": [
                {"url": FILTER_CRITERIA_EXTENSION, "valueString": "Appointment?actor=Location/TC-DENVER"}
            ]
        },
    }
    assert client.put(url, json=moved, headers={**COORDINATOR, **FHIR}).status_code == 422
    assert (
        client.put(url, json={**read, "id": str(uuid.uuid4())}, headers={**BOSTON, **FHIR}).status_code == 422
    )
    assert client.put(url, json=read, headers={**DENVER, **FHIR}).status_code == 404


def runtime_failure_policy() -> webhook_domain.FailurePolicy:
    """The app's (app_client: 4 attempts, disabled after 3 consecutive failures)."""
    return webhook_domain.FailurePolicy(max_attempts=4, disable_after_failures=3, backoff_base_seconds=2)
