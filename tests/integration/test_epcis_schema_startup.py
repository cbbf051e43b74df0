"""COI tracking without its EPCIS schema refuses to start, saying why (it never runs answering 503), and
`make up` (deploy.stack up) stops before starting anything. Real processes, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy.stack import DEV_TOKENS_FILE, ROOT, epcis_schema_problem, free_port
from services.coi_tracking import epcis


def _env(tmp_path: Path, schema: Path) -> dict[str, str]:
    return {
        **os.environ,
        "EPCIS_SCHEMA_PATH": str(schema),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'tracking.db'}",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CGT_API_TOKENS_FILE": str(DEV_TOKENS_FILE),
    }


def test_the_service_refuses_to_start_without_its_schema_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-schema.json"
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--no-server-header",
            "--factory",
            "services.coi_tracking.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=_env(tmp_path, missing),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode != 0
    assert f"coi-tracking does not start: EPCIS_SCHEMA_PATH {missing} is not a file" in started.stderr
    assert "Uvicorn running" not in started.stderr + started.stdout
    assert not (tmp_path / "tracking.db").exists()


def test_make_up_says_so_and_stops_before_starting_anything(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-schema.json"
    assert (
        epcis_schema_problem({"EPCIS_SCHEMA_PATH": str(missing)})
        == f"EPCIS_SCHEMA_PATH {missing} is not a file"
    )
    assert epcis_schema_problem({}) is None  # the default: the checksum-checked file `make install` fetched
    up = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "up", "--kafka-port", str(free_port())],
        cwd=ROOT,
        env=_env(tmp_path, missing),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert up.returncode == 2, up.stdout + up.stderr
    assert f"make up: not starting: EPCIS_SCHEMA_PATH {missing} is not a file" in up.stderr
    assert "starting Apache Kafka" not in up.stdout


def test_the_default_schema_loads_for_the_service() -> None:
    assert epcis.service_validator().schema["$id"] == "https://gs1.github.io/EPCIS/EPCIS-JSON-Schema.json"
