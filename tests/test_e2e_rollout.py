"""Safe catalogue changes against the real server: wording, silent rules, previews."""

from __future__ import annotations

import copy
import time

import grpc
import pytest

from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import load_test_catalog, running_server

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
    server.write_catalog(V1)
    reload(server)
    return server


def reload(server, dry_run=False):
    request = catalog_admin_pb2.ReloadCatalogRequest(dry_run=dry_run)
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
