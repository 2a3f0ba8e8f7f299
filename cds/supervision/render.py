"""The report as JSON (for the provincial platform) and as CSV tables (for a spreadsheet).

JSON keeps the contract's keys and adds the breakdowns; CSV writes one section per
table — a line with the table's name, its header, its rows, a blank line — so one
file opens in Excel or WPS with every table in it (UTF-8 with a byte-order mark when
written to a file, which those need to read Chinese names).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from cds.supervision.names import Names


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


Table = tuple[str, list[str], list[list[Any]]]


def tables(report: dict[str, Any], names: Names) -> Iterator[Table]:
    """Every table of the report: (name, header, rows)."""
    checks = report["checks"]
    recognition = report["recognition"]
    genes = report["gene_tests"]
    figures = ["reminded", "accepted", "overridden", "no_feedback", "rate"]

    def rated(key: str, rows: dict[str, dict[str, Any]], name: Any = None) -> list[list[Any]]:
        return [
            [k, *([name(k)] if name else []), *(_cell(v[f]) for f in figures)]
            for k, v in rows.items()
        ]

    yield (
        "summary",
        ["figure", "value"],
        [
            ["period_from", report["period"]["from"]],
            ["period_to", report["period"]["to"]],
            ["orders", checks["orders"]],
            ["lines", checks["lines"]],
            *[[f"recognition_{f}", _cell(recognition[f])] for f in figures],
            ["exempt_emergency", recognition["exempt_emergency"]],
            ["savings_fen", recognition["savings_fen"]],
            ["gene_test_lines", genes["lines"]],
            ["sendout_lines", sum(genes["sendouts"].values())],
            ["concentration_flags", len(genes["concentration"])],
            ["torn_lines", report["input"]["torn_lines"]],
        ],
    )
    yield (
        "checks_by_institution",
        ["institution_id", "name", "orders", "lines"],
        [
            [i, names.institution(i), v["orders"], v["lines"]]
            for i, v in checks["by_institution"].items()
        ],
    )
    yield (
        "checks_by_day",
        ["day", "orders", "lines"],
        [[d, v["orders"], v["lines"]] for d, v in checks["by_day"].items()],
    )
    yield (
        "recognition_by_institution",
        ["institution_id", "name", *figures, "exempt_emergency"],
        [
            [*row, recognition["by_institution"][row[0]].get("exempt_emergency", 0)]
            for row in rated("institution", recognition["by_institution"], names.institution)
        ],
    )
    yield (
        "recognition_by_item",
        ["item_code", "name", *figures],
        rated("item", recognition["by_item"], names.item),
    )
    yield (
        "recognition_by_department",
        ["institution_id", "department_id", *figures],
        [
            [i, d, *(_cell(v[f]) for f in figures)]
            for i, depts in recognition["by_department"].items()
            for d, v in depts.items()
        ],
    )
    yield ("recognition_by_day", ["day", *figures], rated("day", recognition["by_day"]))
    yield (
        "override_reasons",
        ["override_code", "display", "lines"],
        [[c, names.override(c), n] for c, n in recognition["override_reasons"].items()],
    )
    yield (
        "clinicians",
        ["clinician", "key_id", *figures],
        [
            [c["clinician"], c["key_id"], *(_cell(c[f]) for f in figures)]
            for c in recognition["clinicians"]
        ],
    )
    yield (
        "gene_tests_by_reason",
        ["reason_code", "lines"],
        [[c, n] for c, n in genes["by_reason"].items()],
    )
    yield (
        "sendouts_by_lab",
        ["lab_id", "name", "lines"],
        [[lab, names.lab(lab), n] for lab, n in genes["sendouts"].items()],
    )
    yield (
        "concentration",
        ["clinician", "key_id", "lab_id", "sendouts", "to_lab", "share"],
        [
            [f["clinician"], f["key_id"], f["lab"], f["sendouts"], f["to_lab"], _cell(f["share"])]
            for f in genes["concentration"]
        ],
    )
    yield (
        "silent",
        ["reason_code", "firings"],
        [[c, n] for c, n in report["silent"].items()],
    )


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    return value


def to_csv(report: dict[str, Any], names: Names) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name, header, rows in tables(report, names):
        writer.writerow([name])
        writer.writerow(header)
        writer.writerows(rows)
        writer.writerow([])
    return out.getvalue()
