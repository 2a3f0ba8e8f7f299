"""`cds serve --results`: which store a URL names, and URLs refused before anything listens."""

from __future__ import annotations

import asyncio

import pytest

from cds.results.factory import check_results_url, open_store
from cds.results.memory import MemoryResultStore
from cds.runtime.server import worker_log_path
from tests.support.stores import row


def test_no_url_is_the_in_process_store():
    assert isinstance(open_store(None, max_results=10), MemoryResultStore)


def test_the_bound_per_item_reaches_the_store():
    store = open_store(None, max_results=10, max_results_per_item=2)
    later = 2**62
    rows = [row("p", f"r{n}", reported_at_us=n, expires_at_us=later) for n in range(3)]
    asyncio.run(store.put_many(rows))
    assert [r.result_id for r in asyncio.run(store.get_patient("p"))["K"]] == ["r2", "r1"]


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


def test_the_bound_per_item_reaches_the_redis_store():
    from cds.results.redis_store import RedisResultStore

    store = open_store("redis://127.0.0.1:1/0", max_results=10, max_results_per_item=7)
    assert isinstance(store, RedisResultStore) and store._per_item == 7
