"""``cds report``'s speed: lines per second over a generated, realistic decision log.

The log is made by the service's own record writer (``cds.decisions.log``) from a
seeded simulation of a large hospital — several institutions and departments,
recognition reminders with feedback (about a third accepted, some changed later), a
few emergency exemptions, gene-test orders with send-outs (some clinicians sending
almost everything to one lab), and a ``counts`` record per worker and minute — so
record sizes and the mix of types are what a real file holds.

The report (``cds.supervision``, on DuckDB) is measured end to end: files in, the
whole report dict out, one thread, CPU seconds. With ``--compare`` the core of the
same report (checks, recognition by institution with the latest feedback per line,
gene-test lines by reason, send-outs by lab) is also computed by hand over orjson,
in DuckDB SQL alone and in Polars (when installed; one thread each): the comparison
in docs/supervision.md that chose the engine. Every engine's figures are checked
against the report's.

``python -m benchmarks.report_bench [--lines N] [--seed S] [--compare]`` prints one
JSON line; ``main()`` is what a benchmark runner calls.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOW_US = 1_780_000_000_000_000  # 2026-05-28
MINUTE_US = 60_000_000


def generate(path: Path, lines: int, seed: int = 1) -> dict[str, int]:
    """Write about ``lines`` records to ``path``; returns how many of each type."""
    from cds.decisions.log import CountsEntry, DecisionEntry, DecisionLog
    from cds.domain import (
        Decision,
        EncounterType,
        Evaluation,
        FeedbackOutcome,
        ItemCategory,
        ItemDecision,
        Order,
        OrderItem,
        PriorResult,
        Reason,
    )
    from cds.security.pseudonyms import Pseudonymizer

    rng = random.Random(seed)
    log = DecisionLog(path, Pseudonymizer([("bench", bytes(32))]))
    institutions = [f"H{i}" for i in range(8)]
    departments = [f"D{i:02d}" for i in range(40)]
    labs = [f"LAB-{c}" for c in "ABCDEFGH"]
    items = [f"ITEM-{i:03d}" for i in range(120)]
    genes = [f"GENE-{i}" for i in range(12)]
    clinicians = [f"DOC-{i:04d}" for i in range(600)]
    overrides = ["CONDITION_CHANGED", "RAPID_CHANGE", "MAJOR_PROCEDURE", "EMERGENCY", "OTHER"]
    gene_reasons = [
        "GENE_TEST_INDICATION_MISMATCH",
        "CONSENT_REQUIRED",
        "SENDOUT_LAB_NOT_APPROVED",
        "PRICE_ITEM_MISMATCH",
    ]
    made = {"decision": 0, "feedback": 0, "counts": 0}
    at = NOW_US - 30 * 86_400_000_000
    minute_end = at + MINUTE_US
    counts: dict[Any, Any] = {}
    n_id = 0
    out = open(path, "wb")  # noqa: SIM115 - closed below
    written = 0
    while written < lines:
        at += rng.randrange(50_000, 400_000)
        if at >= minute_end:
            entry = CountsEntry(minute_end - MINUTE_US, minute_end, counts)
            out.write(log._counts_line(entry))
            made["counts"] += 1
            written += 1
            counts = {}
            minute_end += MINUTE_US
        institution = rng.choice(institutions)
        department = rng.choice(departments)
        clinician = rng.choice(clinicians)
        n_id += 1
        decision_id = f"bench-{n_id}"
        n_lines = rng.randint(1, 6)
        order_items = []
        decided = []
        for k in range(n_lines):
            line_id = str(k + 1)
            roll = rng.random()
            if roll < 0.08:  # a gene test; its clinician's favourite lab most of the time
                code = rng.choice(genes)
                lab = labs[int(clinician[4:]) % len(labs)] if rng.random() < 0.7 else ""
                if lab and rng.random() < 0.3:
                    lab = rng.choice(labs)
                order_items.append(OrderItem(line_id, code, ItemCategory.GENE_TEST, "", lab, True))
                reasons = tuple(
                    Reason(r, Decision.BLOCK, "m") for r in gene_reasons if rng.random() < 0.1
                )
                decision = max((r.decision for r in reasons), default=Decision.ALLOW)
            else:
                code = rng.choice(items)
                order_items.append(OrderItem(line_id, code, ItemCategory.LAB, "", "", False))
                reasons = ()
                if rng.random() < 0.12:
                    prior = PriorResult("R", institution, code, at - 86_400_000_000, at)
                    exempt = rng.random() < 0.05
                    reasons = (
                        Reason(
                            "RECOGNITION_EXEMPT_EMERGENCY"
                            if exempt
                            else "RECOGNIZABLE_RESULT_EXISTS",
                            Decision.ALLOW if exempt else Decision.WARN,
                            "m",
                            (prior,),
                        ),
                    )
                decision = max((r.decision for r in reasons), default=Decision.ALLOW)
            decided.append(ItemDecision(line_id, code, decision, reasons))
            rows = counts.setdefault(institution, [0, {}])[1].setdefault(department, {})
            rows.setdefault(code, [0, 0, 0, 0, 0])[decision] += 1
        counts.setdefault(institution, [0, {}])[0] += 1
        evaluation = Evaluation(max(d.decision for d in decided), tuple(decided))
        shown = any(d.reasons for d in decided) or any(
            i.category == ItemCategory.GENE_TEST for i in order_items
        )
        if not shown:
            continue
        order = Order(
            "r",
            institution,
            department,
            clinician,
            EncounterType.OUTPATIENT,
            f"PAT-{rng.randrange(200_000)}",
            (),
            False,
            "",
            tuple(order_items),
            at,
        )
        entry = DecisionEntry(decision_id, order, evaluation, "v1", (), at, frozenset(genes))
        out.write(log._decision_line(entry))
        made["decision"] += 1
        written += 1
        for d in decided:
            if not d.reasons or d.reasons[0].code != "RECOGNIZABLE_RESULT_EXISTS":
                continue
            for _ in range(2 if rng.random() < 0.1 else 1):  # sometimes a change of mind
                roll = rng.random()
                if roll < 0.25:
                    continue  # no feedback
                accepted = roll < 0.6
                out.write(
                    _feedback_line(
                        log,
                        decision_id,
                        d,
                        FeedbackOutcome.ACCEPTED if accepted else FeedbackOutcome.OVERRIDDEN,
                        "" if accepted else rng.choice(overrides),
                        order,
                        at + rng.randrange(1_000_000, 60_000_000),
                    )
                )
                made["feedback"] += 1
                written += 1
    out.close()
    return made


def _feedback_line(
    log: Any, decision_id: str, line: Any, outcome: Any, code: str, order: Any, at: int
) -> bytes:
    from cds.decisions.log import SCHEMA, _Feedback

    fields = {
        "schema": SCHEMA,
        "type": "feedback",
        "decision_id": decision_id,
        "line_id": line.line_id,
        "timestamp": at,
        "catalog_version": "v1",
        "institution_id": order.institution_id,
        "department_id": order.department_id,
        "item_code": line.item_code,
        "reason_codes": [r.code for r in line.reasons],
        "prior_result_ids": ["R"],
        "outcome": outcome.name,
        "override_code": code,
        "comment": "复查" if code == "OTHER" else "",
    }
    return bytes(
        log._feedback_line(_Feedback(fields, order.clinician_id, order.patient_id, None, None))
    )


# -- the engines ---------------------------------------------------------------------------


def cds_report(path: Path) -> dict[str, Any]:
    """The whole report, as ``cds report`` makes it (DuckDB), held to one thread."""
    from cds.supervision.inputs import log_files
    from cds.supervision.report import build_report

    return _core_of(build_report(log_files([path]), threads=1))


def orjson_engine(path: Path) -> dict[str, Any]:
    """The core figures by hand: orjson per line, dicts, one pass (the alternative)."""
    import orjson

    from cds.supervision.inputs import lines as read_lines

    orders = lines = gene_lines = 0
    gene_by_reason: dict[str, int] = {}
    sendouts: dict[str, int] = {}
    reminded: dict[tuple[str, str], str] = {}
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    for raw in read_lines(path):
        try:
            r = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        kind = r.get("type")
        if kind == "decision":
            institution = r["institution_id"]
            for it in r["items"]:
                gene = it.get("gene_test", False)
                for reason in it["reasons"]:
                    if reason.get("silent"):
                        continue
                    code = reason["code"]
                    if code == "RECOGNIZABLE_RESULT_EXISTS":
                        reminded[(r["decision_id"], it["line_id"])] = institution
                    if gene:
                        gene_by_reason[code] = gene_by_reason.get(code, 0) + 1
                if gene:
                    gene_lines += 1
                    lab = it.get("sendout_lab_id", "")
                    if lab:
                        sendouts[lab] = sendouts.get(lab, 0) + 1
        elif kind == "feedback":
            if "RECOGNIZABLE_RESULT_EXISTS" in r["reason_codes"]:
                key = (r["decision_id"], r["line_id"])
                known = latest.get(key)
                if known is None or known[0] <= r["timestamp"]:
                    latest[key] = (r["timestamp"], r["outcome"])
        elif kind == "counts":
            for row in r["lines"]:
                lines += row["n"]
            for row in r["orders"]:
                orders += row["n"]
    accepted: dict[str, int] = {}
    n_accepted = n_overridden = 0
    for key, institution in reminded.items():
        outcome = latest.get(key, ("", ""))[1]
        if outcome == "ACCEPTED":
            n_accepted += 1
            accepted[institution] = accepted.get(institution, 0) + 1
        elif outcome == "OVERRIDDEN":
            n_overridden += 1
    return {
        "orders": orders,
        "lines": lines,
        "reminded": len(reminded),
        "accepted": n_accepted,
        "overridden": n_overridden,
        "accepted_by_institution": dict(sorted(accepted.items())),
        "gene_lines": gene_lines,
        "gene_by_reason": dict(sorted(gene_by_reason.items())),
        "sendouts": dict(sorted(sendouts.items())),
    }


def _core_of(report: dict[str, Any]) -> dict[str, Any]:
    r = report["recognition"]
    return {
        "orders": report["checks"]["orders"],
        "lines": report["checks"]["lines"],
        "reminded": r["reminded"],
        "accepted": r["accepted"],
        "overridden": r["overridden"],
        "accepted_by_institution": {
            i: f["accepted"] for i, f in r["by_institution"].items() if f["reminded"]
        },
        "gene_lines": report["gene_tests"]["lines"],
        "gene_by_reason": dict(sorted(report["gene_tests"]["by_reason"].items())),
        "sendouts": dict(sorted(report["gene_tests"]["sendouts"].items())),
    }


def duckdb_engine(path: Path) -> dict[str, Any]:
    """The core figures in DuckDB SQL alone (the report's engine without the rest)."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    columns = {
        "type": "VARCHAR",
        "decision_id": "VARCHAR",
        "line_id": "VARCHAR",
        "timestamp": "VARCHAR",
        "institution_id": "VARCHAR",
        "outcome": "VARCHAR",
        "reason_codes": "VARCHAR[]",
        "items": "STRUCT(line_id VARCHAR, item_code VARCHAR, gene_test BOOLEAN, "
        "sendout_lab_id VARCHAR, reasons STRUCT(code VARCHAR, silent BOOLEAN)[])[]",
        "lines": "STRUCT(institution_id VARCHAR, n BIGINT)[]",
        "orders": "STRUCT(institution_id VARCHAR, n BIGINT)[]",
    }
    con.execute(
        "CREATE TABLE log AS SELECT * FROM read_json(?, format='newline_delimited', "
        "columns=?, ignore_errors=true)",
        [str(path), columns],
    )
    q = con.execute
    orders, lines = q(
        "SELECT sum(o.n), (SELECT sum(l.n) FROM (SELECT unnest(lines, recursive:=true) "
        "FROM log WHERE type='counts') l) FROM (SELECT unnest(orders, recursive:=true) "
        "FROM log WHERE type='counts') o"
    ).fetchone()
    q(
        "CREATE TABLE lines_ AS SELECT decision_id, institution_id, "
        "unnest(items, recursive:=true) FROM log WHERE type='decision'"
    )
    q(
        "CREATE TABLE reminded AS SELECT decision_id, line_id, institution_id FROM lines_ "
        "WHERE list_contains(list_transform(list_filter(reasons, lambda r: NOT coalesce(r.silent, "
        "false)), lambda r: r.code), 'RECOGNIZABLE_RESULT_EXISTS')"
    )
    q(
        "CREATE TABLE latest AS SELECT decision_id, line_id, arg_max(outcome, timestamp) "
        "AS outcome FROM log WHERE type='feedback' AND list_contains(reason_codes, "
        "'RECOGNIZABLE_RESULT_EXISTS') GROUP BY ALL"
    )
    by_inst = q(
        "SELECT r.institution_id, count(*) FILTER (WHERE l.outcome='ACCEPTED'), "
        "count(*) FILTER (WHERE l.outcome='OVERRIDDEN'), count(*) FROM reminded r "
        "LEFT JOIN latest l USING (decision_id, line_id) GROUP BY ALL"
    ).fetchall()
    gene_lines = q("SELECT count(*) FROM lines_ WHERE gene_test").fetchone()[0]
    by_reason = q(
        "SELECT code, count(*) FROM (SELECT unnest(reasons, recursive:=true) FROM lines_ "
        "WHERE gene_test) GROUP BY ALL"
    ).fetchall()
    sendouts = q(
        "SELECT sendout_lab_id, count(*) FROM lines_ WHERE gene_test AND sendout_lab_id <> '' "
        "GROUP BY ALL"
    ).fetchall()
    return {
        "orders": int(orders or 0),
        "lines": int(lines or 0),
        "reminded": sum(r[3] for r in by_inst),
        "accepted": sum(r[1] for r in by_inst),
        "overridden": sum(r[2] for r in by_inst),
        "accepted_by_institution": dict(sorted((r[0], r[1]) for r in by_inst)),
        "gene_lines": gene_lines,
        "gene_by_reason": dict(sorted(by_reason)),
        "sendouts": dict(sorted(sendouts)),
    }


def polars_engine(path: Path) -> dict[str, Any]:
    """The core figures in Polars (the other candidate engine)."""
    import polars as pl

    reason = pl.Struct({"code": pl.String, "silent": pl.Boolean})
    schema = {
        "type": pl.String,
        "decision_id": pl.String,
        "line_id": pl.String,
        "timestamp": pl.String,
        "institution_id": pl.String,
        "outcome": pl.String,
        "reason_codes": pl.List(pl.String),
        "items": pl.List(
            pl.Struct(
                {
                    "line_id": pl.String,
                    "item_code": pl.String,
                    "gene_test": pl.Boolean,
                    "sendout_lab_id": pl.String,
                    "reasons": pl.List(reason),
                }
            )
        ),
        "lines": pl.List(pl.Struct({"institution_id": pl.String, "n": pl.Int64})),
        "orders": pl.List(pl.Struct({"institution_id": pl.String, "n": pl.Int64})),
    }
    log = pl.scan_ndjson(path, schema=schema, ignore_errors=True).collect()
    counts = log.filter(pl.col("type") == "counts")
    orders = counts.select(pl.col("orders").explode().struct.field("n")).sum().item()
    lines = counts.select(pl.col("lines").explode().struct.field("n")).sum().item()
    decided = (
        log.filter(pl.col("type") == "decision")
        .select("decision_id", "institution_id", "items")
        .explode("items")
        .unnest("items")
    )
    codes = pl.col("reasons").list.eval(
        pl.when(pl.element().struct.field("silent").fill_null(False).not_())
        .then(pl.element().struct.field("code"))
        .drop_nulls()
    )
    reminded = decided.filter(codes.list.contains("RECOGNIZABLE_RESULT_EXISTS")).select(
        "decision_id", "line_id", "institution_id"
    )
    latest = (
        log.filter(
            (pl.col("type") == "feedback")
            & pl.col("reason_codes").list.contains("RECOGNIZABLE_RESULT_EXISTS")
        )
        .sort("timestamp")
        .group_by("decision_id", "line_id")
        .agg(pl.col("outcome").last())
    )
    joined = reminded.join(latest, on=["decision_id", "line_id"], how="left")
    by_inst = joined.group_by("institution_id").agg(
        (pl.col("outcome") == "ACCEPTED").sum().alias("accepted"),
        (pl.col("outcome") == "OVERRIDDEN").sum().alias("overridden"),
        pl.len().alias("reminded"),
    )
    genes = decided.filter(pl.col("gene_test").fill_null(False))
    by_reason = (
        genes.select(pl.col("reasons").explode().struct.field("code"))
        .drop_nulls()
        .group_by("code")
        .len()
    )
    sendouts = genes.filter(pl.col("sendout_lab_id") != "").group_by("sendout_lab_id").len()
    return {
        "orders": int(orders or 0),
        "lines": int(lines or 0),
        "reminded": int(by_inst["reminded"].sum()),
        "accepted": int(by_inst["accepted"].sum()),
        "overridden": int(by_inst["overridden"].sum()),
        "accepted_by_institution": dict(
            sorted(zip(by_inst["institution_id"], by_inst["accepted"], strict=True))
        ),
        "gene_lines": genes.height,
        "gene_by_reason": dict(sorted(zip(by_reason["code"], by_reason["len"], strict=True))),
        "sendouts": dict(sorted(zip(sendouts["sendout_lab_id"], sendouts["len"], strict=True))),
    }


def _timed(engine: Callable[[Path], dict[str, Any]], path: Path, repeat: int) -> tuple[float, Any]:
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        # CPU time, not wall time: one core's work, whatever else shares the machine.
        start = time.process_time()
        result = engine(path)
        best = min(best, time.process_time() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="also DuckDB and Polars")
    args = parser.parse_args(argv)
    os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core, like ours
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decisions.jsonl"
        made = generate(path, args.lines, args.seed)
        lines = sum(made.values())
        size = path.stat().st_size
        results: dict[str, Any] = {
            "benchmark": "report",
            "lines": lines,
            "bytes": size,
            "records": made,
        }
        seconds, reference = _timed(cds_report, path, args.repeat)
        results["report_lines_per_s"] = round(lines / seconds)
        results["report_mb_per_s"] = round(size / seconds / 1e6, 1)
        if args.compare:
            engines = (
                ("orjson", orjson_engine),
                ("duckdb_core", duckdb_engine),
                ("polars_core", polars_engine),
            )
            for name, engine in engines:
                try:
                    seconds, figures = _timed(engine, path, args.repeat)
                except ImportError:
                    results[f"{name}_lines_per_s"] = None
                    continue
                results[f"{name}_lines_per_s"] = round(lines / seconds)
                results[f"{name}_mb_per_s"] = round(size / seconds / 1e6, 1)
                results[f"{name}_agrees"] = figures == reference
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
