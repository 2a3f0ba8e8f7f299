"""A frozen Redis (SIGSTOP) end to end: checks report it instead of trusting the near-cache.

A hung Redis keeps every socket open and answers nothing, so the near-cache's invalidation
subscription sees no error; the server must notice from its heartbeat, within the read
timeout (50 ms), and report ``RESULTS_UNAVAILABLE`` rather than answer from a copy that a
write elsewhere may already have made stale (the issue measured 647 of 1,200 checks
answered as not degraded, up to 10 s stale). One process, so every check meets the one
near-cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cds.v1 import order_check_pb2, result_feed_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.server import RunningServer, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

READ_TIMEOUT_S = 0.05  # the store's default
MARGIN_S = 0.25  # a busy, shared machine


@pytest.fixture
def served(tmp_path, redis_server) -> Iterator[tuple[RunningServer, RedisServer]]:
    with running_server(tmp_path / "srv", extra_args=("--results", redis_server.url)) as server:
        yield server, redis_server


def check(server: RunningServer) -> order_check_pb2.CheckResponse:
    request = check_request(item("1", "K"), patient_id="frozen")
    return server.check.Check(request, timeout=2)


def priors(answer: order_check_pb2.CheckResponse) -> set[str]:
    return {p.result_id for r in answer.items[0].reasons for p in r.prior_results}


def test_checks_report_a_frozen_redis_instead_of_answering_from_the_near_cache(served):
    server, redis = served
    put = result_feed_pb2.PutResultsRequest(
        results=[result("F1", patient_id="frozen", reported_at_us=now_us() - DAY_US)]
    )
    assert server.feed.PutResults(put, timeout=5).accepted == 1
    for _ in range(3):  # the patient is now in the near-cache
        answer = check(server)
        assert (list(answer.degraded), priors(answer)) == ([], {"F1"})

    redis.pause()
    try:
        time.sleep(READ_TIMEOUT_S + MARGIN_S)
        answers = [check(server) for _ in range(20)]
    finally:
        redis.resume()
    trusted = [a for a in answers if "RESULTS_UNAVAILABLE" not in a.degraded]
    assert not trusted, f"{len(trusted)} of {len(answers)} answered from the near-cache"

    deadline = time.monotonic() + 5
    while (answer := check(server)).degraded:  # back to normal by itself
        assert time.monotonic() < deadline, "still degraded 5 s after SIGCONT"
        time.sleep(0.02)
    assert priors(answer) == {"F1"}
