"""FHIR Subscriptions (R4 subscriptions backport) driven with a real FHIR client (fhirpy), on the real
broker and database (SQLite and PostgreSQL): a site subscribes, its case goes through to delivery, and the
subscriber receives the notification Bundle of the confirmation (Appointment `booked`); a site cannot
subscribe to another site's appointments; a private or metadata endpoint is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError, OperationOutcome, ResourceNotFound

from deploy.observe import EventLog, ReceivedWebhook, WebhookListener
from services.common.fhir import FHIR_JSON
from services.scheduling.subscription_domain import (
    FILTER_CRITERIA_EXTENSION,
    PAYLOAD_CONTENT_EXTENSION,
    STATUS_PROFILE,
    TOPIC,
)
from services.scheduling.webhook_domain import IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from tests.e2e.conftest import COURIER, RunningStack
from tests.e2e.journey import DEMO_SITE, PRESCRIBER, book_first_option, scan
from tests.e2e.test_scheduling import Site, dispatched_case, midday

pytestmark = pytest.mark.e2e
CENTER_TOKEN = "Bearer dev-center-token"  # TC-BOSTON's desk
COORDINATOR_TOKEN = "Bearer dev-coordinator-token"
LISTENER_TOKEN = "Bearer the-subscribers-own-token"


def subscription(site: str, endpoint: str, content: str = "full-resource") -> dict[str, Any]:
    return {
        "status": "requested",
        "reason": f"{site}'s infusion appointments",
        "criteria": TOPIC,
        "_criteria": {
            "extension": [
                {"url": FILTER_CRITERIA_EXTENSION, "valueString": f"Appointment?actor=Location/{site}"}
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": FHIR_JSON,
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": content}]},
            "header": [f"Authorization: {LISTENER_TOKEN}"],
        },
    }


@pytest.fixture
def center(stack: RunningStack) -> AsyncFHIRClient:
    """TC-BOSTON's desk as a FHIR client."""
    return AsyncFHIRClient(url=f"{stack.scheduling}/fhir", authorization=CENTER_TOKEN)


def _parameters(bundle: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}


def _event(bundle: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in _parameters(bundle)["notification-event"]["part"]}


def _about(appointment_id: str, status: str | None = None) -> Any:
    def matches(hook: ReceivedWebhook) -> bool:
        document = hook.json()
        if document.get("resourceType") != "Bundle" or len(document["entry"]) < 2:
            return False
        resource = document["entry"][1].get("resource", {})
        return resource.get("id") == appointment_id and status in (None, resource.get("status"))

    return matches


async def test_a_site_subscribed_with_fhirpy_receives_the_notification_of_the_confirmation(
    stack: RunningStack,
    http: httpx.AsyncClient,
    events: EventLog,
    webhook_listener: WebhookListener,
    center: AsyncFHIRClient,
) -> None:
    created = center.resource("Subscription", **subscription(DEMO_SITE, webhook_listener.url))
    await created.save()
    try:
        assert created.id and created["status"] == "active"
        assert created["channel"]["header"] == ["Authorization: ***"]

        coi, shipment = await dispatched_case(http, stack, events, Site(DEMO_SITE, PRESCRIBER), eta=midday(2))
        booked = await book_first_option(http, stack, events, coi)
        delivered = await http.post(
            f"{stack.tracking}/shipments/{shipment}/scans",
            json=scan("delivery", [coi], location="Boston QTC cell lab"),
            headers=COURIER,
        )
        assert delivered.status_code in (200, 201), delivered.text
        await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)

        hook = await asyncio.to_thread(webhook_listener.wait_for, _about(booked["id"], "booked"), 60.0)
        assert hook.headers["Content-Type"] == FHIR_JSON
        assert hook.headers["Authorization"] == LISTENER_TOKEN
        assert hook.headers[IDEMPOTENCY_HEADER] and SIGNATURE_HEADER not in hook.headers
        bundle = hook.json()
        Bundle.model_validate(bundle)
        assert bundle["type"] == "history"
        status = bundle["entry"][0]["resource"]
        assert status["resourceType"] == "Parameters" and status["meta"]["profile"] == [STATUS_PROFILE]
        parameters = _parameters(bundle)
        base = f"{stack.scheduling}/fhir"
        assert parameters["subscription"]["valueReference"] == {
            "reference": f"{base}/Subscription/{created.id}"
        }
        assert parameters["topic"]["valueCanonical"] == TOPIC
        assert parameters["type"]["valueCode"] == "event-notification"
        focus = f"{base}/Appointment/{booked['id']}"
        assert _event(bundle)["focus"]["valueReference"] == {"reference": focus}
        appointment = bundle["entry"][1]
        assert appointment["fullUrl"] == focus
        assert FhirAppointment.model_validate(appointment["resource"]).status == "booked"

        # The proposal came first, with a lower event number (numbers increase per subscription).
        proposed = await asyncio.to_thread(webhook_listener.wait_for, _about(booked["id"], "pending"), 30.0)
        first, confirmed = (
            int(_event(proposed.json())["event-number"]["valueString"]),
            int(_event(bundle)["event-number"]["valueString"]),
        )
        assert first < confirmed

        # Read back through the client; $status counts the events.
        read = await center.reference("Subscription", created.id).to_resource()
        assert read["status"] == "active" and read["criteria"] == TOPIC
        answer = await center.execute(f"Subscription/{created.id}/$status", method="get")
        counted = int(_parameters(answer)["events-since-subscription-start"]["valueString"])
        assert counted >= confirmed

        # Changed through the client (a PUT of what it read: the masked header keeps its value).
        read["reason"] = "TC-BOSTON's infusions, changed"
        await read.save()
        assert read["meta"]["versionId"] == "2" and read["channel"]["header"] == ["Authorization: ***"]
    finally:
        await created.delete()  # type: ignore[no-untyped-call]
    with pytest.raises(ResourceNotFound):
        await center.reference("Subscription", created.id).to_resource()


async def test_a_site_cannot_subscribe_to_another_sites_appointments(
    stack: RunningStack, center: AsyncFHIRClient
) -> None:
    other = center.resource("Subscription", **subscription("TC-DENVER", "https://fhir.example.org/notify"))
    with pytest.raises(ForbiddenError) as refused:
        await other.save()
    assert '"code":"forbidden"' in str(refused.value).replace(" ", "")
    assert other.id is None


@pytest.mark.parametrize(
    "endpoint",
    ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.5/hooks", "https://[fd00:ec2::254]/"],
)
async def test_a_private_or_metadata_endpoint_is_refused_naming_it(
    stack: RunningStack, endpoint: str
) -> None:
    """Asked for a site with no cases: had it been taken, nothing would ever be sent there."""
    coordinator = AsyncFHIRClient(url=f"{stack.scheduling}/fhir", authorization=COORDINATOR_TOKEN)
    refused_subscription = coordinator.resource("Subscription", **subscription("TC-NO-EVENTS", endpoint))
    with pytest.raises(OperationOutcome) as refused:
        await refused_subscription.save()
    issues = refused.value.resource["issue"]
    assert [issue["expression"] for issue in issues] == [["channel.endpoint"]]
    assert [issue["code"] for issue in issues] == ["invalid"]
