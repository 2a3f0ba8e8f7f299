"""Abuse limits of a real server: message size, overload shedding, the deadline cap.

String and list limits of the contract are proven field by field in test_e2e_check.py
and test_e2e_feed.py (INVALID_ARGUMENT naming the field; a PutResults row refused alone).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cds.config import ServeConfig
from cds.decisions.recorder import NoRecorder
from cds.metrics import Metrics
from cds.results.redis_store import RedisResultStore
from cds.rollout.state import CatalogState
from cds.runtime.server import CdsServer
from cds.v1 import order_check_pb2_grpc, result_feed_pb2, result_feed_pb2_grpc, types_pb2
from tests.support.protos import DAY_US, check_request, now_us, result
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.server import TEST_CATALOG, running_server

pytestmark = pytest.mark.e2e

MAX_RPCS = 2
MAX_STREAMS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--max-concurrent-rpcs", str(MAX_RPCS), "--max-streams", str(MAX_STREAMS)]
    with running_server(tmp_path_factory.mktemp("limits"), extra_args=args) as s:
        yield s


def test_a_request_over_the_size_limit_is_refused_and_the_server_keeps_serving(server):
    huge = result_feed_pb2.PutResultsRequest(results=[result("x" * (9 * 1024 * 1024))])
    with pytest.raises(grpc.RpcError) as info:
        server.feed.PutResults(huge, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.check.Check(check_request(), timeout=5).decision == types_pb2.DECISION_ALLOW


def test_the_largest_contract_valid_put_results_is_admitted(server):
    # 10,000 rows, every string at 128 characters: ~5.4 MB, over gRPC's 4 MiB default.
    s = "x" * 124
    reported = now_us() - DAY_US
    rows = [
        result(f"{i:04d}{s}", patient_id=f"{i % 100:04d}{s}", item_code="K" * 128,
               institution_id="H" * 128, reported_at_us=reported)
        for i in range(10_000)
    ]  # fmt: skip
    request = result_feed_pb2.PutResultsRequest(results=rows)
    assert request.ByteSize() > 4 * 1024 * 1024
    assert server.feed.PutResults(request, timeout=30).accepted == 10_000


def _watch(server):
    health = health_pb2_grpc.HealthStub(server.channel)
    return health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)


def test_held_health_watches_never_take_the_room_of_checks(server):
    """Unauthenticated Watch streams last as long as their client likes: held up to their
    own bound they leave every Check slot free; beyond it a new stream (Watch or
    reflection) is refused at once, and the room comes back when they end."""
    watches = [_watch(server) for _ in range(MAX_STREAMS)]
    try:
        for watch in watches:  # each is admitted and streaming: its slot is held
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        calls = [server.check.Check.future(check_request(), timeout=10) for _ in range(MAX_RPCS)]
        assert [c.result().decision for c in calls] == [types_pb2.DECISION_ALLOW] * MAX_RPCS
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            next(_watch(server))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams" in info.value.details()
        assert time.monotonic() - started < 5  # refused, not parked until the deadline
        reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        with pytest.raises(grpc.RpcError) as info:
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            next(reflection.ServerReflectionInfo(iter([ask]), timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cds_streams_refused_total 2.0" in server.metrics_text()
    finally:
        for watch in watches:
            watch.cancel()
    # The streams' room comes back once the watches end.
    deadline = time.monotonic() + 5
    while True:
        try:
            assert next(_watch(server)).status == health_pb2.HealthCheckResponse.SERVING
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "stream slots not released"
            time.sleep(0.05)


# -- the deadline cap, against a Redis that stops answering -------------------------------


def test_the_deadline_cap_ends_a_feed_call_stuck_on_a_hung_store(redis_server, tmp_path):
    """The cap (0.3 s) fires before the store's own write timeout (1 s), whatever deadline
    the client set or none: a hung Redis cannot hold a concurrency slot longer than that.

    In process only because `cds serve --results redis://` is not wired yet; the server,
    Redis and the gRPC calls are all real.
    """
    config = ServeConfig(
        catalog=str(TEST_CATALOG),
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        decision_log=None,
        grace=0,
        drain_seconds=0,
        deadline_cap=0.3,
    )

    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        metrics = Metrics()
        store = RedisResultStore(redis_server.url)
        await store.start()
        state = CatalogState.load(config.catalog, metrics=metrics)
        server = CdsServer(config, state, store, metrics, NoRecorder())
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        feed = result_feed_pb2_grpc.ResultFeedServiceStub(channel)
        put = result_feed_pb2.PutResultsRequest(
            results=[result("R1", patient_id="cap-1", reported_at_us=now_us() - DAY_US)]
        )
        withdraw = result_feed_pb2.WithdrawResultsRequest(
            results=[types_pb2.ResultRef(patient_id="cap-1", result_id="R1")]
        )
        outcomes = []
        try:
            await feed.PutResults(put, timeout=10)
            redis_server.pause()
            # No client deadline at all, then one far longer than the cap.
            calls = (
                lambda: feed.PutResults(put),
                lambda: feed.WithdrawResults(withdraw, timeout=30),
            )
            for call in calls:
                try:
                    await call()
                    outcomes.append((grpc.StatusCode.OK, ""))
                except grpc.aio.AioRpcError as e:
                    outcomes.append((e.code(), e.details() or ""))
            redis_server.resume()
            check = order_check_pb2_grpc.OrderCheckServiceStub(channel)
            await check.Check(check_request(), timeout=5)  # still serving
            outcomes.append(((await feed.WithdrawResults(withdraw, timeout=10)).withdrawn, ""))
        finally:
            redis_server.resume()
            await channel.close()
            await server.stop()
        return outcomes

    capped = (grpc.StatusCode.DEADLINE_EXCEEDED, RESULT_CAP_MESSAGE)
    assert asyncio.run(scenario()) == [capped, capped, (1, "")]


RESULT_CAP_MESSAGE = (
    "the results store did not answer within the server's deadline cap; retry the batch"
)


def test_unary_calls_beyond_the_cap_are_refused_at_once_and_counted(redis_server, tmp_path):
    """--max-concurrent-rpcs bounds unary calls by itself: with two feed calls stuck on
    a hung store, a third call is refused RESOURCE_EXHAUSTED at once (the EMR fails
    open), in the metrics, while a health Watch is still admitted on its own bound."""
    config = ServeConfig(
        catalog=str(TEST_CATALOG),
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        decision_log=None,
        grace=0,
        drain_seconds=0,
        deadline_cap=3.0,
        max_concurrent_rpcs=MAX_RPCS,
        max_streams=1,
    )

    async def scenario() -> tuple[grpc.StatusCode, str, float, int]:
        metrics = Metrics()
        store = RedisResultStore(redis_server.url)
        await store.start()
        state = CatalogState.load(config.catalog, metrics=metrics)
        server = CdsServer(config, state, store, metrics, NoRecorder())
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        feed = result_feed_pb2_grpc.ResultFeedServiceStub(channel)
        check = order_check_pb2_grpc.OrderCheckServiceStub(channel)
        put = result_feed_pb2.PutResultsRequest(
            results=[result("R1", patient_id="cap-2", reported_at_us=now_us() - DAY_US)]
        )
        try:
            redis_server.pause()
            stuck = [asyncio.ensure_future(feed.PutResults(put, timeout=10)) for _ in range(2)]
            while server.admission.inflight < MAX_RPCS:
                await asyncio.sleep(0.01)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            started = time.monotonic()
            try:
                await check.Check(check_request(), timeout=10)
                outcome = (grpc.StatusCode.OK, "")
            except grpc.aio.AioRpcError as e:
                outcome = (e.code(), e.details() or "")
            elapsed = time.monotonic() - started
            watch.cancel()
            redis_server.resume()
            await asyncio.gather(*stuck, return_exceptions=True)
            exhausted = metrics.rpc("cds.v1.OrderCheckService", "Check").handled(
                grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            refused = int(exhausted._value.get())
        finally:
            redis_server.resume()
            await channel.close()
            await server.stop()
        return (*outcome, elapsed, refused)

    code, details, elapsed, refused = asyncio.run(scenario())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("server busy: --max-concurrent-rpcs 2 calls in progress")
    assert elapsed < 1.0
    assert refused == 1
