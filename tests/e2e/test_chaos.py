"""The fault suite's smaller form (`make chaos` runs the large one): concurrent journeys through the
three services on PostgreSQL while faults are injected; nothing may be lost or doubled."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_journeys_survive_killed_services_broker_database_duplicates_and_poison() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.chaos",
            "--small",
            "--journeys",
            "16",
            "--cluster-journeys",
            "8",
            "--concurrency",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    figures = dict(re.findall(r"(\w+)=(\d+)", summary))
    assert summary.endswith(
        f"journeys=24 faults={figures['faults']} lost=0 duplicated=0 dead_lettered={figures['dead_lettered']}"
    )
    assert int(figures["faults"]) == 8 and int(figures["malformed_not_dead_lettered"]) == 0
    assert int(figures["dead_lettered"]) >= 10  # 6 malformed messages, once per consuming group (10 copies)
    for fault in (
        "broker SIGKILLed",
        "coi-tracking SIGKILLed",
        "database unreachable",
        "delivered a second time",
        "one of three brokers",
    ):
        assert fault in result.stdout
