"""benchmarks/replay_impact.py runs end to end at toy scale (outputs, never timings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.server import REPO_ROOT, server_env

pytestmark = pytest.mark.e2e


def test_the_replay_benchmark_prints_one_json_line_with_both_measurements():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.replay_impact", "--quick"],
        capture_output=True,
        text=True,
        env=server_env(),
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    out = json.loads(line)
    assert out["replay"]["orders"] == 2000
    assert out["replay_windows_only"]["orders"] == 2000
    checks = out["checks"]
    assert checks["failed_calls"] == 0
    assert checks["orders_replayed"] >= 2000
    assert {"p50_ms", "p99_ms", "max_ms"} <= set(checks["during_replay"])
