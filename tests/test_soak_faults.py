"""The soak and the fault run (``benchmarks/soak.py``, ``benchmarks/faults.py``) stay
runnable: their arguments, the flag filter that keeps them working on a tree without a
newer ``cds serve`` flag, their reports, and one very short real fault run. The runs
themselves take minutes and are not part of ``make test`` (``make soak``, ``make faults``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import faults, soak
from benchmarks.run import QUICK, Env
from benchmarks.steady import Calls, supported

ROOT = Path(__file__).resolve().parent.parent


def env_with(flags: set[str], tmp_path: Path) -> Env:
    env = Env(QUICK, tmp_path, tmp_path, None, None)
    env.serve_flags = flags
    return env


def test_flags_the_served_tree_lacks_are_left_out_with_their_values(tmp_path):
    env = env_with({"--results", "--workers"}, tmp_path)
    kept, dropped = supported(
        env, ["--results", "redis://x", "--drain-seconds", "1", "--workers", "2", "--insecure"]
    )
    assert kept == ["--results", "redis://x", "--workers", "2"]
    assert dropped == ["--drain-seconds", "--insecure"]


def test_calls_are_cut_by_due_time_and_answers_by_arrival(tmp_path):
    calls = Calls(
        ok_due=np.array([0.5, 1.5, 2.5]),
        latency_ms=np.array([1.0, 2.0, 600.0]),
        err_due=np.array([1.2]),
        err_codes=["UNAVAILABLE"],
        marked=np.array([False, True, False]),
    )
    mid = calls.between(1.0, 3.0)
    assert (mid["ok"], mid["errors"], mid["marked"]) == (2, {"UNAVAILABLE": 1}, 1)
    assert calls.answered_in(3.0, 4.0) == (1, 0)  # due at 2.5, answered at 3.1


def test_soak_refuses_workers_without_redis():
    with pytest.raises(SystemExit):
        soak.main(["--workers", "2"])


def test_soak_report_and_plot_show_the_drift_between_first_and_last_window(tmp_path):
    window = {"p50_ms": 1.0, "p99_ms": 3.0, "p999_ms": 5.0, "max_ms": 9.0, "failed": 0,
              "errors": {}, "late": 0, "threads": 12, "fds": 20, "server_non_ok": {},
              "server_cpu_us_per_call": 300.0, "decision_log_bytes": 2**20, "ok": 6000,
              "feed": {"calls": 10, "codes": {"OK": 10}}}  # fmt: skip
    windows = [
        window | {"from_s": 0.0, "to_s": 60.0, "achieved_rps": 100.0, "rss_mib": 200.0},
        window | {"from_s": 60.0, "to_s": 120.0, "achieved_rps": 100.0, "rss_mib": 230.0},
    ]
    res = {
        "command": "python -m benchmarks.soak",
        "started_at": "now",
        "machine": {"cpu_model": "cpu", "cores": 2, "loadavg_start": ["0"], "loadavg_end": ["0"]},
        "args": {
            "store": "memory",
            "seconds": 120.0,
            "rate": 100.0,
            "timeout": 2.0,
            "feed_rate": 200.0,
        },
        "outputs": {"json": "soak.json", "png": "soak.png", "md": "SOAK.md"},
        "windows": windows,
        "verdict": soak.verdict(windows),
        "bins": [w | {"ok": 1000} for w in windows],
        "samples": [
            {"t_s": 0.0, "rss_mib": 200.0, "threads": 12, "fds": 20},
            {"t_s": 120.0, "rss_mib": 230.0, "threads": 12, "fds": 20},
        ],
    }
    text = soak.markdown(res)
    assert "RSS 200 → 230 MiB (+30 MiB)" in text
    assert "| 60–120 | 100 | 1.00 | 3.00 | 5.00 | 9.00 | 0 |" in text  # a row per window
    soak.plot(res, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000


def test_the_fault_run_lists_its_scenarios_and_refuses_unknown_ones(capsys):
    assert faults.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(faults.SCENARIOS)
    with pytest.raises(SystemExit):
        faults.main(["--only", "meteor-strike"])


def test_a_quick_sigterm_run_reports_what_the_clients_of_the_bare_server_saw(tmp_path):
    """One real, very short scenario end to end (the bare grpc.aio server, ~7 s): load,
    a SIGTERM at a known instant, the calls cut into phases, the table written."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.faults", "--quick", "--only", "sigterm-bare",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "faults.json").read_text())
    (run,) = res["scenarios"]["sigterm-bare"]["runs"]
    assert run["exit_code"] == 0
    assert run["phases"]["before"]["ok"] > 0 and run["phases"]["before"]["failed"] == 0
    assert run["phases"]["after exit"]["ok"] == 0  # nothing answers once it is gone
    assert "| sigterm-bare |" in (tmp_path / "FAULTS.md").read_text()
