"""The treatment center's read-only view of the console, against the three real service apps in process:
its own site's cases and calendar only (the services scope its token), no action form on any page it can
reach, no QA in its nav, and another site's case is scheduling's 404 in words."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.console.sessions import CSRF_FIELD
from tests.support.console import (
    CENTER,
    QA_PIN,
    ServiceApps,
    add_cases,
    console_client,
    hidden,
    post_forms,
    put_site,
    quarantined_shipment,
    service_apps,
    sign_in,
)

BOSTON_COI, DENVER_COI = "CHW4321260000014", "CHW43212600000M*"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceApps]:
    """Boston and Denver: a calendar each, a case to book each; a quarantined shipment to Denver."""
    with service_apps(tmp_path_factory.mktemp("console-center")) as apps:
        scheduling = apps.client("scheduling")
        put_site(scheduling, "TC-BOSTON")
        put_site(scheduling, "TC-DENVER", timezone="America/Denver")
        add_cases(
            apps.engines["scheduling"],
            (("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI)),
            offered=(BOSTON_COI, DENVER_COI),
        )
        quarantined_shipment(apps, apps.client("coi_tracking"), "TC-DENVER")
        yield apps


@pytest.fixture(scope="module")
def boston_shipment(services: ServiceApps) -> dict[str, Any]:
    return quarantined_shipment(services, services.client("coi_tracking"), "TC-BOSTON")


@pytest.fixture
def console(services: ServiceApps) -> Iterator[TestClient]:
    with console_client(services) as client:
        yield client


def test_a_treatment_center_sees_its_own_site_only_and_no_action_form_anywhere(console: TestClient) -> None:
    sign_in(console, CENTER)
    worklist = console.get("/worklist").text
    assert re.findall(r'<a href="/cases/([^"]+)">', worklist) == [BOSTON_COI]
    assert re.findall(r'<section class="site" id="site-([A-Z-]+)"', console.get("/sites").text) == [
        "TC-BOSTON"
    ]
    pages = {path: console.get(path) for path in ("/", "/worklist", "/sites", f"/cases/{BOSTON_COI}")}
    for path, page in pages.items():
        assert page.status_code == 200, (path, page.text)
        assert post_forms(page.text) == ["/sign-out"], path
        assert '<a href="/qa">' not in page.text, path
        assert '<a href="/sites">Sites</a>' in page.text and '<a href="/worklist">Worklist</a>' in page.text
    qa = console.get("/qa")
    assert qa.status_code == 403 and "The QA page is for QA reviewers and coordinators." in qa.text
    assert post_forms(qa.text) == ["/sign-out"]


def test_another_sites_case_is_the_services_404_in_words(console: TestClient) -> None:
    sign_in(console, CENTER)
    other = console.get(f"/cases/{DENVER_COI}", headers={"X-Correlation-ID": "center-test-1"})
    assert other.status_code == 404
    assert "scheduling answered 404: Not Found." in other.text and "no such case" in other.text
    assert '<code class="correlation-id">center-test-1</code>' in other.text


def test_a_treatment_center_cannot_sign_the_service_says_so(
    console: TestClient, boston_shipment: dict[str, Any]
) -> None:
    sign_in(console, CENTER)
    shipment = boston_shipment
    answer = console.post(
        f"/qa/shipments/{shipment['id']}/dispositions",
        data={
            CSRF_FIELD: hidden(console.get("/worklist").text),
            "decision": "release",
            "reason_code": "product_within_limits",
            "meaning": "approval",
            "signing_pin": QA_PIN,
        },
    )
    assert answer.status_code == 403
    assert "coi tracking answered 403: Forbidden." in answer.text
    assert "role treatment_center may not do this" in answer.text
