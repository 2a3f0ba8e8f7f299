"""Supervision end to end: a known scenario through a real `cds serve --workers 2` (on a
real redis-server), then `cds report` over its decision logs reproduces every figure,
the HTML opens in a real headless Chromium without network and shows its charts, the
live metrics agree with the report, and nothing identifiable reaches the report.

The scenario: recognition reminders at two institutions with feedback of every
national reason, changes of mind (the latest counts), a retry, a reminder without
feedback; emergency exemptions; gene-test orders sent out by several clinicians (one
of them almost always to the same lab), blocked for price, consent and approval;
plain allowed orders. Checks and feedback go over two connections that reach
different workers, so feedback lands in the other worker's file; the logs rotate by
size; a torn line is appended afterwards, as a crash would leave it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cds.v1 import order_check_pb2, order_check_pb2_grpc, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.redis_server import redis_module_fixture  # noqa: F401
from tests.support.server import RunningServer, load_test_catalog, run_cds, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CHROMIUM = shutil.which("chromium")
ACCEPTED = types_pb2.FEEDBACK_OUTCOME_ACCEPTED
OVERRIDDEN = types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN
GENE = types_pb2.ITEM_CATEGORY_GENE_TEST
DECISION = {1: "ALLOW", 2: "WARN", 3: "BLOCK"}
PRICES = {"K": 1500, "HBA1C": 4200}
REMINDED = "RECOGNIZABLE_RESULT_EXISTS"
PATIENT_PREFIX = "PAT-SUP-"
CLINICIANS = ("DOC-SUP-A", "DOC-SUP-B", "DOC-SUP-C", "DOC-SUP-D")
GENE_DOCTORS = ("DOC-SUP-G1", "DOC-SUP-G2", "DOC-SUP-G3")


class Connection:
    """One TCP connection (so one worker) and the worker's id (the decision-id prefix)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.check = order_check_pb2_grpc.OrderCheckServiceStub(self.channel)
        self.worker = ""


@dataclass
class Scenario:
    """What was sent and answered: the expected figures are worked out from it."""

    orders: Counter[str] = field(default_factory=Counter)
    lines: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    reminders: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    latest: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    exempt: Counter[str] = field(default_factory=Counter)
    gene_lines: int = 0
    gene_reasons: Counter[str] = field(default_factory=Counter)
    sendouts: Counter[str] = field(default_factory=Counter)
    sendouts_by: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    decided_on: dict[str, str] = field(default_factory=dict)  # decision_id -> worker

    def checked(
        self,
        conn: Connection,
        request: order_check_pb2.CheckRequest,
        answer: order_check_pb2.CheckResponse,
    ) -> None:
        conn.worker = answer.decision_id.rpartition("-")[0]
        self.decided_on[answer.decision_id] = conn.worker
        inst = request.institution_id
        self.orders[inst] += 1
        for line, decided in zip(request.items, answer.items, strict=True):
            self.lines[
                (inst, request.department_id, line.item_code, DECISION[decided.decision])
            ] += 1
            codes = [r.code for r in decided.reasons]
            if REMINDED in codes:
                self.reminders[(answer.decision_id, line.line_id)] = {
                    "institution": inst,
                    "department": request.department_id,
                    "item": line.item_code,
                    "clinician": request.clinician_id,
                }
            if "RECOGNITION_EXEMPT_EMERGENCY" in codes:
                self.exempt[inst] += 1
            if line.category == GENE or line.item_code in ("EGFR", "NTRK"):
                self.gene_lines += 1
                self.gene_reasons.update(codes)
                if line.sendout_lab_id:
                    self.sendouts[line.sendout_lab_id] += 1
                    self.sendouts_by[request.clinician_id][line.sendout_lab_id] += 1

    def fed_back(self, decision_id: str, line_id: str, outcome: int, code: str) -> None:
        if (decision_id, line_id) in self.reminders:
            name = "ACCEPTED" if outcome == ACCEPTED else "OVERRIDDEN"
            self.latest[(decision_id, line_id)] = (name, code)


def connections(address: str) -> Iterator[Connection]:
    while True:
        yield Connection(address)


def two_workers(server: RunningServer, scenario: Scenario) -> tuple[Connection, Connection]:
    """Two connections on different workers, found by asking (counted like any Check)."""
    found: dict[str, Connection] = {}
    for n, conn in enumerate(connections(server.address)):
        check(conn, scenario, "H3", "PROBE", "DOC-SUP-A", [item("1", "NA")], f"probe-{n}")
        found.setdefault(conn.worker, conn)
        if len(found) == 2 or n > 40:
            break
    assert len(found) == 2, "every connection reached the same worker"
    a, b = found.values()
    return a, b


def check(
    conn: Connection,
    scenario: Scenario,
    institution: str,
    department: str,
    clinician: str,
    items: list[types_pb2.OrderItem],
    patient: str,
    **fields: Any,
) -> order_check_pb2.CheckResponse:
    patient_fields = {k: fields.pop(k) for k in ("diagnosis_codes",) if k in fields}
    request = order_check_pb2.CheckRequest(
        institution_id=institution,
        department_id=department,
        clinician_id=clinician,
        patient=types_pb2.Patient(patient_id=PATIENT_PREFIX + patient, **patient_fields),
        items=items,
        **fields,
    )
    answer = conn.check.Check(request, timeout=5)
    scenario.checked(conn, request, answer)
    return answer


def feedback(
    conn: Connection,
    scenario: Scenario,
    answer: order_check_pb2.CheckResponse,
    line_id: str,
    outcome: int,
    code: str = "",
    comment: str = "",
) -> None:
    conn.check.SubmitFeedback(
        order_check_pb2.SubmitFeedbackRequest(
            decision_id=answer.decision_id,
            line_id=line_id,
            outcome=outcome,
            override_code=code,
            comment=comment,
        ),
        timeout=5,
    )
    scenario.fed_back(answer.decision_id, line_id, outcome, code)


def run_scenario(server: RunningServer) -> Scenario:
    s = Scenario()
    yesterday = now_us() - DAY_US
    patients = [f"R{i}" for i in range(14)]
    server.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[
                result(
                    f"LIS-{p}-{code}",
                    patient_id=PATIENT_PREFIX + p,
                    item_code=code,
                    institution_id="H1",
                    reported_at_us=yesterday,
                )
                for p in patients
                for code in ("K", "HBA1C")
            ]
        ),
        timeout=5,
    )
    a, b = two_workers(server, s)
    doc_a, doc_b, doc_c, doc_d = CLINICIANS
    k, hba1c = item("1", "K"), item("1", "HBA1C")

    # Recognition reminders; feedback on the other connection where it says b/a.
    plan = [  # (conn, institution, department, clinician, line, [(conn, outcome, code)])
        (a, "H1", "CARDIO", doc_a, k, [(b, ACCEPTED, "")]),
        (a, "H1", "CARDIO", doc_a, hba1c, [(b, OVERRIDDEN, "CONDITION_CHANGED")]),
        (b, "H1", "ENDO", doc_b, k, [(a, OVERRIDDEN, "RAPID_CHANGE")]),
        (b, "H1", "ENDO", doc_b, hba1c, [(b, OVERRIDDEN, "MAJOR_PROCEDURE")]),
        (a, "H2", "ER", doc_c, k, [(a, OVERRIDDEN, "EMERGENCY")]),
        (b, "H2", "ER", doc_c, k, [(a, OVERRIDDEN, "ASSESSMENT")]),
        (a, "H2", "WARD", doc_d, hba1c, [(b, OVERRIDDEN, "OTHER")]),
        # changes of mind, both answers on one connection: the latest counts
        (b, "H2", "WARD", doc_d, k, [(a, OVERRIDDEN, "OTHER"), (a, ACCEPTED, "")]),
        (a, "H1", "CARDIO", doc_a, k, [(b, ACCEPTED, ""), (b, OVERRIDDEN, "CONDITION_CHANGED")]),
        (b, "H2", "WARD", doc_d, k, []),  # no feedback: not a recognition
        # a retry of the same feedback is harmless
        (a, "H1", "ENDO", doc_b, hba1c, [(b, ACCEPTED, ""), (b, ACCEPTED, "")]),
    ]
    for n, (conn, inst, dept, doctor, line, answers) in enumerate(plan):
        answer = check(conn, s, inst, dept, doctor, [line], patients[n])
        assert answer.items[0].reasons[0].code == REMINDED
        for fb_conn, outcome, code in answers:
            comment = "复查：病情变化" if code == "OTHER" else ""
            feedback(fb_conn, s, answer, "1", outcome, code, comment)
    # two reminded lines in one order, one answered
    answer = check(a, s, "H1", "CARDIO", doc_a, [item("1", "K"), item("2", "HBA1C")], patients[12])
    feedback(b, s, answer, "1", ACCEPTED)

    # Emergencies: shown, never warned; counted as exemptions.
    for conn, inst in ((a, "H3"), (b, "H1")):
        answer = check(
            conn,
            s,
            inst,
            "EMERG",
            doc_c,
            [item("1", "K")],
            patients[13],
            encounter_type=types_pb2.ENCOUNTER_TYPE_EMERGENCY,
        )
        assert answer.decision == types_pb2.DECISION_ALLOW
        assert answer.items[0].reasons[0].code == "RECOGNITION_EXEMPT_EMERGENCY"

    # Gene tests: G1 sends nearly everything to LAB1 (allowed: approved for H2/EGFR).
    g1, g2, g3 = GENE_DOCTORS
    egfr = {"item_code": "EGFR", "category": GENE, "consent_signed": True}
    for n in range(11):
        answer = check(
            (a, b)[n % 2],
            s,
            "H2",
            "ONCO",
            g1,
            [item("1", sendout_lab_id="LAB1", **egfr)],
            f"G1-{n}",
            diagnosis_codes=["C34.1"],
        )
        assert answer.decision == types_pb2.DECISION_ALLOW
    for n, lab in enumerate(["LAB1"] * 6 + ["LAB-UNKNOWN"] * 5):
        check(
            (a, b)[n % 2],
            s,
            "H2",
            "ONCO",
            g2,
            [item("1", sendout_lab_id=lab, **egfr)],
            f"G2-{n}",
            diagnosis_codes=["C34.9"],
        )
    check(
        a,
        s,
        "H1",
        "ONCO",
        g3,
        [item("1", sendout_lab_id="LAB1", **egfr)],
        "G3-0",
        diagnosis_codes=["C34.1"],
    )
    check(b, s, "H1", "ONCO", g3, [item("1", "NTRK", category=GENE)], "G3-1")
    check(a, s, "H2", "ONCO", g3, [item("1", price_item_code="P-X", **egfr)], "G3-2")

    # Plain orders: allowed, counted as denominators only.
    for n in range(5):
        check((a, b)[n % 2], s, "H3", "CLINIC", doc_d, [item("1", "NA"), item("2", "K")], f"N{n}")
    for conn in (a, b):
        conn.channel.close()
    return s


@dataclass
class Run:
    workdir: Path
    catalog: Path
    scenario: Scenario
    metrics: str
    logs: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory, redis_module) -> Run:
    workdir = tmp_path_factory.mktemp("supervision")
    catalog = load_test_catalog()
    for entry in catalog["recognition_items"]:
        if entry["code"] in PRICES:
            entry["price_fen"] = PRICES[entry["code"]]
    keys = workdir / "pseudonym.keys"
    cds("audit", "new-key", "2026-01", "--add-to", str(keys))
    args = (
        "--workers",
        "2",
        "--results",
        redis_module.url,
        "--pseudonym-key",
        str(keys),
        "--decision-log-max-bytes",
        "8000",
        "--decision-log-backups",
        "50",
    )
    with running_server(workdir, catalog, args) as server:
        scenario = run_scenario(server)
        metrics = server.metrics_text()
    logs = workdir / "var"
    # A crash's torn last line, after the last record of one worker's live file.
    with open(logs / "decisions.w0.jsonl", "ab") as f:
        f.write(b'{"schema":"cds.audit/v1","type":"decision","decision_id":"torn')
    return Run(workdir, workdir / "catalog.json", scenario, metrics, logs)


def cds(*args: str, stdin: str = "") -> str:
    return run_cds(*args, stdin=stdin)


def report_text(run: Run, *extra: str, fmt: str = "json") -> str:
    return cds(
        "report",
        "--catalog",
        str(run.catalog),
        "--concentration-min",
        "10",
        "--format",
        fmt,
        *extra,
        str(run.logs),
    )


def report(run: Run, *extra: str) -> dict[str, Any]:
    return json.loads(report_text(run, *extra))


def pseudonym(run: Run, clinician: str) -> str:
    keys = str(run.workdir / "pseudonym.keys")
    return json.loads(
        cds("audit", "pseudonyms", "--pseudonym-key", keys, "--clinician", stdin=clinician)
    )["2026-01"]


def test_the_logs_span_both_workers_rotated_files_and_cross_worker_feedback(run):
    names = sorted(p.name for p in run.logs.iterdir())
    assert {"decisions.w0.jsonl", "decisions.w1.jsonl"} <= set(names)
    assert any(re.fullmatch(r"decisions\.w\d\.jsonl\.\d+", n) for n in names), names
    file_of: dict[tuple[str, str], str] = {}  # (type, decision_id) -> worker's file
    for path in run.logs.iterdir():
        worker = re.match(r"decisions\.(w\d)", path.name).group(1)
        for raw in path.read_bytes().splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if record["type"] != "counts":
                file_of[(record["type"], record["decision_id"])] = worker
    crossed = [
        d
        for (kind, d), w in file_of.items()
        if kind == "feedback" and file_of[("decision", d)] != w
    ]
    # Feedback recorded by the worker that did not decide: the report must join across files.
    assert crossed


def test_the_report_reproduces_the_recognition_figures(run):
    s = run.scenario
    r = report(run)["recognition"]
    outcomes = Counter(s.latest.get(key, ("no_feedback", ""))[0] for key in s.reminders)
    assert r["reminded"] == len(s.reminders) == 13
    assert r["accepted"] == outcomes["ACCEPTED"]
    assert r["overridden"] == outcomes["OVERRIDDEN"]
    assert r["no_feedback"] == outcomes["no_feedback"] == 2
    assert r["rate"] == outcomes["ACCEPTED"] / len(s.reminders)
    reasons = Counter(code for outcome, code in s.latest.values() if outcome == "OVERRIDDEN")
    assert r["override_reasons"] == dict(reasons)
    assert set(reasons) == {
        "CONDITION_CHANGED",
        "RAPID_CHANGE",
        "MAJOR_PROCEDURE",
        "EMERGENCY",
        "ASSESSMENT",
        "OTHER",
    }
    accepted_items = [s.reminders[k]["item"] for k, v in s.latest.items() if v[0] == "ACCEPTED"]
    assert r["savings_fen"] == sum(PRICES[i] for i in accepted_items)
    assert r["exempt_emergency"] == sum(s.exempt.values()) == 2
    for key in ("institution", "item"):
        expected: dict[str, Counter[str]] = defaultdict(Counter)
        for line, reminder in s.reminders.items():
            expected[reminder[key]]["reminded"] += 1
            outcome = s.latest.get(line, ("no_feedback", ""))[0].lower()
            expected[reminder[key]][outcome] += 1
        got = r[f"by_{key}"]
        for name, figures in expected.items():
            assert got[name]["reminded"] == figures["reminded"], (key, name)
            assert got[name]["accepted"] == figures["accepted"], (key, name)
            assert got[name]["overridden"] == figures["overridden"], (key, name)
    assert r["by_institution"]["H3"]["exempt_emergency"] == 1
    assert r["by_department"]["H2"]["WARD"]["reminded"] == 3
    doctor_a = next(c for c in r["clinicians"] if c["clinician"] == pseudonym(run, CLINICIANS[0]))
    assert doctor_a["reminded"] == sum(
        1 for v in s.reminders.values() if v["clinician"] == CLINICIANS[0]
    )


def test_the_report_reproduces_checks_gene_tests_concentration_and_input(run):
    s = run.scenario
    rep = report(run)
    checks = rep["checks"]
    assert checks["orders"] == sum(s.orders.values())
    assert checks["lines"] == sum(s.lines.values())
    assert {i: v["orders"] for i, v in checks["by_institution"].items()} == dict(s.orders)
    by_decision = Counter()
    for (_i, _d, _c, decision), n in s.lines.items():
        by_decision[decision] += n
    assert checks["lines_by_decision"] == dict(by_decision)
    g = rep["gene_tests"]
    assert g["lines"] == s.gene_lines == 25
    assert g["by_reason"] == dict(s.gene_reasons)
    shown = {
        "PRICE_ITEM_MISMATCH",
        "GENE_TEST_NOT_PRICED",
        "CONSENT_REQUIRED",
        "SENDOUT_LAB_NOT_APPROVED",
        "SENDOUT_AVAILABLE_IN_HOUSE",
    }
    assert shown <= set(g["by_reason"])
    assert g["sendouts"] == dict(s.sendouts)
    assert g["concentration"] == [
        {
            "clinician": pseudonym(run, GENE_DOCTORS[0]),
            "key_id": "2026-01",
            "lab": "LAB1",
            "sendouts": 11,
            "to_lab": 11,
            "share": 1.0,
        }
    ]
    assert rep["silent"] == {}
    assert rep["input"]["torn_lines"] == 1
    assert rep["input"]["torn_by_file"] == {str(run.logs / "decisions.w0.jsonl"): 1}


def test_a_period_and_an_institution_narrow_the_report(run):
    today = report(run)["period"]["to"]
    h2 = report(run, "--institution", "H2", "--from", today, "--to", today)
    assert h2["institutions"] == ["H2"]
    assert set(h2["recognition"]["by_institution"]) == {"H2"}
    assert h2["checks"]["orders"] == run.scenario.orders["H2"]
    empty = report(run, "--from", "2000-01-01", "--to", "2000-01-31")
    assert (empty["recognition"]["reminded"], empty["checks"]["orders"]) == (0, 0)


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        key = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))
        out[key] = float(value)
    return out


def test_the_live_metrics_agree_with_the_report(run):
    r = report(run)["recognition"]
    reminded = metric_values(run.metrics, "cds_recognition_reminded_total")
    assert {dict(k)["institution"]: v for k, v in reminded.items()} == {
        i: f["reminded"] for i, f in r["by_institution"].items() if f["reminded"]
    }
    fed = Counter()
    for k, v in metric_values(run.metrics, "cds_recognition_feedback_total").items():
        fed[tuple(dict(k)[x] for x in ("institution", "outcome", "reason"))] += v
    for k, v in metric_values(run.metrics, "cds_recognition_feedback_replaced_total").items():
        fed[tuple(dict(k)[x] for x in ("institution", "outcome", "reason"))] -= v
    for institution, figures in r["by_institution"].items():
        accepted = fed[(institution, "accepted", "")]
        overridden = sum(
            n for (i, o, _), n in fed.items() if i == institution and o == "overridden"
        )
        assert (accepted, overridden) == (figures["accepted"], figures["overridden"]), institution
    reasons = Counter()
    for (_i, outcome, reason), n in fed.items():
        if outcome == "overridden" and n:
            reasons[reason] += n
    assert dict(reasons) == r["override_reasons"]


def test_the_report_names_no_patient_or_clinician(run):
    for fmt in ("json", "csv", "html"):
        text = report_text(run, fmt=fmt)
        for raw in (PATIENT_PREFIX, *CLINICIANS, *GENE_DOCTORS):
            assert raw not in text, fmt


@pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian: chromium)")
def test_the_html_report_opens_offline_in_chromium_and_shows_its_charts(run, tmp_path):
    page = tmp_path / "report.html"
    report_text(run, "--out", str(page), fmt="html")
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    with tempfile.TemporaryDirectory() as profile:
        base = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=1400,4200",
        ]
        shot = tmp_path / "report.png"
        subprocess.run(
            [*base, f"--screenshot={shot}", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
        dom = subprocess.run(
            [*base, "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
    assert dom.count("<svg") >= 7  # rates by institution and item, reasons, trend, ...
    assert dom.count("<rect") > 20 and dom.count("<circle") >= 4
    assert "检查检验结果互认与肿瘤基因检测" in dom
    assert "测试第一医院（H1）" in dom  # names from the catalogue, codes kept
    assert "病情变化，原结果已不能反映当前状况（CONDITION_CHANGED）" in dom


def test_a_rule_switched_on_silently_shows_its_firings_in_the_report_not_on_screen(tmp_path):
    """The administrator's evidence for switching a rule on: counted, never shown."""
    catalog = load_test_catalog()
    for entry in catalog["recognition_items"]:
        if entry["code"] == "K":
            entry["silent"] = True
    with running_server(tmp_path, catalog) as s:
        reported = now_us() - DAY_US
        s.feed.PutResults(
            result_feed_pb2.PutResultsRequest(
                results=[result("SIL-1", patient_id="silent-1", item_code="K",
                                reported_at_us=reported)]
            ),
            timeout=5,
        )  # fmt: skip
        answer = s.check.Check(check_request(item("1", "K"), patient_id="silent-1"), timeout=5)
        assert answer.decision == types_pb2.DECISION_ALLOW and not answer.items[0].reasons
    figures = json.loads(
        run_cds("report", "--catalog", str(s.catalog_path), str(s.decision_log_path))
    )
    assert figures["silent"] == {"RECOGNIZABLE_RESULT_EXISTS": 1}
    assert figures["recognition"]["reminded"] == 0
