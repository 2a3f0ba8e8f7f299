"""The benchmark harness, end to end at tiny scale, so it cannot rot unnoticed.

Runs ``python -m benchmarks.run --quick`` against the empty server (plus the engine
micro-benchmark when the engine is there) into a temporary directory, and checks that
every output was written and holds measurements. No timing is asserted: this proves
the harness works, the benchmark itself says how fast things are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.empty_server import canned_response
from benchmarks.h2load import mix_rps, parse
from cds.v1 import order_check_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_canned_response_is_a_check_response_of_the_requested_size():
    for size in (120, 402, 1000):
        payload = canned_response(size)
        assert len(payload) == size
        assert order_check_pb2.CheckResponse.FromString(payload).items


def test_h2load_output_is_parsed_and_families_combine_harmonically():
    out = (
        "finished in 5.00s, 3237.25 req/s, 1.91MB/s\n"
        "requests: 16187 total, 16187 started, 16187 done, 16180 succeeded, 7 failed, "
        "0 errored, 0 timeout\n"
        "time for request:      214us      3.10ms       301us        78us    93.61%\n"
    )
    r = parse(out)
    assert r["rps"] == 3237.25
    assert r["failed"] == 7
    assert r["request_time_mean"] == "301us"
    # half the mix at 1000/s and half at 3000/s: 1 / (0.5/1000 + 0.5/3000) = 1500/s
    assert mix_rps([("a", 0.5, 1000.0), ("b", 0.5, 3000.0)]) == pytest.approx(1500.0)


def test_quick_run_writes_results_table_and_plot(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--only",
            "empty,engine",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    emp = res["empty"]
    assert emp["python_closed"]["ok"] > 0
    assert emp["open"], "no open-loop points"
    for point in emp["open"]:
        assert point["count"] > 0
        assert point["p99_us"] >= point["p50_us"] > 0
        assert not point["errors"]
    if shutil.which("h2load"):
        assert emp["h2load"]["mix_rps"] > 0
        assert emp["h2load"]["http_failed"] == 0
    for key in ("cpu_model", "cores", "kernel", "python", "grpcio", "protobuf_backend"):
        assert res["machine"][key]
    if "engine" not in res["skipped"]:
        assert res["engine"]["cases"]["lab_3_items"]["median_us"] > 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| target | measured | goal | pass |" in md
    assert "python -m benchmarks.run --quick" in md
    png = (tmp_path / "latency_vs_rate.png").read_bytes()
    assert png.startswith(b"\x89PNG")
