"""The console's QA page against the three real service apps in process: quarantined shipments with their
reasons and readings' summary, the Part 11 signature (release with the right PIN shows the manifestation,
a wrong PIN the service's refusal in words with the tries left), and who may sign (COI tracking's 403)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.console.sessions import CSRF_FIELD
from tests.support.console import (
    COORDINATOR,
    QA,
    QA2,
    QA_PIN,
    ServiceApps,
    bearer,
    console_client,
    enrol_pin,
    hidden,
    put_site,
    quarantined_shipment,
    service_apps,
    sign_in,
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceApps]:
    with service_apps(tmp_path_factory.mktemp("console-qa")) as apps:
        put_site(apps.client("scheduling"), "TC-BOSTON", timezone="America/New_York")
        tracking = apps.client("coi_tracking")
        enrol_pin(tracking, QA)
        enrol_pin(tracking, QA2)
        yield apps


@pytest.fixture
def console(services: ServiceApps) -> Iterator[TestClient]:
    with console_client(services) as client:
        yield client


def section(page: str, shipment_id: str) -> str:
    found = re.search(rf'<section class="shipment" id="shipment-{shipment_id}".*?</section>', page, re.S)
    assert found is not None, page
    return found.group(0)


def release(console: TestClient, shipment_id: str, pin: str) -> object:
    page = console.get("/qa").text
    return console.post(
        f"/qa/shipments/{shipment_id}/dispositions",
        data={
            CSRF_FIELD: hidden(page),
            "decision": "release",
            "reason_code": "product_within_limits",
            "note": "product probe below -150 °C",
            "meaning": "approval",
            "signing_pin": pin,
        },
    )


def test_the_qa_page_lists_a_quarantined_shipment_with_its_reason_and_readings(
    services: ServiceApps, console: TestClient
) -> None:
    shipment = quarantined_shipment(services, services.client("coi_tracking"))
    sign_in(console, QA)
    page = console.get("/qa")
    assert page.status_code == 200, page.text
    mine = section(page.text, shipment["id"])
    assert f'<span class="coi">{shipment["coi"]}</span>' in mine
    assert shipment["quarantine_reason"] and "-140.0 °C" in shipment["quarantine_reason"]
    assert f'<dd class="reason">{shipment["quarantine_reason"]}</dd>' in mine
    assert '<td class="count">2</td>' in mine
    assert '<td class="min">-180.0 °C</td>' in mine and '<td class="max">-140.0 °C</td>' in mine
    assert '<td class="excursions">1</td>' in mine
    # the record is a chart too, its one excursion marked and said in words
    assert f'id="chart-{shipment["id"]}" role="img"' in mine
    assert mine.count('<polygon class="excursion"') == 1
    assert f'<a href="/cases/{shipment["coi"]}">' in mine
    assert "<dd>TC-BOSTON (times in America/New_York)</dd>" in mine
    # The signing form: every control labelled, the PIN a password field.
    assert f'action="/qa/shipments/{shipment["id"]}/dispositions"' in mine
    for control in ("decision", "reason", "note", "meaning", "pin"):
        assert f'<label for="{control}-{shipment["id"]}">' in mine, control
    assert f'<input id="pin-{shipment["id"]}" name="signing_pin" type="password"' in mine
    assert '<optgroup label="To release">' in mine and '<optgroup label="To reject">' in mine
    assert '<option value="temperature_compromised">Temperature compromised</option>' in mine


def test_a_release_with_the_right_pin_shows_the_signature_manifestation(
    services: ServiceApps, console: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    shipment = quarantined_shipment(services, services.client("coi_tracking"))
    sign_in(console, QA)
    with caplog.at_level(logging.DEBUG):
        answer = release(console, shipment["id"], QA_PIN)
    assert answer.status_code == 303, answer.text  # type: ignore[attr-defined]
    assert answer.headers["location"] == f"/qa?signed={shipment['id']}#signed"  # type: ignore[attr-defined]
    assert QA_PIN not in caplog.text
    page = console.get(f"/qa?signed={shipment['id']}").text
    signed = re.search(r'<section id="signed".*?</section>', page, re.S)
    assert signed is not None, page
    [disposition] = (
        services.client("coi_tracking")
        .get(f"/shipments/{shipment['id']}/dispositions", headers=bearer(COORDINATOR))
        .json()
    )
    assert disposition["signer_printed_name"] == "J. Rivera (QA)"
    assert '<dd class="decision">Release</dd>' in signed.group(0)
    assert '<dd class="printed-name">J. Rivera (QA) (qa-jr)</dd>' in signed.group(0)
    assert '<dd class="meaning">Approval</dd>' in signed.group(0)
    when = re.search(r'<dd class="signed-at">([^<]+)</dd>', signed.group(0))
    assert when is not None and when.group(1).endswith(("EST (America/New_York)", "EDT (America/New_York)"))
    assert "product probe below -150 °C" in signed.group(0)
    assert QA_PIN not in page
    assert f'id="shipment-{shipment["id"]}"' not in page  # released: no longer in quarantine


def test_a_wrong_pin_shows_the_services_refusal_and_the_tries_left(
    services: ServiceApps, console: TestClient
) -> None:
    shipment = quarantined_shipment(services, services.client("coi_tracking"))
    sign_in(console, QA2)
    answer = release(console, shipment["id"], "not-the-pin-1")
    assert answer.status_code == 403  # type: ignore[attr-defined]
    text = answer.text  # type: ignore[attr-defined]
    mine = section(text, shipment["id"])
    assert "coi tracking answered 403: The signature was refused." in mine
    assert "wrong signing PIN (1 of 5 in a row before signing is blocked)" in mine
    assert '<code class="correlation-id">' in mine
    assert "not-the-pin-1" not in text  # the PIN is never echoed
    assert 'name="note" rows="2" maxlength="500">product probe below -150 °C</textarea>' in mine
    assert (
        services.client("coi_tracking")
        .get(f"/shipments/{shipment['id']}", headers=bearer(COORDINATOR))
        .json()["status"]
        == "quarantined"
    )


def test_a_coordinator_sees_the_page_without_forms_and_cannot_sign(
    services: ServiceApps, console: TestClient
) -> None:
    shipment = quarantined_shipment(services, services.client("coi_tracking"))
    sign_in(console, COORDINATOR)
    page = console.get("/qa")
    assert page.status_code == 200
    mine = section(page.text, shipment["id"])
    assert "<form" not in mine
    assert "Only QA reviewers sign releases and rejections." in page.text
    refused = release(console, shipment["id"], QA_PIN)
    assert refused.status_code == 403  # type: ignore[attr-defined]
    assert "coi tracking answered 403: Forbidden." in refused.text  # type: ignore[attr-defined]
    assert "role coordinator may not do this" in refused.text  # type: ignore[attr-defined]


def test_the_signing_form_needs_its_csrf_token(services: ServiceApps, console: TestClient) -> None:
    shipment = quarantined_shipment(services, services.client("coi_tracking"))
    sign_in(console, QA)
    refused = console.post(
        f"/qa/shipments/{shipment['id']}/dispositions",
        data={
            "decision": "release",
            "reason_code": "product_within_limits",
            "meaning": "approval",
            "signing_pin": QA_PIN,
        },
    )
    assert refused.status_code == 403 and "Nothing was done." in refused.text
    assert (
        services.client("coi_tracking")
        .get(f"/shipments/{shipment['id']}/dispositions", headers=bearer(COORDINATOR))
        .json()
        == []
    )


def test_a_signature_for_no_such_shipment_is_404_and_signs_nothing(console: TestClient) -> None:
    sign_in(console, QA)
    token = hidden(console.get("/qa").text)
    for path in (
        "/qa/shipments/not-an-id/dispositions",
        "/qa/shipments/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12 + "/dispositions",
    ):
        answer = console.post(
            path,
            data={
                CSRF_FIELD: token,
                "decision": "release",
                "reason_code": "product_within_limits",
                "meaning": "approval",
                "signing_pin": QA_PIN,
            },
        )
        assert answer.status_code == 404, (path, answer.text)
        if "not-an-id" not in path:
            assert "coi tracking answered 404: Not Found." in answer.text
            assert "no such shipment" in answer.text
    assert (
        "There is no such shipment. Nothing was done."
        in console.post("/qa/shipments/not-an-id/dispositions", data={CSRF_FIELD: token}).text
    )
