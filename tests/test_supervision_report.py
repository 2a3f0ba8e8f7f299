"""`cds report` over hand-written decision-log records: what each figure counts.

The records are written the way the service writes them (docs/supervision.md); the
end-to-end scenario through a real server is tests/test_e2e_supervision.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cds.catalog.load import load_catalog
from cds.supervision.inputs import InputError, log_files
from cds.supervision.report import Period, build_report
from tests.support.server import TEST_CATALOG, cds_command, server_env

REMINDED = "RECOGNIZABLE_RESULT_EXISTS"


def decision(
    decision_id: str,
    *items: dict[str, Any],
    at: str = "2026-03-10T02:00:00.000000Z",
    institution: str = "H1",
    clinician: str = "c1",
) -> dict[str, Any]:
    return {
        "schema": "cds.audit/v1",
        "type": "decision",
        "decision_id": decision_id,
        "timestamp": at,
        "catalog_version": "test-1",
        "institution_id": institution,
        "department_id": "D1",
        "encounter_type": "OUTPATIENT",
        "decision": "WARN",
        "items": list(items),
        "degraded": [],
        "key_id": "k1",
        "patient": "p",
        "clinician": clinician,
    }


def line(line_id: str, code: str, *reasons: str, silent: tuple[str, ...] = (), **gene: Any):
    entry: dict[str, Any] = {
        "line_id": line_id,
        "item_code": code,
        "decision": "WARN",
        "reasons": [{"code": r, "decision": "WARN", "prior_result_ids": []} for r in reasons]
        + [{"code": r, "decision": "WARN", "prior_result_ids": [], "silent": True} for r in silent],
    }
    if gene:
        entry |= {"gene_test": True, "sendout_lab_id": "", "price_item_code": ""} | gene
    return entry


def feedback(
    decision_id: str,
    line_id: str,
    outcome: str,
    code: str = "",
    at: str = "2026-03-10T02:01:00.000000Z",
    reasons: tuple[str, ...] = (REMINDED,),
    institution: str = "H1",
    item: str = "K",
) -> dict[str, Any]:
    return {
        "schema": "cds.audit/v1",
        "type": "feedback",
        "decision_id": decision_id,
        "line_id": line_id,
        "timestamp": at,
        "catalog_version": "test-1",
        "institution_id": institution,
        "department_id": "D1",
        "item_code": item,
        "reason_codes": list(reasons),
        "prior_result_ids": [],
        "outcome": outcome,
        "override_code": code,
        "comment": "",
        "key_id": "k1",
        "patient": "p",
        "clinician": "c1",
    }


def counts(start: str, rows: list[tuple[Any, ...]], orders: dict[Any, int]) -> dict[str, Any]:
    return {
        "schema": "cds.audit/v1",
        "type": "counts",
        "timestamp": start,
        "from": start,
        "to": start,
        "lines": [
            {"institution_id": i, "department_id": d, "item_code": c, "decision": x, "n": n}
            for i, d, c, x, n in rows
        ],
        "orders": [{"institution_id": i, "n": n} for i, n in orders.items()],
        "folded": {"lines": sum(r[4] for r in rows if None in r), "orders": orders.get(None, 0)},
    }


def write(path: Path, *records: dict[str, Any], tail: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return path


def report_of(*paths: Path, **kw: Any) -> dict[str, Any]:
    return build_report(log_files(paths), threads=1, **kw)


def test_the_latest_feedback_of_a_line_counts_wherever_it_was_written(tmp_path):
    write(
        tmp_path / "logs" / "decisions.w0.jsonl",
        decision("d1", line("1", "K", REMINDED), line("2", "HBA1C", REMINDED)),
        feedback("d1", "1", "OVERRIDDEN", "OTHER", at="2026-03-10T02:01:00.000000Z"),
    )
    write(  # the other worker took the change of mind, and the second line's only answer
        tmp_path / "logs" / "decisions.w1.jsonl",
        feedback("d1", "1", "ACCEPTED", at="2026-03-10T02:05:00.000000Z"),
        feedback("d1", "2", "OVERRIDDEN", "RAPID_CHANGE", item="HBA1C"),
    )
    r = report_of(tmp_path / "logs")["recognition"]
    assert (r["reminded"], r["accepted"], r["overridden"], r["no_feedback"]) == (2, 1, 1, 0)
    assert r["rate"] == 0.5
    assert r["override_reasons"] == {"RAPID_CHANGE": 1}
    assert r["by_item"]["K"]["accepted"] == 1 and r["by_item"]["HBA1C"]["overridden"] == 1


def test_a_reminder_without_feedback_is_not_a_recognition(tmp_path):
    path = write(tmp_path / "d.jsonl", decision("d1", line("1", "K", REMINDED)))
    r = report_of(path)["recognition"]
    assert (r["reminded"], r["accepted"], r["no_feedback"], r["rate"]) == (1, 0, 1, 0.0)


def test_nothing_reminded_gives_no_rate(tmp_path):
    path = write(tmp_path / "d.jsonl", decision("d1", line("1", "EGFR", "CONSENT_REQUIRED")))
    assert report_of(path)["recognition"]["rate"] is None


def test_a_feedback_whose_decision_record_was_dropped_still_counts_its_reminder(tmp_path):
    path = write(tmp_path / "d.jsonl", feedback("lost", "1", "ACCEPTED", institution="H2"))
    r = report_of(path)["recognition"]
    assert (r["reminded"], r["accepted"]) == (1, 1)
    assert r["by_institution"]["H2"]["accepted"] == 1


def test_a_reminder_before_the_period_is_not_counted_in_it_by_its_late_feedback(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        decision("d1", line("1", "K", REMINDED), at="2026-02-28T15:59:00.000000Z"),
        feedback("d1", "1", "ACCEPTED", at="2026-02-28T16:01:00.000000Z"),  # 03-01 00:01 local
    )
    march = report_of(path, period=Period("2026-03-01", "2026-03-31"))["recognition"]
    assert march["reminded"] == 0
    february = report_of(path, period=Period("2026-02-01", "2026-02-28"))["recognition"]
    assert (february["reminded"], february["accepted"]) == (1, 1)


def test_days_are_calendar_days_in_the_catalogues_time_zone(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        decision("late", line("1", "K", REMINDED), at="2026-03-10T15:59:59.999999Z"),
        decision("next", line("1", "K", REMINDED), at="2026-03-10T16:00:00.000000Z"),
    )
    r = report_of(path, catalog=load_catalog(TEST_CATALOG))  # Asia/Shanghai, UTC+8
    assert list(r["recognition"]["by_day"]) == ["2026-03-10", "2026-03-11"]
    assert r["period"] == {"from": "2026-03-10", "to": "2026-03-11"}


def test_institutions_narrow_every_figure(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        decision("d1", line("1", "K", REMINDED), institution="H1"),
        decision("d2", line("1", "K", REMINDED), institution="H2"),
        counts(
            "2026-03-10T02:00:00.000000Z",
            [("H1", "D1", "K", "WARN", 3), ("H2", "D1", "K", "WARN", 5)],
            {"H1": 2, "H2": 4},
        ),
    )
    r = report_of(path, institutions=["H2"])
    assert r["recognition"]["reminded"] == 1
    assert (r["checks"]["orders"], r["checks"]["lines"]) == (4, 5)
    assert list(r["recognition"]["by_institution"]) == ["H2"]


def test_checks_come_from_counts_records_with_folded_keys_as_other(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        counts(
            "2026-03-10T02:00:00.000000Z",
            [("H1", "D1", "K", "ALLOW", 7), ("H1", None, None, "WARN", 2)],
            {"H1": 5, None: 1},
        ),
        counts("2026-03-11T02:00:00.000000Z", [("H1", "D1", "K", "ALLOW", 1)], {"H1": 1}),
    )
    c = report_of(path)["checks"]
    assert (c["orders"], c["lines"]) == (7, 10)
    assert c["by_institution"] == {
        "H1": {"orders": 6, "lines": 10},
        "other": {"orders": 1, "lines": 0},
    }
    assert c["by_item"] == {"K": 8, "other": 2}
    assert c["lines_by_decision"] == {"ALLOW": 8, "WARN": 2}
    assert c["by_day"] == {
        "2026-03-10": {"orders": 6, "lines": 9},
        "2026-03-11": {"orders": 1, "lines": 1},
    }
    assert c["folded"] == {"lines": 2, "orders": 1}


def test_gene_test_lines_send_outs_and_a_concentrated_clinician(tmp_path):
    records = [
        decision(f"a{i}", line("1", "EGFR", sendout_lab_id="LAB1"), clinician="loyal")
        for i in range(9)
    ]
    records.append(decision("a9", line("1", "EGFR", sendout_lab_id="LAB2"), clinician="loyal"))
    records += [
        decision(f"b{i}", line("1", "EGFR", sendout_lab_id=lab), clinician="spread")
        for i, lab in enumerate(["LAB1", "LAB2"] * 6)
    ]
    unpriced = line("1", "NTRK", "GENE_TEST_NOT_PRICED", "CONSENT_REQUIRED", sendout_lab_id="")
    records.append(decision("c", unpriced))
    path = write(tmp_path / "d.jsonl", *records)
    g = report_of(path, concentration_min=10, concentration_share=0.9)["gene_tests"]
    assert g["lines"] == 23
    assert g["sendouts"] == {"LAB1": 15, "LAB2": 7}
    assert g["by_reason"] == {"CONSENT_REQUIRED": 1, "GENE_TEST_NOT_PRICED": 1}
    assert g["concentration"] == [
        {
            "clinician": "loyal",
            "key_id": "k1",
            "lab": "LAB1",
            "sendouts": 10,
            "to_lab": 9,
            "share": 0.9,
        }
    ]
    # "loyal" has too few at 11; "spread" has 12, but half to each lab
    assert report_of(path, concentration_min=11)["gene_tests"]["concentration"] == []


def test_silent_reasons_are_counted_apart_and_never_as_reminders(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        decision("d1", line("1", "K", silent=(REMINDED,))),
        decision(
            "d2", line("1", "EGFR", "CONSENT_REQUIRED", silent=("MDT_REQUIRED",), sendout_lab_id="")
        ),
        feedback("d1", "1", "ACCEPTED"),
    )
    r = report_of(path)
    assert r["silent"] == {REMINDED: 1, "MDT_REQUIRED": 1}
    assert r["recognition"]["reminded"] == 0  # the feedback's line was never a shown reminder
    assert r["gene_tests"]["by_reason"] == {"CONSENT_REQUIRED": 1}


def test_emergency_exemptions_are_counted_by_institution(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        decision("d1", line("1", "K", "RECOGNITION_EXEMPT_EMERGENCY"), institution="H3"),
    )
    r = report_of(path)["recognition"]
    assert r["exempt_emergency"] == 1
    assert r["by_institution"]["H3"]["exempt_emergency"] == 1
    assert r["reminded"] == 0


def test_savings_sum_the_catalogue_price_of_accepted_reminders(tmp_path):
    catalog = json.loads(TEST_CATALOG.read_text())
    catalog["recognition_items"][0]["price_fen"] = 1500  # K
    (tmp_path / "cat.json").write_text(json.dumps(catalog))
    path = write(
        tmp_path / "d.jsonl",
        decision("d1", line("1", "K", REMINDED), line("2", "HBA1C", REMINDED)),
        feedback("d1", "1", "ACCEPTED"),
        feedback("d1", "2", "ACCEPTED", item="HBA1C"),
    )
    r = report_of(path, catalog=load_catalog(tmp_path / "cat.json"))["recognition"]
    assert (r["savings_fen"], r["accepted_unpriced"]) == (1500, 1)


def test_a_torn_line_is_skipped_and_counted_and_rotated_files_are_read(tmp_path):
    logs = tmp_path / "logs"
    write(logs / "decisions.jsonl.1", decision("d1", line("1", "K", REMINDED)))
    write(
        logs / "decisions.jsonl",
        feedback("d1", "1", "ACCEPTED"),
        tail=b'{"schema":"cds.audit/v1","type":"deci',
    )
    write(logs / "notes.txt", decision("ignored", line("1", "K", REMINDED)))
    r = report_of(logs)
    assert r["input"]["files"] == 2
    assert r["input"]["torn_lines"] == 1
    assert r["input"]["torn_by_file"] == {str(logs / "decisions.jsonl"): 1}
    assert (r["recognition"]["reminded"], r["recognition"]["accepted"]) == (1, 1)


def test_a_missing_input_or_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        log_files([tmp_path / "nope.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no decision-log files"):
        log_files([tmp_path / "empty"])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cds_command("report", *args), capture_output=True, text=True, env=server_env(), timeout=60
    )


def test_cds_report_exits_1_naming_an_unreadable_input(tmp_path):
    secret = tmp_path / "secret.jsonl"
    write(secret, decision("d1"))
    secret.chmod(0)
    done = run_cli(str(tmp_path / "missing.jsonl"))
    assert done.returncode == 1
    assert f"cds report: {tmp_path / 'missing.jsonl'}: no such file or directory" in done.stderr
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        done = run_cli(str(secret))
        assert done.returncode == 1 and "secret.jsonl" in done.stderr


def test_cds_report_refuses_bad_flags_with_usage_exit_2(tmp_path):
    path = write(tmp_path / "d.jsonl", decision("d1"))
    for args in (
        ["--from", "2026-02-30", str(path)],
        ["--from", "2026-03-02", "--to", "2026-03-01", str(path)],
        ["--concentration-share", "1.5", str(path)],
        ["--concentration-min", "0", str(path)],
        ["--format", "pdf", str(path)],
    ):
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)


def test_cds_report_writes_json_csv_and_html_and_says_what_it_skipped(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        decision("d1", line("1", "K", REMINDED)),
        feedback("d1", "1", "OVERRIDDEN", "OTHER"),
        tail=b"{torn",
    )
    done = run_cli("--catalog", str(TEST_CATALOG), str(path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["recognition"]["override_reasons"] == {"OTHER": 1}
    assert report["catalog"]["names"]["items"]["K"] == "血清钾"
    assert "skipped 1 torn or unreadable line(s)" in done.stderr
    out = tmp_path / "report.csv"
    assert run_cli("--format", "csv", "--out", str(out), str(path)).returncode == 0
    text = out.read_text(encoding="utf-8-sig")
    assert "override_reasons\noverride_code,display,lines\nOTHER,,1\n" in text
    html = tmp_path / "report.html"
    assert (
        run_cli(
            "--format", "html", "--out", str(html), "--catalog", str(TEST_CATALOG), str(path)
        ).returncode
        == 0
    )
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "其他情形（需说明）（OTHER）" in page  # the name, with its code kept
