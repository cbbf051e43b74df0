"""The console's Sites page against the real scheduling app in process: each site's next four weeks as a
calendar, booked / capacity per day, closed days (weekends, blackouts) said in words; a coordinator sees
every site scheduling knows (its `GET /sites`); the treatment center's view: test_console_center.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from services.common.unit_of_work import session_factory
from services.scheduling.models import Appointment
from tests.support.console import (
    COORDINATOR,
    QA,
    ServiceApps,
    add_cases,
    console_client,
    put_site,
    service_apps,
    sign_in,
)

BOSTON_COI, DENVER_COI = "CHW4321260000014", "CHW43212600000M*"


def next_monday(after: date) -> date:
    return after + timedelta(days=7 - after.weekday())


TODAY = datetime.now(UTC).astimezone(ZoneInfo("America/New_York")).date()
BOOKED = next_monday(TODAY) + timedelta(days=1)  # a Tuesday in the second week
BLACKOUT = BOOKED + timedelta(days=1)  # the Wednesday after


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceApps]:
    with service_apps(tmp_path_factory.mktemp("console-sites")) as apps:
        scheduling = apps.client("scheduling")
        put_site(scheduling, "TC-BOSTON", blackout_dates=[BLACKOUT.isoformat()])
        put_site(scheduling, "TC-DENVER", timezone="America/Denver")
        add_cases(
            apps.engines["scheduling"], (("TC-BOSTON", BOSTON_COI), ("TC-DENVER", DENVER_COI)), eta_at=None
        )
        with session_factory(apps.engines["scheduling"])() as session:
            session.add(
                Appointment(
                    coi=BOSTON_COI,
                    treatment_center_id="TC-BOSTON",
                    conditioning_start_on=BOOKED - timedelta(days=4),
                    infusion_on=BOOKED,
                )
            )
            session.commit()
        yield apps


@pytest.fixture
def console(services: ServiceApps) -> Iterator[TestClient]:
    with console_client(services) as client:
        yield client


def cell(page: str, day: date) -> str:
    found = re.search(rf'<td class="day [a-z_]+" data-day="{day.isoformat()}">.*?</td>', page, re.S)
    assert found is not None, (day, page)
    return re.sub(r"\s+", " ", found.group(0))


def site_ids(page: str) -> list[str]:
    return re.findall(r'<section class="site" id="site-([A-Z-]+)"', page)


def test_the_calendar_marks_a_booked_day_a_blackout_and_weekends_in_words(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    page = console.get("/sites")
    assert page.status_code == 200, page.text
    assert site_ids(page.text) == ["TC-BOSTON", "TC-DENVER"]
    boston = page.text.split('id="site-TC-DENVER"')[0]
    assert (
        f"Days in America/New_York, {TODAY.isoformat()} to {(TODAY + timedelta(days=27)).isoformat()}."
        in boston
    )
    assert cell(boston, BOOKED) == (
        f'<td class="day open" data-day="{BOOKED.isoformat()}"> <span class="date">{BOOKED.day} '
        f'{BOOKED:%b}</span> <span class="state">Open: 1 free</span> <span class="load">Infusions 1/2</span> '
        '<span class="beds">Beds 1/4</span> </td>'
    )
    assert '<span class="state">Closed: blackout</span>' in cell(boston, BLACKOUT)
    assert "Infusions" not in cell(boston, BLACKOUT)
    saturday = next_monday(TODAY) + timedelta(days=5)
    assert '<span class="state">Closed: weekend</span>' in cell(boston, saturday)
    assert '<span class="beds">Beds 0/4</span>' in cell(boston, saturday)  # beds stay taken at weekends
    assert boston.count('<td class="day ') == 28 + boston.count("Outside the four weeks")
    assert '<th scope="col">Monday</th>' in boston and '<th scope="row">' in boston
    denver = page.text.split('id="site-TC-DENVER"')[1]
    assert "Days in America/Denver" in denver and "Closed: blackout" not in denver


def test_coordinators_and_qa_see_the_qa_link(console: TestClient) -> None:
    sign_in(console, COORDINATOR)
    assert '<a href="/qa">QA</a>' in console.get("/sites").text
    sign_in(console, QA)
    page = console.get("/sites")
    assert '<a href="/qa">QA</a>' in page.text
    # QA reads the calendars' zones but not the availability: scheduling's refusal, in words, per site.
    assert page.text.count("scheduling answered 403: Forbidden.") == 2
