"""An acknowledged feedback is on disk, however many copies of it arrive at once.

A feedback's OK is what the clinician and the audit rely on: "recorded". A duplicate
(the EMR's retry while the first copy is still being written) must wait for that
write's outcome, never be acknowledged on the strength of a write that may yet fail.
"""

from __future__ import annotations

import grpc
import pytest

from cds.v1 import order_check_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import running_server

pytestmark = pytest.mark.e2e

COPIES = 40


def _warned_feedback(s, patient: str) -> order_check_pb2.SubmitFeedbackRequest:
    s.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[result(f"R-{patient}", patient_id=patient, reported_at_us=now_us() - DAY_US)]
        ),
        timeout=5,
    )
    warned = s.check.Check(check_request(item("1", "K"), patient_id=patient), timeout=5)
    assert warned.decision == types_pb2.DECISION_WARN
    return order_check_pb2.SubmitFeedbackRequest(
        decision_id=warned.decision_id, line_id="1", outcome=types_pb2.FEEDBACK_OUTCOME_ACCEPTED
    )


def _codes(calls) -> list[grpc.StatusCode]:
    codes = []
    for call in calls:
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    return codes


def test_concurrent_duplicates_are_all_acknowledged_and_recorded_once(tmp_path):
    with running_server(tmp_path) as s:
        feedback = _warned_feedback(s, "P-dup")
        calls = [s.check.SubmitFeedback.future(feedback, timeout=10) for _ in range(COPIES)]
        assert _codes(calls) == [grpc.StatusCode.OK] * COPIES
        fed = [r for r in s.decision_log_records() if r["type"] == "feedback"]
        assert [r["decision_id"] for r in fed] == [feedback.decision_id]


def test_duplicates_of_a_feedback_that_cannot_be_written_are_never_acknowledged(tmp_path):
    # Every write to /dev/full fails (ENOSPC): no copy may be answered OK.
    with running_server(tmp_path, extra_args=["--decision-log", "/dev/full"]) as s:
        feedback = _warned_feedback(s, "P-full")
        calls = [s.check.SubmitFeedback.future(feedback, timeout=10) for _ in range(COPIES)]
        assert _codes(calls) == [grpc.StatusCode.UNAVAILABLE] * COPIES
