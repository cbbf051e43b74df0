"""Keys rotated without downtime: order intake's PHI key ring and scheduling's webhook secret key ring list
the new key first and the old ones after it; the service reads every row meanwhile; the `rekey` command
(run as the operator runs it, a process) re-encrypts the rows under the new key, after which the old key
can go. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import Engine
from sqlmodel import select

from deploy.stack import ROOT
from services.common.service import COMMON_TABLES
from services.common.unit_of_work import session_factory
from services.order_intake import commands
from services.order_intake.models import PatientRecord
from services.scheduling import models as scheduling_models
from services.scheduling.models import FhirSubscription, WebhookEndpoint
from services.scheduling.webhook_commands import WebhookSettings, new_secret, signing_secrets
from services.scheduling.webhook_domain import FailurePolicy
from tests.support.infra import database
from tests.support.orders import ISSUER, a_new_order, order_database, place


@pytest.fixture(params=["sqlite", "postgresql"])
def orders_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with order_database(request.param, tmp_path) as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def scheduling_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path, [*COMMON_TABLES, *scheduling_models.TABLES]) as engine:
        yield engine


def rekey(module: str, engine: Engine, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": engine.url.render_as_string(hide_password=False), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ring(*keys: bytes) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def identities(engine: Engine) -> list[str]:
    with session_factory(engine)() as session:
        return [row.encrypted_identity for row in session.exec(select(PatientRecord)).all()]


def test_the_phi_key_is_rotated_while_the_service_reads_every_identity(orders_db: Engine) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    with_old = commands.Issuer(fin=ISSUER.fin, phi_keys=ring(old), patient_match_key=ISSUER.patient_match_key)
    for _ in range(3):
        place_with(orders_db, with_old)
    during = ring(new, old)  # the service restarted with the new key first
    place_with(orders_db, commands.Issuer(fin=ISSUER.fin, phi_keys=during, patient_match_key=b"m" * 32))
    assert all(during.decrypt(token.encode()) for token in identities(orders_db))  # all four readable
    with pytest.raises(InvalidToken):
        ring(new).decrypt(identities(orders_db)[0].encode())

    done = rekey(
        "services.order_intake.rekey",
        orders_db,
        PHI_ENCRYPTION_KEY=f"{new.decode()},{old.decode()}",
        PATIENT_MATCH_KEY="m" * 32,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"table": "patient_record", "rows_reencrypted": 4}
    after = identities(orders_db)
    assert len(after) == 4 and all(ring(new).decrypt(token.encode()) for token in after)  # the old key can go
    names = {json.loads(ring(new).decrypt(token.encode()))["name"] for token in after}
    assert names == {"Jane Doe"}


def test_rekey_stops_on_an_identity_under_none_of_the_listed_keys(orders_db: Engine) -> None:
    place(orders_db)  # under the suite's own key, which the ring below does not list
    refused = rekey(
        "services.order_intake.rekey",
        orders_db,
        PHI_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        PATIENT_MATCH_KEY="m" * 32,
    )
    assert refused.returncode == 2
    assert "patient_record.encrypted_identity: a value is encrypted under none of the configured keys" in (
        refused.stderr
    )


def place_with(engine: Engine, issuer: commands.Issuer) -> None:
    with session_factory(engine)() as session:
        commands.place_order(session, a_new_order(), commands.Caller(subject="coord"), issuer, "test")
        session.commit()


def webhook_settings(keys: MultiFernet) -> WebhookSettings:
    return WebhookSettings(
        allow_loopback=True,
        secret_overlap_hours=24,
        failure=FailurePolicy(max_attempts=3, disable_after_failures=3, backoff_base_seconds=1),
        secret_keys=keys,
    )


def test_webhook_secrets_are_rotated_to_a_new_key_and_plain_ones_from_before_are_encrypted(
    scheduling_db: Engine,
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    secret, stored = new_secret(webhook_settings(ring(old)))
    headers = ring(old).encrypt(b'[["Authorization", "Bearer fhir-subscriber"]]').decode()
    with session_factory(scheduling_db)() as session:
        endpoint = WebhookEndpoint(treatment_center_id="TC-A", url="https://a.example.org/h", secret=stored)
        session.add(endpoint)
        session.flush()
        session.add(
            FhirSubscription(
                endpoint_id=endpoint.id,
                treatment_center_id="TC-A",
                payload_content="id-only",
                headers=headers,
                reason="r",
                fhir_base="https://s.example.org/fhir",
            )
        )
        session.add(
            WebhookEndpoint(
                treatment_center_id="TC-B", url="https://b.example.org/h", secret="legacy-plain-secret"
            )
        )
        session.commit()

    done = rekey(
        "services.scheduling.rekey", scheduling_db, WEBHOOK_SECRET_KEY=f"{new.decode()},{old.decode()}"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["values_reencrypted"] == {
        "secret": 2,
        "previous_secret": 0,
        "fhir_subscription.headers": 1,
    }
    only_new = webhook_settings(ring(new))
    with session_factory(scheduling_db)() as session:
        rows = {row.treatment_center_id: row for row in session.exec(select(WebhookEndpoint)).all()}
        assert "legacy-plain-secret" not in {row.secret for row in rows.values()}
        assert signing_secrets(rows["TC-A"], only_new, rows["TC-A"].created_at) == [secret]
        assert signing_secrets(rows["TC-B"], only_new, rows["TC-B"].created_at) == ["legacy-plain-secret"]
        subscription = session.exec(select(FhirSubscription)).one()
        assert subscription.headers is not None and subscription.headers != headers
        assert json.loads(ring(new).decrypt(subscription.headers.encode())) == [
            ["Authorization", "Bearer fhir-subscriber"]
        ]
