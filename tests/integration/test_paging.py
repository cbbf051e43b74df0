"""Cursor paging of the lists, over HTTP in process, on SQLite and PostgreSQL (no broker): a list of 517
orders walked by its `Link: rel="next"` cursor shows every order exactly once, rows added while walking
included; `limit` is bounded (1..500, 422 beyond); a bad cursor is 422 naming `cursor`, never echoing it;
a site-scoped caller's pages hold only its site's orders."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import select

from services.common.unit_of_work import session_factory
from services.order_intake.models import Order
from services.order_intake.seed import DEMO_SITE, UNCERTIFIED_SITE
from tests.support.orders import order_database, order_intake_client, start_afresh

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR = {"Authorization": "Bearer dev-coordinator-token"}
CENTER = {"Authorization": "Bearer dev-center-token"}  # scoped to TC-BOSTON (DEMO_SITE)
LINK = re.compile(r'^<([^>]+)>; rel="next"$')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with order_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        yield engine


@pytest.fixture
def engine(database: Engine) -> Engine:
    return start_afresh(database)


@pytest.fixture(scope="module")
def client(database: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Order intake's app on the test's database, never started (no broker)."""
    with order_intake_client(database, tmp_path_factory.mktemp("import")) as test_client:
        yield test_client


def insert_orders(engine: Engine, sites: list[str], start: datetime) -> list[uuid.UUID]:
    """Orders inserted directly (the listing is what is tested), their ids in list order: by creation, ties
    (several share an instant) by id."""
    orders = [
        Order(
            patient_ref=f"PSN-{n:04d}",
            therapy_code="WASKYRA",
            treatment_center_id=site,
            prescriber_npi="1234567893",
            ordered_on=date(2026, 12, 1),
            created_by="coord-test",
            created_at=start + timedelta(seconds=n // 3),
        )
        for n, site in enumerate(sites)
    ]
    with session_factory(engine)() as session:
        session.add_all(orders)
        session.commit()
        listed = sorted(orders, key=lambda order: (order.created_at, order.id))
        return [order.id for order in listed]


def walk(
    client: TestClient, headers: dict[str, str], params: dict[str, Any], path: str = "/orders"
) -> Iterator[list[dict[str, Any]]]:
    """Every page of `path`, following `Link: rel="next"` to the end (bounded: no endless loop)."""
    answer = client.get(path, params=params, headers=headers)
    for _ in range(1000):
        assert answer.status_code == 200, answer.text
        yield answer.json()
        link = answer.headers.get("link")
        if link is None:
            return
        match = LINK.match(link)
        assert match, link
        answer = client.get(match.group(1), headers=headers)
    raise AssertionError("the cursor never reached the last page")


def test_the_517th_order_is_reached_by_walking_the_cursor(engine: Engine, client: TestClient) -> None:
    ids = insert_orders(engine, [DEMO_SITE] * 517, datetime(2026, 12, 1, tzinfo=UTC))
    pages = list(walk(client, COORDINATOR, {}))
    assert [len(page) for page in pages] == [100] * 5 + [17]  # the default page is 100
    assert [uuid.UUID(order["id"]) for page in pages for order in page] == ids  # oldest first, each once
    biggest = list(walk(client, COORDINATOR, {"limit": 500}))
    assert [len(page) for page in biggest] == [500, 17]


def test_rows_added_while_walking_are_seen_once_and_none_skipped(engine: Engine, client: TestClient) -> None:
    first = insert_orders(engine, [DEMO_SITE] * 30, datetime(2026, 12, 1, tzinfo=UTC))
    seen: list[uuid.UUID] = []
    added: list[uuid.UUID] = []
    for n, page in enumerate(walk(client, COORDINATOR, {"limit": 7})):
        seen += [uuid.UUID(order["id"]) for order in page]
        if n < 3:  # newer orders arrive while the caller pages
            added += insert_orders(engine, [DEMO_SITE] * 2, datetime(2026, 12, 2, n, tzinfo=UTC))
    assert seen == first + added


def test_filters_and_the_callers_site_hold_on_every_page(engine: Engine, client: TestClient) -> None:
    sites = [DEMO_SITE if n % 3 else UNCERTIFIED_SITE for n in range(60)]
    ids = insert_orders(engine, sites, datetime(2026, 12, 1, tzinfo=UTC))
    with session_factory(engine)() as session:
        site_of = {order.id: order.treatment_center_id for order in session.exec(select(Order))}
    boston = [i for i in ids if site_of[i] == DEMO_SITE]
    denver = [i for i in ids if site_of[i] == UNCERTIFIED_SITE]
    own = [o for page in walk(client, CENTER, {"limit": 6}) for o in page]
    assert [uuid.UUID(o["id"]) for o in own] == boston
    filtered = [
        o
        for page in walk(client, COORDINATOR, {"limit": 4, "treatment_center_id": UNCERTIFIED_SITE})
        for o in page
    ]
    assert [uuid.UUID(o["id"]) for o in filtered] == denver
    # Another site's filter under the Boston desk's token: no orders, on any page.
    assert list(walk(client, CENTER, {"limit": 4, "treatment_center_id": UNCERTIFIED_SITE})) == [[]]


@pytest.mark.parametrize("limit", ["0", "501", "-1", "many"])
def test_a_limit_out_of_bounds_is_422_naming_it(engine: Engine, client: TestClient, limit: str) -> None:
    answer = client.get("/orders", params={"limit": limit}, headers=COORDINATOR)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert [e["pointer"] for e in answer.json()["errors"]] == ["/limit"]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "eyJ4IjoxfQ",
        "WyIyMDI2LTEyLTAxVDAwOjAwOjAwIiwibm9wZSJd",
        "WyIyMDI2LTEyLTAxIl0",
        "x" * 300,
    ],
)
def test_a_tampered_cursor_is_422_naming_it_never_echoing_it(
    engine: Engine, client: TestClient, cursor: str
) -> None:
    answer = client.get("/orders", params={"cursor": cursor}, headers=COORDINATOR)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert [e["pointer"] for e in answer.json()["errors"]] == ["/cursor"]
    assert cursor not in answer.text


@pytest.mark.parametrize("path", ["/therapies", "/treatment-centers", "/prescribers"])
def test_the_registries_are_paged_by_their_key(engine: Engine, client: TestClient, path: str) -> None:
    whole = client.get(path, params={"limit": "500"}, headers=COORDINATOR)
    assert whole.status_code == 200 and "link" not in whole.headers
    pages = list(walk(client, COORDINATOR, {"limit": "1"}, path))
    assert [row for page in pages for row in page] == whole.json() and len(pages) == len(whole.json()) >= 1
    assert client.get(path, params={"cursor": "WyJ4IiwieSJd"}, headers=COORDINATOR).status_code == 422
