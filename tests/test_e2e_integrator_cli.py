"""What an integrator types first: `cds check --format text` and `cds feedback`, against a
real server, so the whole check-and-feedback loop runs from a shell."""

from __future__ import annotations

import json

import pytest

from cds.v1 import result_feed_pb2
from tests.support.protos import DAY_US, now_us, result
from tests.support.server import running_server

pytestmark = pytest.mark.e2e

REQUEST = {
    "institution_id": "H1",
    "patient": {"patient_id": "P-CLI"},
    "items": [
        {"line_id": "1", "item_code": "K"},
        {"line_id": "2", "item_code": "HBA1C"},
        {"line_id": "3", "item_code": "NA"},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("cli")) as s:
        yesterday = now_us() - DAY_US
        s.feed.PutResults(
            result_feed_pb2.PutResultsRequest(
                results=[
                    result("R-K", "P-CLI", "K", "H2", yesterday),
                    result("R-H", "P-CLI", "HBA1C", "H1", yesterday),
                ]
            ),
            timeout=5,
        )
        yield s


def cds(server, *args, stdin=None):
    return server.cli(*args, stdin=stdin)


def test_check_as_text_is_a_line_per_order_line_reasons_indented_and_options_once(server):
    done = cds(server, "check", "--format", "text", stdin=json.dumps(REQUEST))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("WARN  decision ") and "catalogue test-1" in lines[0]
    order_lines = [line for line in lines if line.startswith("  ") and not line.startswith("   ")]
    assert [line.split()[:3] for line in order_lines[:3]] == [
        ["1", "K", "WARN"],
        ["2", "HBA1C", "WARN"],
        ["3", "NA", "ALLOW"],
    ]
    assert sum("RECOGNIZABLE_RESULT_EXISTS:" in line for line in lines) == 2
    assert any(line.strip().startswith("prior R-K from H2, reported ") for line in lines)
    assert sum(line.startswith("override reasons (cds feedback ") for line in lines) == 1
    other = [line for line in lines if line.split()[:1] == ["OTHER"]]
    assert len(other) == 1 and other[0].endswith("(needs --comment)")


def test_json_stays_the_default(server):
    done = cds(server, "check", stdin=json.dumps(REQUEST))
    assert json.loads(done.stdout)["decision"] == "DECISION_WARN"


def test_feedback_from_the_shell_is_recorded_and_a_refusal_exits_1(server):
    decision_id = json.loads(cds(server, "check", stdin=json.dumps(REQUEST)).stdout)["decision_id"]
    assert cds(server, "feedback", decision_id, "1", "--accepted").stdout.strip() == "{}"
    done = cds(server, "feedback", decision_id, "2", "--overridden", "OTHER", "--comment", "复查")
    assert done.returncode == 0, done.stderr
    records = [r for r in server.decision_log_records() if r.get("decision_id") == decision_id]
    feedback = [(r["line_id"], r["outcome"], r["override_code"]) for r in records
                if r["type"] == "feedback"]  # fmt: skip
    assert feedback == [("1", "ACCEPTED", ""), ("2", "OVERRIDDEN", "OTHER")]
    refused = cds(server, "feedback", decision_id, "3", "--overridden", "OTHER")
    assert refused.returncode == 1
    assert refused.stderr.startswith("cds: FAILED_PRECONDITION: line_id: ")
    usage = cds(server, "feedback", decision_id, "1")
    assert usage.returncode == 2 and "--accepted --overridden is required" in usage.stderr
