"""A feed cannot make later checks slow: the work of a check stays bounded however many
results one patient's item has received (a real ``cds serve``)."""

from __future__ import annotations

import re
import time

import pytest

from cds.v1 import result_feed_pb2, types_pb2
from tests.support.protos import check_request, item, now_us, result
from tests.support.server import running_server

pytestmark = pytest.mark.e2e

SECOND_US = 1_000_000


def test_a_check_after_ten_thousand_results_of_one_item_answers_in_time(tmp_path):
    """10,000 results of one (patient, item) used to be walked by every order line of
    every later check of it: a 100-line check walked a million rows, blocking the server
    for seconds. Only the newest --max-results-per-item (default 100) are kept."""
    with running_server(tmp_path) as server:
        reported = now_us() - SECOND_US
        rows = [
            result(
                f"R{i:05d}",
                patient_id="P9",
                item_code="K",
                reported_at_us=reported - i * 30 * SECOND_US,
            )
            for i in range(10_000)
        ]
        request = result_feed_pb2.PutResultsRequest(results=rows)
        assert server.feed.PutResults(request, timeout=30).accepted == 10_000
        cached = re.search(r"^cds_results_cached (\S+)$", server.metrics_text(), re.M)
        assert cached is not None and float(cached.group(1)) == 100

        lines = [item(line_id=str(n), item_code="K") for n in range(100)]
        # Meanwhile another caller's small checks must keep meeting a 1 s deadline.
        small = [server.check.Check.future(check_request(), timeout=1) for _ in range(20)]
        started = time.monotonic()
        response = server.check.Check(check_request(*lines, patient_id="P9"), timeout=5)
        elapsed = time.monotonic() - started
        assert [s.result().decision for s in small] == [types_pb2.DECISION_ALLOW] * 20
        assert len(response.items) == 100
        assert response.decision != types_pb2.DECISION_ALLOW  # the recent K results are seen
        for line in response.items:
            (reason,) = [r for r in line.reasons if r.code == "RECOGNIZABLE_RESULT_EXISTS"]
            assert len(reason.prior_results) == 10  # the newest ten listed...
            assert reason.prior_results_omitted == 90  # ...of the 100 kept
            assert reason.prior_results[0].result_id == "R00000"
        assert response.ByteSize() < 256 * 1024  # was 40-165 MB
        assert elapsed < 2
        # Its decision-log record is as bounded as the answer (it was a 131 MB line).
        deadline = time.monotonic() + 10
        while response.decision_id.encode() not in server.decision_log_path.read_bytes():
            assert time.monotonic() < deadline, "the decision was not logged"
            time.sleep(0.05)
        record = next(
            line
            for line in server.decision_log_path.read_bytes().splitlines()
            if response.decision_id.encode() in line
        )
        assert len(record) < 64 * 1024
