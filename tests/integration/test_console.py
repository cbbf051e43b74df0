"""The coordinator console without a browser: its FastAPI app under TestClient, its service client wired
to the three real service apps in process (`httpx.ASGITransport`, never started: no broker) on test
databases. Sign-in, the session cookie, CSRF, sign-out, the worklist and its filters and scope, the case
page's times in the site's zone, and a service's refusal shown in words with the correlation id."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deploy import fetch_console_assets, npm_fetch
from services.common.development import DEV_CONSOLE_SESSION_KEY
from services.common.unit_of_work import session_factory
from services.console import app as console_app
from services.console.sessions import CSRF_FIELD, SESSION_COOKIE, SIGN_IN_COOKIE
from services.console.settings import ConsoleSettings
from services.scheduling.models import Site, SlotAlert
from tests.support.console import (
    CENTER,
    COORDINATOR,
    COURIER,
    QA,
    ServiceApps,
    add_cases,
    console_client,
    console_settings,
    hidden,
    mounts,
    service_apps,
    sign_in,
)

BOSTON_COI, DENVER_COI = "CHW4321260000014", "CHW43212600000M*"
DENVER_RAISED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def seed_scheduling(engine: Any) -> None:
    """Boston: a case with options offered (to book); Denver: a case whose slot is at risk."""
    add_cases(engine, (("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI)), offered=(BOSTON_COI,))
    with session_factory(engine)() as session:
        session.add(Site(id="TC-BOSTON", timezone="America/New_York"))
        session.add(Site(id="TC-DENVER", timezone="America/Denver"))
        session.add(
            SlotAlert(
                appointment_id=uuid.uuid4(),
                coi=DENVER_COI,
                treatment_center_id="TC-DENVER",
                cause="delay",
                detail="the product is delayed past conditioning",
                raised_at=DENVER_RAISED,
            )
        )
        session.commit()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceApps]:
    """The three service apps (never started) on SQLite databases of their own, scheduling's seeded."""
    with service_apps(tmp_path_factory.mktemp("console")) as apps:
        seed_scheduling(apps.engines["scheduling"])
        yield apps


@pytest.fixture
def console(services: ServiceApps) -> Iterator[TestClient]:
    with console_client(services) as client:
        yield client


def rows(page: str) -> list[tuple[str, str, str]]:
    """The worklist's rows: (kind, COI, site)."""
    return [
        (m.group(1), m.group(2), m.group(3))
        for m in re.finditer(
            r'<tr class="work-item" data-kind="([a-z_]+)">.*?<a href="/cases/[^"]+">([^<]+)</a></td>\s*<td>([^<]+)</td>',
            page,
            re.S,
        )
    ]


# ---------------------------------------------------------------- /whoami on every service


def test_whoami_answers_the_callers_identity_and_scope_and_nothing_else(services: ServiceApps) -> None:
    for name, app in services.apps.items():
        client = TestClient(app)
        answer = client.get("/whoami", headers={"Authorization": f"Bearer {CENTER}"})
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json() == {
            "subject": "tc-boston-desk",
            "role": "treatment_center",
            "display_name": "Boston QTC cell lab",
            "treatment_center_id": "TC-BOSTON",
            "courier_company": None,
        }
        assert client.get("/whoami", headers={"Authorization": f"Bearer {COURIER}"}).json()[
            "courier_company"
        ] == ("CRYO-EXPRESS")
        refused = client.get("/whoami")
        assert refused.status_code == 401, name
        assert refused.headers["content-type"].startswith("application/problem+json")


# ---------------------------------------------------------------- sign-in, the cookie, sign-out


def test_signing_in_with_a_good_token_opens_a_session_whose_cookie_holds_no_token(
    console: TestClient,
) -> None:
    answer = sign_in(console, COORDINATOR)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    [cookie] = [c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    attributes = [part.strip() for part in cookie.split(";")]
    value = attributes[0].removeprefix(f"{SESSION_COOKIE}=")
    assert sorted(a.lower() for a in attributes[1:]) == [
        "httponly",
        "max-age=28800",
        "path=/",
        "samesite=strict",
    ]
    assert COORDINATOR not in cookie and "coordinator" not in value
    page = console.get("/")
    assert page.status_code == 200
    assert COORDINATOR not in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == console_app.PAGE_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_the_cookie_is_secure_unless_configured_off(services: ServiceApps) -> None:
    app = console_app.create_app(console_settings(console_cookie_secure=True), mounts=mounts(services))
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        answer = sign_in(client, COORDINATOR)
        [cookie] = [c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
        assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_a_bad_token_is_refused_in_words_and_opens_no_session(console: TestClient) -> None:
    answer = sign_in(console, "not-a-token-anyone-has", status=401)
    assert answer.status_code == 401
    assert "That access token was not accepted." in answer.text
    assert not [c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    assert console.get("/").headers["location"] == "/sign-in"


def test_a_courier_may_not_sign_in_to_the_console(console: TestClient) -> None:
    answer = sign_in(console, COURIER, status=403)
    assert answer.status_code == 403
    assert "The console is for coordinators, QA reviewers and treatment centers." in answer.text
    assert console.get("/").status_code == 303


def test_pages_without_a_session_go_to_sign_in(console: TestClient) -> None:
    for path in ("/", "/worklist", "/worklist/rows", f"/cases/{BOSTON_COI}"):
        answer = console.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/sign-in"), path
    partial = console.get("/worklist/rows", headers={"HX-Request": "true"})
    assert (partial.status_code, partial.headers["HX-Redirect"]) == (401, "/sign-in")
    console.cookies.set(SESSION_COOKIE, "forged.value.here")
    assert console.get("/").status_code == 303


def test_sign_out_ends_the_session_and_its_cookie_is_worth_nothing_after(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    page = console.get("/")
    cookie = console.cookies[SESSION_COOKIE]
    answer = console.post("/sign-out", data={CSRF_FIELD: hidden(page.text)})
    assert (answer.status_code, answer.headers["location"]) == (303, "/sign-in")
    console.cookies.set(SESSION_COOKIE, cookie)  # replayed
    assert console.get("/").headers["location"] == "/sign-in"


def test_a_session_ends_after_its_lifetime(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    assert console.get("/").status_code == 200
    store = console.app.state.console.sessions  # type: ignore[attr-defined]
    now = store.clock()
    store.clock = lambda: now + 8 * 3600 + 1
    assert console.get("/").headers["location"] == "/sign-in"


# ---------------------------------------------------------------- CSRF


def test_a_post_without_the_csrf_token_is_403_and_does_nothing(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    for data in ({}, {CSRF_FIELD: "not-the-token"}):
        refused = console.post("/sign-out", data=data)
        assert refused.status_code == 403
        assert "Nothing was done." in refused.text
        assert console.get("/").status_code == 200  # still signed in


def test_the_sign_in_form_needs_its_own_token(console: TestClient) -> None:
    console.get("/sign-in")
    for data in ({"token": COORDINATOR}, {"token": COORDINATOR, CSRF_FIELD: "guessed"}):
        refused = console.post("/sign-in", data=data)
        assert refused.status_code == 403
        assert not [c for c in refused.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    # The form's token without its cookie (another browser's form) is refused too.
    token = hidden(console.get("/sign-in").text)
    console.cookies.delete(SIGN_IN_COOKIE)
    assert console.post("/sign-in", data={CSRF_FIELD: token, "token": COORDINATOR}).status_code == 403
    assert console.get("/").status_code == 303


def test_every_post_route_refuses_a_form_without_its_token(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    posts = [r.path for r in console.app.routes if "POST" in (getattr(r, "methods", None) or set())]  # type: ignore[attr-defined]
    assert sorted(posts) == [
        "/cases/{coi}/cancel",
        "/cases/{coi}/collections",
        "/cases/{coi}/manufacturing-release",
        "/cases/{coi}/manufacturing-start",
        "/cases/{coi}/plans",
        "/cases/{coi}/plans/{plan_id}/book",
        "/cases/{coi}/reschedule",
        "/qa/shipments/{shipment_id}/dispositions",
        "/sign-in",
        "/sign-out",
    ]
    for path in posts:
        assert console.post(path, data={"token": COORDINATOR}).status_code == 403, path


# ---------------------------------------------------------------- the header, the worklist, the case


def test_the_header_shows_who_is_signed_in_their_role_and_site(console: TestClient) -> None:
    sign_in(console, CENTER)
    page = console.get("/worklist").text
    assert '<strong class="subject">Boston QTC cell lab</strong>' in page
    assert '<span class="subject-id">tc-boston-desk</span>' in page
    assert '<strong class="role">treatment_center</strong>' in page
    assert '<strong class="site">TC-BOSTON</strong>' in page
    assert '<html lang="en">' in page and "<main" in page and '<nav aria-label="Main">' in page


def test_the_worklist_shows_a_case_to_book_oldest_first_in_the_sites_zone(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    page = console.get("/worklist")
    assert page.status_code == 200
    assert rows(page.text) == [("to_book", BOSTON_COI, "TC-BOSTON"), ("at_risk", DENVER_COI, "TC-DENVER")]
    assert f'<a href="/cases/{BOSTON_COI}">' in page.text
    assert "2026-11-30 09:05 EST (America/New_York)" in page.text  # 14:05 UTC
    assert "2026-12-01 02:30 MST (America/Denver)" in page.text  # 09:30 UTC
    assert 'hx-get="/worklist/rows"' in page.text and 'hx-trigger="every 30s"' in page.text
    assert '<a href="/worklist">Reload</a>' in page.text
    assert console.get("/").text.count('class="work-item"') == 2


def test_the_worklist_filters_by_kind_and_site(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    assert rows(console.get("/worklist", params={"kind": "to_book"}).text) == [
        ("to_book", BOSTON_COI, "TC-BOSTON")
    ]
    assert rows(console.get("/worklist", params={"site": "TC-DENVER"}).text) == [
        ("at_risk", DENVER_COI, "TC-DENVER")
    ]
    assert rows(console.get("/worklist", params={"kind": "to_book", "site": "TC-DENVER"}).text) == []
    partial = console.get("/worklist/rows", params={"kind": "at_risk"})
    assert rows(partial.text) == [("at_risk", DENVER_COI, "TC-DENVER")]
    assert "<html" not in partial.text
    page = console.get("/worklist", params={"kind": "at_risk"}).text
    assert (
        'hx-get="/worklist/rows?kind=at_risk"' in page
        and '<a href="/worklist?kind=at_risk">Reload</a>' in page
    )


def test_a_treatment_center_sees_only_its_own_sites_rows(console: TestClient) -> None:
    sign_in(console, CENTER)
    assert rows(console.get("/worklist").text) == [("to_book", BOSTON_COI, "TC-BOSTON")]
    # Its site is not a filter it can change: asking for another's still shows only its own.
    assert rows(console.get("/worklist", params={"site": "TC-DENVER"}).text) == [
        ("to_book", BOSTON_COI, "TC-BOSTON")
    ]
    assert console.get(f"/cases/{DENVER_COI}").status_code == 404


def test_the_case_page_shows_the_case_with_times_in_the_sites_zone(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    page = console.get(f"/cases/{BOSTON_COI}")
    assert page.status_code == 200, page.text
    assert f'<span class="coi">{BOSTON_COI}</span>' in page.text
    assert "<dd>TC-BOSTON (times in America/New_York)</dd>" in page.text
    assert "<dd>2026-12-03 09:00 EST (America/New_York)</dd>" in page.text  # 14:00 UTC
    assert "Nothing recorded yet." in page.text  # no order or shipment in their services yet


def test_a_services_refusal_is_shown_in_words_with_the_correlation_id(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    answer = console.get(
        "/worklist", params={"kind": "bogus"}, headers={"X-Correlation-ID": "console-test-42"}
    )
    assert answer.status_code == 422
    assert "scheduling answered 422: The request is not valid." in answer.text
    assert "query /kind:" in answer.text
    assert '<code class="correlation-id">console-test-42</code>' in answer.text
    missing = console.get("/cases/CHW4321260000030", headers={"X-Correlation-ID": "console-test-43"})
    assert missing.status_code == 404
    assert "scheduling answered 404: Not Found." in missing.text
    assert '<code class="correlation-id">console-test-43</code>' in missing.text


def test_a_qa_reviewer_is_told_in_words_what_scheduling_refuses(console: TestClient) -> None:
    sign_in(console, QA)
    answer = console.get("/worklist")
    assert answer.status_code == 403
    assert "scheduling answered 403: Forbidden." in answer.text
    assert "role qa may not do this" in answer.text


# ---------------------------------------------------------------- configuration


def test_the_development_session_key_is_refused_outside_development_mode() -> None:
    with pytest.raises(SystemExit, match="CONSOLE_SESSION_KEY") as refused:
        ConsoleSettings(console_session_key=DEV_CONSOLE_SESSION_KEY, cgt_dev_mode=False)
    assert DEV_CONSOLE_SESSION_KEY not in str(refused.value)
    assert (
        ConsoleSettings(console_session_key=DEV_CONSOLE_SESSION_KEY, cgt_dev_mode=True).session_seconds
        == 28800
    )


def test_htmx_is_served_from_where_the_fetcher_puts_it(console: TestClient) -> None:
    assert console_app.HTMX_PATH == fetch_console_assets.HTMX_PATH
    answer = console.get("/static/htmx.min.js")
    assert answer.status_code == 200  # make install fetched it
    assert answer.headers["content-type"].startswith("text/javascript")
    assert npm_fetch.sha256_of(answer.content) == fetch_console_assets.HTMX_SHA256
    assert console.get("/static/console.css").status_code == 200
    assert json.loads(console.get("/health").text) == {"status": "ok", "service": "console"}
