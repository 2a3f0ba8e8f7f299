"""The supervision benchmarks at tiny scale, so they cannot rot unnoticed: the report
benchmark generates a log with the service's own writer, the report reads it and every
engine of the comparison computes the same core figures; the Check-path instruction
count's body runs the real checker. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_report_benchmark_prints_one_json_line_and_the_engines_agree():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.report_bench", "--lines", "3000", "--repeat", "1",
         "--compare"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=True,
    )  # fmt: skip
    (line,) = done.stdout.splitlines()
    result = json.loads(line)
    assert result["benchmark"] == "report"
    assert result["lines"] >= 3000 and set(result["records"]) == {"decision", "feedback", "counts"}
    assert result["report_lines_per_s"] > 0
    assert result["orjson_agrees"] is True
    assert result["duckdb_core_agrees"] is True
    assert result.get("polars_core_agrees", True) is True  # when Polars is installed
