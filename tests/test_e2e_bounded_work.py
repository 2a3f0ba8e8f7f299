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
        started = time.monotonic()
        response = server.check.Check(check_request(*lines, patient_id="P9"), timeout=5)
        elapsed = time.monotonic() - started
        assert len(response.items) == 100
        assert response.decision != types_pb2.DECISION_ALLOW  # the recent K results are seen
        assert elapsed < 5
