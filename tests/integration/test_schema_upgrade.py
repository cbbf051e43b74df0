"""A database made by an older version gets the columns the models added and its strings widened to the
models' lengths when the service starts (`create_tables`): a webhook endpoint table whose `url` was 2,000
characters wide and whose secrets were 128 takes a 2,048-character URL and an encrypted secret."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from deploy.stack import create_postgres_databases, drop_postgres_databases
from services.coi_tracking import api as tracking_api
from services.coi_tracking.models import CaptureJob
from services.common.db import create_tables, make_engine
from services.common.unit_of_work import session_factory
from services.scheduling.models import TABLES, Site, TherapyProtocol, WebhookEndpoint
from services.scheduling.runtime import seed
from services.scheduling.webhook_domain import MAX_URL_LENGTH

OLDER_TABLE = """CREATE TABLE webhook_endpoint (
    id UUID PRIMARY KEY, treatment_center_id VARCHAR(64) NOT NULL, url VARCHAR(2000) NOT NULL,
    secret VARCHAR(128) NOT NULL, active BOOLEAN NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL)"""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_older_webhook_table_is_widened_and_completed(kind: str, tmp_path: Path) -> None:
    urls = (
        {"test": f"sqlite:///{tmp_path / 'old.db'}"}
        if kind == "sqlite"
        else create_postgres_databases(["test"])
    )
    engine = make_engine(urls["test"])
    try:
        with engine.begin() as connection:
            connection.execute(text(OLDER_TABLE))
        table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
        create_tables(engine, [table])
        columns = {column["name"]: column["type"] for column in inspect(engine).get_columns(table.name)}
        assert {"previous_secret", "deleted_at", "updated_at"} <= set(columns)  # the nullable columns added
        if kind == "postgresql":
            widths = (getattr(columns["url"], "length", None), getattr(columns["secret"], "length", None))
            assert widths == (MAX_URL_LENGTH, 256)
        with engine.begin() as connection:
            connection.execute(
                table.insert().values(
                    id=uuid.uuid4(),
                    treatment_center_id="TC-A",
                    url="https://a.example.org/" + "a" * (MAX_URL_LENGTH - 22),
                    secret="gAAAAA" + "x" * 200,
                    active=True,
                    created_at=datetime.now(UTC),
                )
            )
    finally:
        engine.dispose()
        if kind == "postgresql":
            drop_postgres_databases(urls)


OLDER_SCHEDULING = (
    """CREATE TABLE site (id VARCHAR(64) PRIMARY KEY, timezone VARCHAR(64) NOT NULL,
    infusions_per_day INTEGER NOT NULL, admissions_capacity INTEGER NOT NULL,
    working_weekdays VARCHAR(20) NOT NULL, blackout_dates TEXT NOT NULL, booking_version INTEGER NOT NULL)""",
    """CREATE TABLE therapy_protocol (code VARCHAR(64) PRIMARY KEY, conditioning_days INTEGER NOT NULL,
    receipt_buffer_hours FLOAT NOT NULL)""",
)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_scheduling_database_from_before_plans_is_planned_after_the_seed(kind: str, tmp_path: Path) -> None:
    """The site's collection center and the protocol's manufacturing figures are added to the tables as
    they were, and the seed fills them in for the demo site and therapy."""
    urls = (
        {"test": f"sqlite:///{tmp_path / 'old.db'}"}
        if kind == "sqlite"
        else create_postgres_databases(["test"])
    )
    engine = make_engine(urls["test"])
    try:
        with engine.begin() as connection:
            for statement in OLDER_SCHEDULING:
                connection.execute(text(statement))
            connection.execute(
                text("INSERT INTO site VALUES ('TC-BOSTON', 'America/New_York', 2, 4, '1,2,3,4,5', '', 0)")
            )
            connection.execute(text("INSERT INTO therapy_protocol VALUES ('WASKYRA', 4, 24.0)"))
        create_tables(engine, TABLES)
        seed(engine)
        with session_factory(engine)() as session:
            boston = session.get(Site, "TC-BOSTON")
            protocol = session.get(TherapyProtocol, "WASKYRA")
            assert boston is not None and boston.collection_center_id == "TC-BOSTON"
            assert protocol is not None and protocol.manufacturing_days == 45
            assert protocol.conditioning_days == 4  # what was there is kept
    finally:
        engine.dispose()
        if kind == "postgresql":
            drop_postgres_databases(urls)


OLDER_CAPTURE = """CREATE TABLE epcis_capture (id UUID PRIMARY KEY, captured_by VARCHAR(64) NOT NULL,
    received_at TIMESTAMP WITH TIME ZONE NOT NULL, status VARCHAR(16) NOT NULL, result TEXT NOT NULL)"""
OLDER_RESULT = {
    "capture_error_behaviour": "proceed",
    "errors": [],
    "events": [
        {
            "event_index": 0,
            "event_id": "urn:uuid:5f0c6e1a-2b3d-4c5e-8f9a-0b1c2d3e4f5a",
            "outcome": "refused",
            "reason": "names no shipment",
            "shipment_id": None,
            "scan": None,
        }
    ],
}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_capture_job_from_before_finished_at_reads_in_the_bindings_shape(kind: str, tmp_path: Path) -> None:
    """`finished_at` is added to the capture table; a job kept before reads with `finishedAt` its
    `createdAt` (it was applied as it was made) and its refused events as `errors`."""
    urls = (
        {"test": f"sqlite:///{tmp_path / 'old.db'}"}
        if kind == "sqlite"
        else create_postgres_databases(["test"])
    )
    engine = make_engine(urls["test"])
    job_id = uuid.uuid4()
    created = datetime(2026, 12, 2, 15, 5, 1, tzinfo=UTC)
    try:
        with engine.begin() as connection:
            connection.execute(text(OLDER_CAPTURE))
        table = CaptureJob.__table__  # type: ignore[attr-defined]
        create_tables(engine, [table])
        assert "finished_at" in {c["name"] for c in inspect(engine).get_columns(table.name)}
        with engine.begin() as connection:
            connection.execute(
                table.insert().values(
                    id=job_id,
                    captured_by="courier-ben",
                    received_at=created,
                    status="failed",
                    result=json.dumps(OLDER_RESULT),
                )
            )
        with session_factory(engine)() as session:
            job = session.get(CaptureJob, job_id)
            assert job is not None
            view = tracking_api._job_view(job).model_dump(mode="json", by_alias=True)
        assert (view["createdAt"], view["finishedAt"]) == ("2026-12-02T15:05:01Z", "2026-12-02T15:05:01Z")
        assert (view["success"], view["captureErrorBehaviour"]) == (False, "proceed")
        assert view["errors"] == [
            {
                "type": "urn:cgt:problem:epcis-event-refused",
                "title": "An EPCIS event was refused",
                "status": 422,
                "detail": "names no shipment",
                "eventIndex": 0,
                "eventID": "urn:uuid:5f0c6e1a-2b3d-4c5e-8f9a-0b1c2d3e4f5a",
            }
        ]
    finally:
        engine.dispose()
        if kind == "postgresql":
            drop_postgres_databases(urls)
