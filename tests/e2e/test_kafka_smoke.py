"""aiokafka against the Kafka version we run (its own CI stops at Kafka 2.8): admin create with every
per-topic error checked, idempotent produce, a group with manual commits, and a broker restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_aiokafka_works_against_the_broker_across_a_restart() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "kafka" / "smoke.py")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "group resumed at its committed offsets" in result.stdout and result.stdout.strip().endswith(
        "smoke: OK"
    )
