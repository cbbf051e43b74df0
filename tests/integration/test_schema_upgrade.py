"""A database made by an older version gets the columns the models added and its strings widened to the
models' lengths when the service starts (`create_tables`): a webhook endpoint table whose `url` was 2,000
characters wide and whose secrets were 128 takes a 2,048-character URL and an encrypted secret."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from deploy.stack import create_postgres_databases, drop_postgres_databases
from services.common.db import create_tables, make_engine
from services.scheduling.models import WebhookEndpoint
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
