"""deploy/: the Prometheus rules load and compute what they say (promtool, the real
tool), and the Grafana dashboard queries only what the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cds.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "cds-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "cds-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian: prometheus)")

# PromQL's own words: functions, aggregations, modifiers.
PROMQL = {
    "sum", "by", "without", "rate", "increase", "irate", "histogram_quantile", "time",
    "min", "max", "avg", "count", "or", "and", "unless", "on", "ignoring", "group_left",
    "group_right", "label_values", "topk", "bottomk", "offset", "bool", "vector", "scalar",
    "abs", "clamp_min", "clamp_max", "delta", "deriv", "avg_over_time", "max_over_time",
}  # fmt: skip


@needs_promtool
def test_promtool_accepts_the_rules():
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_the_rules_compute_the_rate_of_the_latest_feedback_and_alert_as_documented():
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULES.with_name("cds-rules.test.yml").name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULES.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_series() -> set[str]:
    """Every series name a scrape of the service can show (histograms' three, too)."""
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    # --workers N: the parent's own gauges and counters
    return names | {"cds_workers", "cds_worker_restarts_total"}


def recorded_series() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)", RULES.read_text(), re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    text = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", expr)  # (metric, label)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # label lists
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in PROMQL}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_the_dashboard_queries_only_metrics_the_service_exports_or_the_rules_record():
    known = exported_series() | recorded_series()
    exprs = dashboard_exprs()
    assert len(exprs) > 10
    unknown = {e: sorted(metric_names(e) - known) for e in exprs if metric_names(e) - known}
    assert not unknown, unknown


def test_the_rules_read_only_metrics_the_service_exports():
    text = re.sub(r"#.*", "", RULES.read_text())  # comments
    end = r"(?=\n\s*(?:for:|labels:|- record|- alert|- name|$))"
    exprs = re.findall(r"expr:\s*\|?\s*\n?((?:.|\n)*?)" + end, text)
    known = exported_series() | recorded_series()
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, "no expressions found"
    assert used <= known, sorted(used - known)


def test_a_misspelt_metric_would_be_caught():
    assert metric_names(
        'sum by (institution) (rate(cds_recognition_remindd_total{x="y"}[5m]))'
    ) == {"cds_recognition_remindd_total"}
