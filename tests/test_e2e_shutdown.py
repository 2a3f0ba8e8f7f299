"""SIGTERM with a drain window, against real server processes (one, and `--workers 2`).

What a load balancer needs: health says NOT_SERVING at once, calls go on being answered
for ``--drain-seconds`` while it moves traffic away, then new calls are refused
UNAVAILABLE (which a standard gRPC retry policy retries elsewhere) and the process exits 0.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cds.v1 import order_check_pb2_grpc, types_pb2
from tests.support.protos import check_request
from tests.support.redis_server import (  # noqa: F401
    RedisServer,
    redis_module_fixture,
    redis_server_fixture,
)
from tests.support.server import RunningServer, running_server

pytestmark = pytest.mark.e2e

DRAIN_S = 1.5
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Caller(threading.Thread):
    """One EMR connection calling Check back to back: when it was last answered, and how
    its first failed call ended."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address)
        self.stub = order_check_pb2_grpc.OrderCheckServiceStub(self.channel)
        self.answered = 0
        self.last_ok = 0.0
        self.failed: grpc.StatusCode | None = None
        self.failed_at = 0.0

    def run(self) -> None:
        while self.failed is None:
            try:
                answer = self.stub.Check(check_request(), timeout=5)
                assert answer.decision == types_pb2.DECISION_ALLOW
                self.answered += 1
                self.last_ok = time.monotonic()
            except grpc.RpcError as e:
                self.failed, self.failed_at = e.code(), time.monotonic()
        self.channel.close()


def drain_under_load(server: RunningServer, callers: int = 3) -> None:
    """SIGTERM while ``callers`` call Check: health NOT_SERVING within the window while
    every Check is still answered, then UNAVAILABLE, then exit 0."""
    threads = [Caller(server.address) for _ in range(callers)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    sent = time.monotonic()
    server.signal(signal.SIGTERM)
    assert next(watch).status == NOT_SERVING  # at once: load balancers start moving away
    noticed = time.monotonic() - sent
    assert noticed < DRAIN_S / 2, noticed
    # Within the window: health says NOT_SERVING, and calls are still served.
    probe = grpc.insecure_channel(server.address)
    try:
        health = health_pb2_grpc.HealthStub(probe)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
        check = order_check_pb2_grpc.OrderCheckServiceStub(probe)
        answered_during = 0
        while time.monotonic() - sent < DRAIN_S * 0.8:
            assert check.Check(check_request(), timeout=5).decision == types_pb2.DECISION_ALLOW
            answered_during += 1
        assert answered_during > 0
    finally:
        probe.close()
    for t in threads:
        t.join(timeout=DRAIN_S + 20)
        assert not t.is_alive()
        # Every caller was answered until the window's end, then refused UNAVAILABLE.
        assert t.failed == grpc.StatusCode.UNAVAILABLE, t.failed
        assert t.last_ok - sent > DRAIN_S * 0.8, t.last_ok - sent
        assert t.failed_at - sent >= DRAIN_S * 0.95, t.failed_at - sent
    watch.cancel()
    assert server.stop() == 0


def test_sigterm_keeps_serving_through_the_drain_window_with_health_not_serving(tmp_path):
    args = ("--drain-seconds", str(DRAIN_S))
    with running_server(tmp_path, extra_args=args) as server:
        drain_under_load(server)
    log = server.log_text()
    assert "stopping: health NOT_SERVING" in log, log
    assert log.rstrip().endswith("stopped")


@pytest.mark.redis
def test_every_worker_keeps_serving_through_the_drain_window(tmp_path, redis_module):
    args = ("--workers", "2", "--results", redis_module.url, "--drain-seconds", str(DRAIN_S))
    with running_server(tmp_path, extra_args=args) as server:
        drain_under_load(server, callers=4)
    log = server.log_text()
    assert log.count("stopping: health NOT_SERVING") == 2, log  # each worker drained
    assert log.rstrip().endswith("cds.runtime.supervisor: stopped")


def test_a_second_sigterm_ends_the_drain_window_at_once(tmp_path):
    with running_server(tmp_path, extra_args=("--drain-seconds", "60")) as server:
        assert server.check.Check(check_request(), timeout=5).decision == types_pb2.DECISION_ALLOW
        server.signal(signal.SIGTERM)
        server.wait_for_log("stopping: health NOT_SERVING")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        assert time.monotonic() - started < 10
        assert server.stop() == 0
    assert "the drain window ends now" in server.log_text()


def test_an_open_health_watch_does_not_hold_the_exit_for_the_grace(tmp_path):
    """Watch streams never end by themselves; grpc's stop would wait the whole --grace."""
    with running_server(tmp_path, extra_args=("--grace", "60")) as server:
        watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=90)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert time.monotonic() - started < 10
        watch.cancel()
        assert server.stop() == 0
