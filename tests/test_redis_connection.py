"""The one place that knows how to reach Redis: which URLs it takes and which client serves
each, refusals worded for the operator, and both of its users served by a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from cds.decisions.shared import SharedDecisionMemory
from cds.domain import US_PER_DAY
from cds.results.base import ResultsUnavailable
from cds.results.redis_connection import RedisAddress, RedisConnection, parse_redis_url
from cds.results.redis_store import RedisResultStore
from cds.results.redis_wire import pack
from tests.support.redis_server import (  # noqa: F401  (fixtures)
    redis_cluster_fixture,
    redis_server_fixture,
)
from tests.support.stores import FakeClock, eventually, row
from tests.test_shared_decisions import ORDER, WARNED


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6379/0", RedisAddress("redis://127.0.0.1:6379/0", False, True)),
        ("redis://u:pw@10.0.0.5:6380/3", RedisAddress("redis://u:pw@10.0.0.5:6380/3", False, True)),
        ("unix:///run/redis.sock?db=2", RedisAddress("unix:///run/redis.sock?db=2", False, True)),
        ("rediss://r.example:6380/1", RedisAddress("rediss://r.example:6380/1", False, False)),
        ("redis://h:1/0?socket_keepalive=true",
         RedisAddress("redis://h:1/0?socket_keepalive=true", False, False)),
        ("redis+cluster://r:7000", RedisAddress("redis://r:7000", True, False)),
        ("redis+cluster://:pw@r:7000/0", RedisAddress("redis://:pw@r:7000/0", True, False)),
    ],
)  # fmt: skip
def test_each_scheme_names_its_clients_and_a_cluster_url_becomes_redis_form(url, address):
    assert parse_redis_url(url) == address


def test_a_redis_url_can_be_declared_a_cluster_node():
    assert parse_redis_url("redis://r:7000/0", cluster=True) == RedisAddress(
        "redis://r:7000/0", True, False
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:6379", "expected redis://"),
        ("memcached://h:1", "expected redis://"),
        ("http://h:1/0", "expected redis://"),
        ("redis://", "no host"),
        ("redis+cluster://:7000", "no host"),
        ("redis://h:notaport/0", "Port"),
        ("redis://h:99999/0", "Port"),
    ],
)
def test_a_url_it_cannot_use_is_refused_naming_the_flag_and_the_url(url, why):
    with pytest.raises(ValueError, match=why) as refused:
        RedisConnection(url, connect_timeout_s=0.05, timeout_s=0.05)
    assert str(refused.value).startswith(f"--results {url!r}: ")


def test_opening_a_connection_makes_no_contact_and_picks_the_client_for_the_url():
    # Nothing listens on port 1: opening must neither connect nor fail.
    plain = RedisConnection("redis://127.0.0.1:1/0", connect_timeout_s=0.05, timeout_s=0.05)
    tls = RedisConnection("rediss://127.0.0.1:1/0", connect_timeout_s=0.05, timeout_s=0.05)
    cluster = RedisConnection("redis+cluster://127.0.0.1:1", connect_timeout_s=0.05, timeout_s=0.05)
    assert plain.pipe is not None and isinstance(plain.client, Redis)
    assert tls.pipe is None and isinstance(tls.client, Redis)
    assert cluster.pipe is None and isinstance(cluster.client, RedisCluster) and cluster.cluster

    async def close_all():
        for connection in (plain, tls, cluster):
            await connection.close()

    asyncio.run(close_all())


@pytest.mark.redis
def test_start_says_whether_redis_answered_and_never_raises(redis_server):
    async def scenario():
        pipelined = RedisConnection(redis_server.url, connect_timeout_s=0.2, timeout_s=0.2)
        redis_py = RedisConnection(
            redis_server.url + "?socket_keepalive=true", connect_timeout_s=0.2, timeout_s=0.2
        )
        assert redis_py.pipe is None
        try:
            up = [await pipelined.start(), await redis_py.start()]
            redis_server.stop()
            down = [await pipelined.start(), await redis_py.start()]
            redis_server.start()
            again = [await pipelined.start(), await redis_py.start()]
            return up, down, again
        finally:
            await pipelined.close()
            await redis_py.close()

    assert run(scenario()) == ([True, True], [False, False], [True, True])


@pytest.mark.redis
def test_both_clients_reach_the_urls_database(redis_server):
    url = redis_server.url.rpartition("/")[0] + "/3"

    async def scenario():
        connection = RedisConnection(url, connect_timeout_s=0.5, timeout_s=0.5)
        raw = Redis.from_url(redis_server.url)  # database 0
        pipe = connection.pipe
        assert pipe is not None
        try:
            await pipe.call(pack("SET", "k", "through the link"))
            seen_by_client = await connection.client.get("k")
            await connection.client.set("j", "through redis-py")
            seen_by_link = await pipe.call(pack("GET", "j"))
            return seen_by_client, seen_by_link, await raw.exists("k", "j")
        finally:
            await connection.close()
            await raw.aclose()

    assert run(scenario()) == (b"through the link", b"through redis-py", 0)


@pytest.mark.redis
def test_a_hung_redis_fails_each_client_within_its_own_timeout(redis_server):
    async def scenario():
        connection = RedisConnection(redis_server.url, connect_timeout_s=0.5, timeout_s=0.1)
        pipe = connection.pipe
        assert pipe is not None
        try:
            assert await connection.start()
            await connection.client.ping()  # a pooled redis-py connection exists too
            redis_server.pause()
            try:
                took = []
                for call in (lambda: pipe.call(pack("GET", "k")), connection.client.ping):
                    started = time.monotonic()
                    with pytest.raises((ResultsUnavailable, RedisError)):
                        await call()
                    took.append(time.monotonic() - started)
            finally:
                redis_server.resume()
            return took
        finally:
            await connection.close()

    # Generous, yet a retried timeout (redis-py's default retries with backoff) would not fit.
    assert all(t < 0.6 for t in run(scenario()))


@pytest.mark.redis
def test_the_store_and_the_shared_decisions_are_served_side_by_side(redis_server):
    async def scenario():
        clock = FakeClock()
        store = RedisResultStore(redis_server.url, clock=clock)
        writer = SharedDecisionMemory(redis_server.url)
        reader = SharedDecisionMemory(redis_server.url)
        try:
            assert await store.start()
            await writer.start()
            await store.put_many(
                [row("P1", "r1", reported_at_us=1, expires_at_us=clock.now_us + US_PER_DAY)]
            )
            writer.remember("d-1", ORDER, WARNED, "v1")
            found = await eventually(lambda: reader.lookup("d-1"))
            results = await store.get_patient("P1")
            return found.patient_id, [r.result_id for r in results["K"]]
        finally:
            await store.close()
            await writer.close()
            await reader.close()

    assert run(scenario()) == ("P1", ["r1"])


@pytest.mark.redis
def test_a_cluster_url_is_served_by_redis_py_cluster(redis_cluster):
    async def scenario():
        connection = RedisConnection(redis_cluster.url, connect_timeout_s=0.5, timeout_s=0.5)
        try:
            assert connection.pipe is None
            assert await connection.start()
            await connection.client.set("{p}k", "v")
            return await connection.client.get("{p}k")
        finally:
            await connection.close()

    assert run(scenario()) == b"v"


def run(coro):
    return asyncio.run(coro)
