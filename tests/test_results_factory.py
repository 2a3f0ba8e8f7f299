"""`cds serve --results`: which store a URL names, and URLs refused before anything listens."""

from __future__ import annotations

import pytest

from cds.results.factory import check_results_url, open_store
from cds.results.memory import MemoryResultStore
from cds.runtime.server import worker_log_path


def test_no_url_is_the_in_process_store():
    assert isinstance(open_store(None, max_results=10), MemoryResultStore)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://r.example:6380/1", "redis+cluster://r:7000"]
)
def test_redis_urls_are_accepted(url):
    check_results_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:6379", "expected redis://"),
        ("memcached://h:1", "expected redis://"),
        ("redis://", "no host"),
        ("redis://h:notaport/0", "Port"),
    ],
)
def test_other_urls_are_refused_with_a_reason(url, why):
    with pytest.raises(ValueError, match=why):
        check_results_url(url)


def test_each_worker_writes_its_own_decision_log():
    assert worker_log_path("var/decisions.jsonl", 1) == "var/decisions.w1.jsonl"
