"""FHIR Subscription rules without I/O (R4 subscriptions backport): what a Subscription may ask for — each
refusal naming its element — and the notification Bundle a change becomes, validated with fhir.resources'
R4B Bundle and Parameters models."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription

from services.common.fhir import FHIR_JSON, FhirJSONResponse, capability_statement, undeclared_routes
from services.scheduling import fhir
from services.scheduling.domain import AppointmentState, SiteCalendar
from services.scheduling.models import Appointment, Case
from services.scheduling.subscription_api import SUBSCRIPTION_CAPABILITIES, TOPIC_CANONICAL, router
from services.scheduling.subscription_domain import (
    FILTER_CRITERIA_EXTENSION,
    MASKED,
    NOTIFICATION_PROFILE,
    PAYLOAD_CONTENT_EXTENSION,
    STATUS_PROFILE,
    TOPIC,
    StoredSubscription,
    SubscriptionRefused,
    SubscriptionState,
    kept_headers,
    notification_bundle,
    requested,
    status_bundle,
    status_of,
    subscription_resource,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
BASE = "https://scheduling.cgt-logistics.example/fhir"
APPOINTMENT_ID = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
SUBSCRIPTION = {
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
        "header": ["Authorization: Bearer site-token"],
    },
}


def subscription(**changes: Any) -> dict[str, Any]:
    """SUBSCRIPTION with `changes` (paths joined by `__`: `channel__type`); None removes the element."""
    document: dict[str, Any] = copy.deepcopy(SUBSCRIPTION)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node: Any = document
        for parent in parents:
            node = node[parent]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return document


def test_a_site_subscribes_to_its_own_appointments() -> None:
    asked = requested(SUBSCRIPTION, caller_site="TC-BOSTON", allow_loopback=False, now=NOW)
    assert asked.site == "TC-BOSTON"
    assert asked.endpoint == "https://fhir.tc-boston.example.org/notify"
    assert asked.payload_content == "full-resource"
    assert asked.headers == (("Authorization", "Bearer site-token"),)
    assert asked.reason == "TC-BOSTON's infusions" and asked.end is None


def test_a_coordinator_subscribes_for_any_site_and_id_only_is_the_default() -> None:
    document = subscription(channel___payload=None)
    asked = requested(document, caller_site=None, allow_loopback=False, now=NOW)
    assert (asked.site, asked.payload_content) == ("TC-BOSTON", "id-only")


def _refusal(document: dict[str, Any], caller_site: str | None = "TC-BOSTON") -> tuple[str, int]:
    with pytest.raises(SubscriptionRefused) as refused:
        requested(document, caller_site=caller_site, allow_loopback=False, now=NOW)
    return refused.value.element, refused.value.status


def test_a_site_may_not_subscribe_to_another_sites_appointments() -> None:
    other = {
        "extension": [
            {"url": FILTER_CRITERIA_EXTENSION, "valueString": "Appointment?actor=Location/TC-DENVER"}
        ]
    }
    assert _refusal(subscription(_criteria=other)) == ("_criteria", 403)


@pytest.mark.parametrize(
    ("changes", "element"),
    [
        ({"resourceType": "Patient"}, "resourceType"),
        ({"status": "off"}, "status"),
        ({"reason": None}, "reason"),
        ({"criteria": "Appointment?status=booked"}, "criteria"),
        ({"_criteria": None}, "_criteria"),
        (
            {"_criteria": {"extension": [{"url": FILTER_CRITERIA_EXTENSION, "valueString": "Patient?x=1"}]}},
            "_criteria",
        ),
        (
            {
                "_criteria": {
                    "extension": [
                        {
                            "url": FILTER_CRITERIA_EXTENSION,
                            "valueString": "Appointment?actor=Location/TC-BOSTON",
                        },
                        {
                            "url": FILTER_CRITERIA_EXTENSION,
                            "valueString": "Appointment?actor=Location/TC-BOSTON",
                        },
                    ]
                }
            },
            "_criteria",
        ),
        ({"channel__type": "websocket"}, "channel.type"),
        ({"channel__endpoint": None}, "channel.endpoint"),
        ({"channel__endpoint": "http://169.254.169.254/latest/meta-data/"}, "channel.endpoint"),
        ({"channel__endpoint": "https://10.0.0.5/notify"}, "channel.endpoint"),
        ({"channel__endpoint": "http://fhir.tc-boston.example.org/notify"}, "channel.endpoint"),
        ({"channel__endpoint": "https://fhir.tc-boston.example.org/" + "a" * 2048}, "channel.endpoint"),
        ({"channel__payload": "application/json"}, "channel.payload"),
        (
            {
                "channel___payload": {
                    "extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": "everything"}]
                }
            },
            "channel._payload",
        ),
        ({"channel__header": ["no colon here"]}, "channel.header[0]"),
        ({"channel__header": ["X-Ok: 1", "Bad Name: v"]}, "channel.header[1]"),
        ({"channel__header": ["Content-Type: text/plain"]}, "channel.header[0]"),
        ({"channel__header": ["Idempotency-Key: mine"]}, "channel.header[0]"),
        ({"channel__header": [f"X-H{i}: v" for i in range(11)]}, "channel.header"),
        ({"end": (NOW - timedelta(minutes=1)).isoformat()}, "end"),
    ],
)
def test_each_rule_refuses_naming_its_element(changes: dict[str, Any], element: str) -> None:
    assert _refusal(subscription(**changes)) == (element, 422)


def test_a_loopback_endpoint_is_taken_only_where_development_allows_it() -> None:
    document = subscription(channel__endpoint="http://127.0.0.1:8080/notify")
    assert _refusal(document) == ("channel.endpoint", 422)
    assert requested(document, caller_site="TC-BOSTON", allow_loopback=True, now=NOW).endpoint == (
        "http://127.0.0.1:8080/notify"
    )


def _appointment() -> dict[str, Any]:
    appointment = Appointment(
        id=UUID(APPOINTMENT_ID),
        coi="W1234 26 000001",
        treatment_center_id="TC-BOSTON",
        state=AppointmentState.CONFIRMED,
        conditioning_start_on=date(2026, 12, 10),
        infusion_on=date(2026, 12, 14),
        version=3,
        created_at=NOW,
        updated_at=NOW,
    )
    case = Case(
        coi=appointment.coi,
        order_id=UUID(int=1),
        patient_ref="PSN-42",
        therapy_code="WASKYRA",
        treatment_center_id="TC-BOSTON",
        conditioning_days=4,
    )
    calendar = SiteCalendar(
        timezone="America/New_York",
        infusions_per_day=2,
        working_weekdays=frozenset(range(1, 8)),
        blackout_dates=frozenset(),
        admissions_capacity=4,
    )
    return fhir.appointment_resource(appointment, case, calendar)


STATE = SubscriptionState(
    id="9b8a7c6d-0000-4000-8000-000000000001", base=BASE, status="active", events_since_start=7
)


def _parameters(bundle: dict[str, Any]) -> dict[str, Any]:
    status = bundle["entry"][0]["resource"]
    Parameters.model_validate(status)
    return {p["name"]: p for p in status["parameter"]}


def test_a_full_resource_notification_is_a_history_bundle_led_by_the_subscription_status() -> None:
    appointment = _appointment()
    bundle = notification_bundle(
        STATE,
        payload_content="full-resource",
        event_number=7,
        timestamp=NOW,
        appointment_id=APPOINTMENT_ID,
        appointment=appointment,
    )
    Bundle.model_validate(bundle)
    assert bundle["type"] == "history" and bundle["meta"]["profile"] == [NOTIFICATION_PROFILE]
    assert bundle["timestamp"] == "2026-12-06T12:00:00Z"
    status, focus = bundle["entry"]
    assert status["resource"]["resourceType"] == "Parameters"
    assert status["resource"]["meta"]["profile"] == [STATUS_PROFILE]
    assert status["fullUrl"] == f"urn:uuid:{status['resource']['id']}"
    assert status["request"] == {"method": "GET", "url": f"{BASE}/Subscription/{STATE.id}/$status"}
    parameters = _parameters(bundle)
    assert parameters["subscription"]["valueReference"] == {"reference": f"{BASE}/Subscription/{STATE.id}"}
    assert parameters["topic"]["valueCanonical"] == TOPIC
    assert parameters["status"]["valueCode"] == "active"
    assert parameters["type"]["valueCode"] == "event-notification"
    assert parameters["events-since-subscription-start"]["valueString"] == "7"
    assert parameters["notification-event"]["part"] == [
        {"name": "event-number", "valueString": "7"},
        {"name": "timestamp", "valueInstant": "2026-12-06T12:00:00Z"},
        {"name": "focus", "valueReference": {"reference": f"{BASE}/Appointment/{APPOINTMENT_ID}"}},
    ]
    assert focus["fullUrl"] == f"{BASE}/Appointment/{APPOINTMENT_ID}"
    assert focus["request"] == {"method": "PUT", "url": f"Appointment/{APPOINTMENT_ID}"}
    assert focus["resource"] == appointment
    assert FhirAppointment.model_validate(focus["resource"]).status == "booked"
    # The patient appears only as the Appointment already names them: the pseudonymous reference.
    assert "PSN-42" in str(bundle) and "Patient/PSN-42" in str(focus["resource"]["participant"])


def test_an_id_only_notification_names_the_appointment_without_carrying_it() -> None:
    bundle = notification_bundle(
        STATE,
        payload_content="id-only",
        event_number=8,
        timestamp=NOW,
        appointment_id=APPOINTMENT_ID,
        appointment=None,
    )
    Bundle.model_validate(bundle)
    assert [e["fullUrl"] for e in bundle["entry"][1:]] == [f"{BASE}/Appointment/{APPOINTMENT_ID}"]
    assert "resource" not in bundle["entry"][1]
    assert _parameters(bundle)["notification-event"]["part"][0] == {
        "name": "event-number",
        "valueString": "8",
    }


def test_an_empty_notification_has_only_the_status_and_no_focus() -> None:
    bundle = notification_bundle(
        STATE,
        payload_content="empty",
        event_number=9,
        timestamp=NOW,
        appointment_id=APPOINTMENT_ID,
        appointment=None,
    )
    Bundle.model_validate(bundle)
    assert len(bundle["entry"]) == 1
    assert [p["name"] for p in _parameters(bundle)["notification-event"]["part"]] == [
        "event-number",
        "timestamp",
    ]
    assert APPOINTMENT_ID not in str(bundle)


def test_status_is_error_while_the_channel_is_disabled_and_off_after_the_end() -> None:
    assert status_of(disabled=False, end=None, now=NOW) == "active"
    assert status_of(disabled=True, end=None, now=NOW) == "error"
    assert status_of(disabled=False, end=NOW, now=NOW) == "off"
    assert status_of(disabled=False, end=NOW + timedelta(seconds=1), now=NOW) == "active"


def test_the_status_operation_answers_a_query_status_bundle() -> None:
    bundle = status_bundle(STATE)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    parameters = _parameters(bundle)
    assert parameters["type"]["valueCode"] == "query-status"
    assert parameters["events-since-subscription-start"]["valueString"] == "7"
    assert "notification-event" not in parameters


def test_a_read_masks_the_header_values() -> None:
    stored = StoredSubscription(
        state=STATE,
        site="TC-BOSTON",
        endpoint="https://fhir.tc-boston.example.org/notify",
        payload_content="full-resource",
        header_names=("Authorization",),
        reason="r",
        end=None,
        version=1,
        updated_at=NOW,
        error=None,
    )
    resource = subscription_resource(stored)
    Subscription.model_validate(resource)
    assert resource["channel"]["header"] == ["Authorization: ***"]
    assert resource["_criteria"]["extension"][0]["valueString"] == "Appointment?actor=Location/TC-BOSTON"
    assert resource["criteria"] == TOPIC and resource["status"] == "active"


def test_the_capabilities_list_exactly_the_subscription_routes_and_name_the_topic() -> None:
    served_not_declared, declared_not_served = undeclared_routes(router.routes, SUBSCRIPTION_CAPABILITIES)  # type: ignore[arg-type]
    assert served_not_declared == set() and declared_not_served == {("GET", "/fhir/metadata")}

    app = FastAPI()

    @app.get("/fhir/metadata")
    def metadata(request: Request) -> FhirJSONResponse:
        return FhirJSONResponse(
            capability_statement(request, service="scheduling", resources=SUBSCRIPTION_CAPABILITIES)
        )

    statement = TestClient(app).get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    [entry] = statement["rest"][0]["resource"]
    assert entry["type"] == "Subscription" and entry["extension"] == [TOPIC_CANONICAL]
    assert TOPIC_CANONICAL == {
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
        "capabilitystatement-subscriptiontopic-canonical",
        "valueCanonical": TOPIC,
    }
    assert [op["name"] for op in entry["operation"]] == ["status"]


def test_an_update_keeps_a_masked_headers_stored_value_and_refuses_an_unknown_masked_one() -> None:
    stored = [("Authorization", "Bearer site-token")]
    assert kept_headers([("authorization", MASKED), ("X-Site", "b")], stored) == (
        ("authorization", "Bearer site-token"),
        ("X-Site", "b"),
    )
    assert kept_headers([("Authorization", "Bearer new")], stored) == (("Authorization", "Bearer new"),)
    with pytest.raises(SubscriptionRefused) as refused:
        kept_headers([("Authorization", "Bearer new"), ("X-Other", MASKED)], stored)
    assert refused.value.element == "channel.header[1]"
