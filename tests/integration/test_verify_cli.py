"""`python -m services.coi_tracking.verify`: without arguments it reads the SQLite database `make up` writes;
without that file it says so and exits 2, creating nothing. Real SQLite files, the real command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.stack import ROOT, sqlite_urls
from services.coi_tracking import verify
from services.coi_tracking.models import TABLES
from services.common.db import create_tables, make_engine
from services.common.development import DEV_LEDGER_SIGNING_KEYS, public_key_of
from services.common.service import COMMON_TABLES
from tests.support.shipments import planned_shipments


def _verify(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "services.coi_tracking.verify", *args],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _database_with_a_shipment(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    create_tables(engine, [*COMMON_TABLES, *TABLES])
    [shipment] = planned_shipments(engine, 1)
    engine.dispose()
    return f"ok      {shipment.id}  {shipment.coi}  0 entries"


def test_the_default_is_the_file_make_up_writes_for_coi_tracking(tmp_path: Path) -> None:
    assert verify.DEFAULT_DATABASE == ROOT / "var" / "db" / "coi_tracking.db"
    written = sqlite_urls(tmp_path)["coi-tracking"]
    assert written == f"sqlite:///{tmp_path / verify.DEFAULT_DATABASE.name}"


def test_without_arguments_and_without_the_database_it_says_so_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    absent = tmp_path / "var" / "db" / "coi_tracking.db"
    monkeypatch.setattr(verify, "DEFAULT_DATABASE", absent)
    assert verify.main([]) == 2
    captured = capsys.readouterr()
    assert f"verify: no COI tracking database at {absent}: start the stack with `make up`" in captured.err
    assert captured.out == "" and not absent.exists() and not absent.parent.exists()

    absent.parent.mkdir(parents=True)
    line = _database_with_a_shipment(absent)
    assert verify.main([]) == 0
    assert capsys.readouterr().out.splitlines() == [line]


def test_a_named_database_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    absent = tmp_path / "elsewhere.db"
    by_option = _verify("--database-url", f"sqlite:///{absent}")
    assert by_option.returncode == 2 and f"no COI tracking database at {absent}" in by_option.stderr
    assert "Traceback" not in by_option.stderr
    by_environment = _verify(DATABASE_URL=f"sqlite:///{absent}")
    assert by_environment.returncode == 2 and f"no COI tracking database at {absent}" in by_environment.stderr
    assert not absent.exists()


def test_a_database_with_a_shipment_verifies_ok(tmp_path: Path) -> None:
    path = tmp_path / "coi_tracking.db"
    line = _database_with_a_shipment(path)
    checked = _verify(DATABASE_URL=f"sqlite:///{path}")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [line]


def test_cli_env_gives_the_tools_the_broker_login_and_only_the_public_ledger_keys() -> None:
    """`python -m deploy.stack cli-env` (README: before `verify` against make up): `export` lines of the
    broker's KAFKA_* login and LEDGER_VERIFY_KEYS, the public halves of the keys COI tracking signs with."""
    broker = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "admin",
        "KAFKA_SASL_PASSWORD": "secret-of-the-test",
    }
    environ = {k: v for k, v in os.environ.items() if k != "LEDGER_SIGNING_KEYS"}
    printed = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "cli-env"],
        cwd=ROOT,
        env={**environ, **broker},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in printed.splitlines())
    assert {
        key: shlex.split(value)[0] for key, value in exported.items() if key.startswith("KAFKA_")
    } == broker
    verify_keys = json.loads(shlex.split(exported["LEDGER_VERIFY_KEYS"])[0])
    assert verify_keys == {key: public_key_of(seed) for key, seed in DEV_LEDGER_SIGNING_KEYS.items()}
    assert not any(seed in printed for seed in DEV_LEDGER_SIGNING_KEYS.values())
