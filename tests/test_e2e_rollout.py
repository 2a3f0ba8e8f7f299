"""Safe catalogue changes against the real server: wording, silent rules, previews."""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import time

import grpc
import pytest

from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import (
    TEST_CATALOG,
    cds_command,
    load_test_catalog,
    running_server,
    server_env,
)

pytestmark = pytest.mark.e2e

V1 = load_test_catalog()


def edition(version: str, **changes) -> dict:
    """The test catalogue under another version, with top-level keys replaced."""
    doc = copy.deepcopy(V1)
    doc["version"] = version
    doc.update(copy.deepcopy(changes))
    return doc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("rollout")) as s:
        yield s


@pytest.fixture
def v1(server):
    server.write_catalog(TEST_CATALOG)  # the very bytes it started on
    reload(server)
    return server


def reload(server, dry_run=False, candidate=b""):
    request = catalog_admin_pb2.ReloadCatalogRequest(dry_run=dry_run, candidate=candidate)
    return server.admin.ReloadCatalog(request, timeout=30)


def put(server, *results):
    request = result_feed_pb2.PutResultsRequest(results=results)
    assert server.feed.PutResults(request, timeout=5).accepted == len(results)


def refused(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# --------------------------------------------------------------------------- wording


def test_a_reload_rewords_a_message_and_a_bad_template_keeps_the_old_wording(v1):
    patient = f"msg-{now_us()}"
    put(v1, result("R-msg", patient_id=patient, item_code="K", reported_at_us=now_us() - DAY_US))

    def message():
        response = v1.check.Check(check_request(item("1", "K"), patient_id=patient), timeout=5)
        return response.items[0].reasons[0].message

    assert message().startswith("「血清钾」有 1 份可互认的既往结果")
    worded = {"RECOGNIZABLE_RESULT_EXISTS": "{item_name}：{count} 份，最近 {latest_institution}"}
    v1.write_catalog(edition("test-msg", messages=worded))
    reload(v1)
    assert message() == "血清钾：1 份，最近 测试第一医院"

    v1.write_catalog(edition("test-msg-bad", messages={"RECOGNIZABLE_RESULT_EXISTS": "{who}"}))
    code, details = refused(lambda: reload(v1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "$.messages.RECOGNIZABLE_RESULT_EXISTS: unknown placeholder {who}" in details
    assert message() == "血清钾：1 份，最近 测试第一医院"


# --------------------------------------------------------------------------- silent


def metric(server, series: str) -> float:
    for line in server.metrics_text().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def records_with(server, decision_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.decision_log_path.exists():
            for record in server.decision_log_records():
                if record.get("decision_id") == decision_id:
                    return record
        time.sleep(0.05)
    raise AssertionError(f"no decision record {decision_id}")


def test_silent_rules_by_entry_and_by_code_are_counted_and_logged_never_answered(v1):
    doc = edition("test-silent", policy={"severity": {"CONSENT_REQUIRED": "SILENT"}})
    doc["recognition_items"][0]["silent"] = True  # K
    v1.write_catalog(doc)
    reload(v1)
    patient = f"silent-{now_us()}"
    put(v1, result("R-s", patient_id=patient, item_code="K", reported_at_us=now_us() - DAY_US))
    k_series = 'cds_reasons_total{code="RECOGNIZABLE_RESULT_EXISTS",silent="true"}'
    consent_series = 'cds_reasons_total{code="CONSENT_REQUIRED",silent="true"}'
    before = metric(v1, k_series), metric(v1, consent_series)

    by_entry = v1.check.Check(check_request(item("1", "K"), patient_id=patient), timeout=5)
    gene = item("1", "EGFR", category=types_pb2.ITEM_CATEGORY_GENE_TEST, consent_signed=False)
    by_code = v1.check.Check(
        check_request(gene, patient_id=patient, diagnosis_codes=("C34.1",)), timeout=5
    )

    for answer in (by_entry, by_code):
        assert answer.decision == types_pb2.DECISION_ALLOW
        assert [list(i.reasons) for i in answer.items] == [[]]
    assert metric(v1, k_series) == before[0] + 1
    assert metric(v1, consent_series) == before[1] + 1
    for answer, code, decision in (
        (by_entry, "RECOGNIZABLE_RESULT_EXISTS", "WARN"),
        (by_code, "CONSENT_REQUIRED", "BLOCK"),
    ):
        record = records_with(v1, answer.decision_id)
        assert record["decision"] == "ALLOW"
        ((line,),) = [record["items"]]
        assert line["decision"] == "ALLOW"
        (reason,) = line["reasons"]
        assert (reason["code"], reason["decision"], reason["silent"]) == (code, decision, True)
    # a silent line showed the clinician nothing: there is nothing to give feedback on
    feedback = order_check_pb2.SubmitFeedbackRequest(
        decision_id=by_entry.decision_id,
        line_id="1",
        outcome=types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN,
        override_code="CONDITION_CHANGED",
    )
    code, _ = refused(lambda: v1.check.SubmitFeedback(feedback, timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


# --------------------------------------------------------------------------- impact


def status(server):
    return server.admin.GetCatalogStatus(catalog_admin_pb2.GetCatalogStatusRequest(), timeout=5)


def rows(impact):
    return [
        (r.item_code, r.before, r.after, r.lines, list(r.reasons_added), list(r.reasons_removed))
        for r in impact.rows
    ]


ALLOW, WARN, BLOCK = types_pb2.DECISION_ALLOW, types_pb2.DECISION_WARN, types_pb2.DECISION_BLOCK


def test_a_candidate_dry_run_replays_the_checked_orders_exactly_and_never_activates(tmp_path):
    with running_server(tmp_path) as server:
        put(
            server,
            result("R-k", patient_id="imp-1", item_code="K", reported_at_us=now_us() - DAY_US),
        )
        for _ in range(3):  # K recognised: WARN now, BLOCK under the candidate
            server.check.Check(check_request(item("1", "K"), patient_id="imp-1"), timeout=5)
        gene = item("1", "EGFR", category=types_pb2.ITEM_CATEGORY_GENE_TEST, consent_signed=False)
        server.check.Check(
            check_request(gene, patient_id="imp-2", institution_id="H2", diagnosis_codes=("C34",)),
            timeout=5,
        )  # consent missing: BLOCK now, silent under the candidate
        server.check.Check(check_request(item("1", "HBA1C"), patient_id="imp-3"), timeout=5)
        candidate = edition(
            "test-2",
            policy={
                "severity": {"RECOGNIZABLE_RESULT_EXISTS": "BLOCK", "CONSENT_REQUIRED": "SILENT"}
            },
        )
        body = json.dumps(candidate, ensure_ascii=False).encode()
        response = reload(server, dry_run=True, candidate=body)
        assert (response.activated, response.version, response.previous_version) == (
            False,
            "test-2",
            "test-1",
        )
        assert response.impact.orders_replayed == 5
        assert response.impact.lines_changed == 4
        assert rows(response.impact) == [
            ("K", WARN, BLOCK, 3, [], []),
            ("EGFR", BLOCK, ALLOW, 1, [], ["CONSENT_REQUIRED"]),
        ]
        assert "policy severity CONSENT_REQUIRED: BLOCK -> SILENT" in response.changes
        assert status(server).version == "test-1"  # never activated
        answer = server.check.Check(check_request(item("1", "K"), patient_id="imp-1"), timeout=5)
        assert answer.decision == WARN

        # The same change for real: activated, and the impact after the fact.
        server.write_catalog(candidate)
        activated = reload(server)
        assert activated.activated
        assert rows(activated.impact)[0] == ("K", WARN, BLOCK, 4, [], [])
        assert status(server).version == "test-2"
    assert "imp-1" not in server.log_text()


def test_a_candidate_without_dry_run_is_invalid_argument_naming_it(v1):
    request = catalog_admin_pb2.ReloadCatalogRequest(candidate=b'{"version": "x"}')
    code, details = refused(lambda: v1.admin.ReloadCatalog(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("candidate: only with dry_run")
    assert status(v1).version == "test-1"


def test_a_bad_candidate_is_refused_and_the_active_catalogue_keeps_serving(v1):
    code, details = refused(lambda: reload(v1, dry_run=True, candidate=b'{"version": 3}'))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "$.version: expected string, got number" in details
    assert status(v1).last_error == ""  # a dry run records nothing


def test_the_active_version_with_other_content_is_refused(v1):
    same = edition("test-1")
    same["recognition_items"][0]["validity_days"] = 30
    v1.write_catalog(same)
    code, details = refused(lambda: reload(v1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "$.version: 'test-1' is the active version, whose file differs" in details
    code, _ = refused(lambda: reload(v1, dry_run=True, candidate=json.dumps(same).encode()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert status(v1).version == "test-1"


def test_checks_keep_being_answered_while_a_dry_run_replays(tmp_path):
    lines = [item(str(n), code) for n, code in enumerate(["K", "HBA1C", "CT_CHEST"] * 30, 1)]
    with running_server(tmp_path) as server:
        put(
            server,
            result("R-r", patient_id="busy", item_code="K", reported_at_us=now_us() - DAY_US),
        )
        many = check_request(*lines, patient_id="busy")
        for _ in range(1500):
            server.check.Check(many, timeout=10)
        stop = threading.Event()
        failures: list[Exception] = []
        answered = [0]

        def caller() -> None:
            while not stop.is_set():
                try:
                    server.check.Check(check_request(item("1", "K")), timeout=5)
                    answered[0] += 1
                except grpc.RpcError as e:
                    failures.append(e)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            candidate = edition("test-2", policy={"severity": {"DUPLICATE_IN_REQUEST": "ALLOW"}})
            response = reload(server, dry_run=True, candidate=json.dumps(candidate).encode())
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert failures == []
        assert answered[0] > 0
        assert response.impact.orders_replayed >= 1500
        # Every line after the first of its code was a duplicate (29 per code and order),
        # now ALLOW; K's stay WARN, recognised.
        assert rows(response.impact) == [
            ("CT_CHEST", WARN, ALLOW, 29 * 1500, [], []),
            ("HBA1C", WARN, ALLOW, 29 * 1500, [], []),
        ]


# --------------------------------------------------------------------------- command line


def cds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cds_command(*args), capture_output=True, text=True, env=server_env(), timeout=60
    )


def test_cds_catalog_reload_dry_run_file_prints_the_changes_and_the_impact_table(v1, tmp_path):
    patient = f"cli-{now_us()}"
    put(v1, result("R-c", patient_id=patient, item_code="K", reported_at_us=now_us() - DAY_US))
    v1.check.Check(check_request(item("1", "K"), patient_id=patient), timeout=5)
    path = tmp_path / "candidate.json"
    path.write_text(
        json.dumps(edition("test-2", policy={"severity": {"RECOGNIZABLE_RESULT_EXISTS": "BLOCK"}})),
        encoding="utf-8",
    )
    done = cds("catalog", "reload", "--dry-run", "--file", str(path), "--server", v1.address)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "dry run: version test-2 not activated (test-1 in force)"
    assert "  policy severity RECOGNIZABLE_RESULT_EXISTS: WARN -> BLOCK" in out
    impact = next(line for line in out if line.startswith("impact: "))
    assert "recent orders replayed" in impact
    header = out.index(next(line for line in out if line.startswith("lines")))
    assert out[header + 1].split()[1:] == ["K", "血清钾", "WARN", "->", "BLOCK"]
    assert status(v1).version == "test-1"

    as_json = cds("catalog", "reload", "--dry-run", "--file", str(path), "--format", "json",
                  "--server", v1.address)  # fmt: skip
    assert json.loads(as_json.stdout)["impact"]["rows"][0]["item_code"] == "K"


def test_cds_catalog_reload_file_without_dry_run_is_bad_usage(v1, tmp_path):
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps(edition("test-2")), encoding="utf-8")
    done = cds("catalog", "reload", "--file", str(path), "--server", v1.address)
    assert done.returncode == 2
    assert "--file needs --dry-run" in done.stderr
    assert status(v1).version == "test-1"
