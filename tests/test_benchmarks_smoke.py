"""The benchmark harness, end to end at tiny scale, so it cannot rot unnoticed.

Runs ``python -m benchmarks.run --quick`` once (engine, the bare and options-matched
empty servers, the service with the all-WARN class, both layouts, and the callgrind
per-call count when valgrind is there) into a temporary directory, and checks that
every output was written and holds measurements. No timing is asserted: this proves
the harness works, the benchmark itself says how fast things are.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.ab import commit_line
from benchmarks.empty_server import canned_response, stack_settings
from benchmarks.h2load import mix_rps, parse
from benchmarks.percall import fixed_calls, parse_callgrind
from benchmarks.run import capacity
from cds.v1 import order_check_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_canned_response_is_a_check_response_of_the_requested_size():
    for size in (120, 402, 1000, 1400):
        payload = canned_response(size)
        assert len(payload) == size
        assert order_check_pb2.CheckResponse.FromString(payload).items


def test_bare_stack_is_grpc_defaults_and_matched_finds_cds_options():
    bare = stack_settings("bare")
    assert bare["options"] == [] and bare["cap"] is None
    matched = stack_settings("matched")
    assert matched["cap"] and matched["cap"] > 0
    assert "server_options()" in matched["from"]


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


def test_needs_follow_from_the_stated_assumptions():
    hospital = report.NEEDS[0]
    # 12,000 visits x 2 + 3,000 beds x 90 % x 4 = 34,800 checks over 10 h, peak 4x
    assert hospital.checks_per_day == pytest.approx(34_800)
    assert hospital.peak_rps == pytest.approx(34_800 / 36_000 * 4)
    assert report.NEEDS[1].peak_rps > 50 * hospital.peak_rps


def test_callgrind_dump_is_parsed_into_self_inclusive_and_libraries(tmp_path):
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(
        "events: Ir\nsummary: 1000\n\n"
        "ob=(1) /usr/lib/libpython3.11.so.1.0\nfl=(1) ceval.c\nfn=(1) eval\n0 600\n"
        "cob=(2) /usr/lib/libc.so.6\ncfi=(2) malloc.c\ncfn=(2) malloc\ncalls=3 0\n0 400\n"
        "ob=(2)\nfl=(2)\nfn=(2)\n0 400\n"
    )
    p = parse_callgrind(dump)
    assert p["total_ir"] == 1000
    assert p["self"][("/usr/lib/libpython3.11.so.1.0", "eval")] == 600
    assert p["inclusive"][("/usr/lib/libpython3.11.so.1.0", "eval")] == 1000
    assert p["by_library"]["libc"] == 400
    assert p["by_library"]["interpreter (libpython)"] == 600


def test_commit_line_reads_like_the_issue_asks():
    summary = {
        "before": {"h2load_all_warn_rps": 3610.0},
        "after": {"h2load_all_warn_rps": 4020.0},
        "bare": {"h2load_all_warn_rps": 6850.0},
    }
    line = commit_line(summary, ["before", "after"], ["all_warn"], "unpinned")
    assert "all_warn 3,610 → 4,020 req/s (+11 %)" in line
    assert "bare empty 6,850 req/s" in line


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--only",
            "engine,empty,service,percall",
            "--note",
            "smoke test",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_measures_every_server_in_both_layouts(quick_run):
    _, res = quick_run
    assert set(res["layouts"]) == {"unpinned", "pinned"}
    for name, lay in res["layouts"].items():
        assert lay["pinned"] == (name == "pinned")
        for server in ("bare", "matched", "service"):
            assert lay["python_closed"][server]["ok"] > 0
            assert lay["open"][server], f"no open-loop points for {server} ({name})"
            for point in lay["open"][server]:
                # (no assertion on errors: on a busy machine a toy-scale point can
                # overload, and that is a timing, which this test never judges)
                assert point["count"] > 0
                assert point["p99_us"] >= point["p50_us"] > 0
            assert lay["half"][server]
        assert lay["warn_open"] and lay["warn_open"][0]["count"] > 0
        if shutil.which("h2load"):
            # Every round measures; a round other processes disturbed is left out of
            # the median, so on a busy machine the median may be None, and then only
            # because no round was clean (timings are never judged here).
            warn_rounds = [row["service"] for row in lay["h2load_rounds"]]
            assert all(h["rps"]["all_warn"] > 0 for h in warn_rounds)
            clean = [h for h in warn_rounds if h.get("valid", {}).get("all_warn", True)]
            median_warn = lay["h2load_median"]["service"]["all_warn"]
            assert (median_warn is None) == (not clean)
            assert median_warn is None or median_warn > 0
            assert lay["saturation_rps"]["bare"] > 0
            assert "all_warn" in lay["ratios_vs_bare"]["service"]
            for row in lay["h2load_rounds"]:
                assert row["service"]["grpc_not_ok"] == 0
                assert row["bare"]["http_failed"] == 0
                # what bounds throughput is measured for every server
                for server in ("bare", "service"):
                    assert row[server]["python_cpu_us_per_call"] > 0
    for key in ("cpu_model", "cores", "kernel", "python", "grpcio", "protobuf_backend"):
        assert res["machine"][key]
    assert res["engine"]["cases"]["lab_3_items"]["median_us"] > 0


def test_quick_run_checks_the_all_warn_class_answers_warn_and_is_logged(quick_run):
    _, res = quick_run
    wc = res["service"]["warn_check"]
    assert wc["sampled"] > 0
    assert wc["warn"] == wc["sampled"] == wc["logged"]
    assert wc["ok"]
    assert res["service"]["classes"]["all_warn"]["decision"] == "DECISION_WARN"


def test_quick_run_counts_instructions_per_call(quick_run):
    _, res = quick_run
    if not shutil.which("valgrind"):
        assert "percall" in res["skipped"]
        return
    pc = res["percall"]["subjects"]
    for server in ("bare", "service"):
        for cls in ("mix", "all_warn"):
            c = pc[server]["classes"][cls]
            assert c["ir_per_call"] > 0
            assert c["by_library"]
            assert not c["client"]["errors"]


def test_quick_run_writes_verdict_tables_and_plot(quick_run):
    out, _ = quick_run
    md = (out / "RESULTS.md").read_text()
    assert md.startswith("# cds benchmark results\n\n> **smoke test**")
    for heading in (
        "## Verdict",
        "## Targets",
        "## Throughput per order class, unpinned",
        "## Throughput per order class, pinned",
        "## Latency, unpinned",
        "## Latency, pinned",
    ):
        assert heading in md
    assert "python -m benchmarks.run --quick" in md
    assert "all-WARN" in md
    png = (out / "latency_vs_rate.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_capacity_falls_back_to_disturbed_rounds_rather_than_none():
    # A busy machine disturbs every round: the half-rate points must still be measured.
    assert capacity([3000.0, 3200.0, 3100.0], [3000.0, 9.0, 3200.0, 3100.0]) == (3100.0, False)
    assert capacity([], [2800.0, None, 3000.0]) == (2900.0, True)
    assert capacity([], [None, 0.0]) == (0.0, False)


def test_gil_figures_weigh_the_mix_and_say_how_busy_the_python_threads_were():
    def family(name: str, share: float, rps: float, us: float) -> dict[str, object]:
        return {"family": name, "share": share, "rps": rps, "valid": True,
                "python_cpu_us_per_call": us}  # fmt: skip

    def server(us_a: float, us_b: float, us_warn: float) -> dict[str, object]:
        fams = [family("a", 0.5, 1e6 / us_a, us_a), family("b", 0.5, 1e6 / us_b, us_b),
                family("all_warn", 0.0, 0.9e6 / us_warn, us_warn)]  # fmt: skip
        return {"families": fams, "mix_valid": True,
                "python_cpu_us_per_call": 0.5 * us_a + 0.5 * us_b}  # fmt: skip

    lay = {"h2load_rounds": [{"bare": server(100, 200, 150), "service": server(300, 500, 600)}]}
    bare = report.gil_figures(lay, "bare")
    assert bare == {"mix_us": 150, "busy": 1.0, "all_warn_us": 150}
    text = " ".join(report.gil_lines(lay))
    assert "bare 150 µs per call against the service's 400 µs on the mix (0.38×)" in text
    assert "all-WARN 150 µs against 600 µs (0.25×)" in text
    assert "kept 1.00 (bare) and 1.00 (service) cores busy" in text
    assert report.gil_lines({"h2load_rounds": [{"bare": {}, "service": {}}]}) == []


def test_the_gap_to_the_throughput_goals_is_stated_in_instructions_per_check():
    def subject(mix: float, warn: float) -> dict[str, object]:
        return {"classes": {"mix": {"ir_per_call": mix}, "all_warn": {"ir_per_call": warn}}}

    res = {"percall": {"subjects": {"bare": subject(425_000, 450_000),
                                    "service": subject(800_000, 500_000)}}}  # fmt: skip
    text = " ".join(report.gap_lines(res))
    # 0.85x of the mix: 425,000 / 0.85 = 500,000 allowed; 0.75x all-WARN: 600,000.
    assert "the mix: 800,000 instructions per Check against the bare server's 425,000" in text
    assert "0.85× needs at most 500,000, 300,000 over" in text
    assert "0.75× needs at most 600,000, 100,000 under, so within reach" in text
    assert "PERF-NOTES.md" in text
    assert report.gap_lines({}) == []
    assert report.gap_lines({"percall": {"subjects": {"bare": subject(1, 1)}}}) == []


class _SlowCall:
    """A Check stub taking 5 ms per call: fixed_calls' loop, not gRPC, is under test."""

    def future(self, body: bytes, timeout: float) -> concurrent.futures.Future[bytes]:
        time.sleep(0.005)
        done: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        done.set_result(body)
        return done


def test_fixed_calls_sends_every_call_unless_a_time_bound_stops_it_first():
    assert fixed_calls(_SlowCall(), [b"a", b"b"], 20, 4)["calls"] == 20
    bounded = fixed_calls(_SlowCall(), [b"a"], 100_000, 4, max_seconds=0.2)
    assert 0 < bounded["calls"] < 1_000 and bounded["calls"] % 4 == 0
    assert bounded["wall_s"] < 2.0


def test_reload_parts_times_each_part_of_a_small_reload():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.reload_parts", "--entries", "50", "--repeat", "1"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    parts = json.loads(out.stdout)
    for key in ("parse_ms", "engine_ms", "diff_ms", "footprint_ms", "loop_longest_wait_ms"):
        assert parts[key] > 0, key
    shipped = json.loads((ROOT / "catalog" / "catalog.json").read_text(encoding="utf-8"))
    originals = len(shipped["recognition_items"]) + len(shipped["gene_tests"])
    assert parts["footprint_codes"] == 50 - originals  # the added entries, and only them
