"""The metrics endpoint over real sockets: only ``GET /metrics``, bounded connections,
idle ones closed.

Tests parametrised with ``prometheus_client`` run the same checks against
``start_http_server``, the endpoint this one replaced: they are expected to fail there
(strict xfail), which is the defect (issue 14, defect 6) they prove fixed.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cds.metrics import Metrics
from cds.runtime.metrics_http import MetricsServer

KNOWN_METRIC = "cds_item_decisions_total"


class Endpoint(Protocol):
    server_port: int

    def close(self) -> None: ...


class _Legacy:
    """``start_http_server`` under the same two names, to run the same tests on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._httpd, self._thread = start_http_server(0, "127.0.0.1", registry=registry)
        self.server_port: int = self._httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


LEGACY_FAILS = pytest.mark.xfail(strict=True, reason="start_http_server: the defect fixed")
BOTH = pytest.mark.parametrize(
    "kind", ["bounded", pytest.param("prometheus_client", marks=LEGACY_FAILS)]
)


@pytest.fixture
def start() -> Iterator[Callable[..., Endpoint]]:
    started: list[Endpoint] = []

    def run(
        kind: str = "bounded", registry: CollectorRegistry | None = None, **limits: Any
    ) -> Endpoint:
        registry = registry if registry is not None else Metrics().registry
        endpoint: Endpoint
        if kind == "bounded":
            endpoint = MetricsServer(registry, "127.0.0.1", 0, **limits)
        else:
            endpoint = _Legacy(registry)
        started.append(endpoint)
        return endpoint

    yield run
    for endpoint in started:
        endpoint.close()


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read to the server's close: status, lower-cased headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def get(port: int, path: str = "/metrics", method: str = "GET", extra: str = "") -> Any:
    return exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), False on our timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("kind", ["bounded", "prometheus_client"])
def test_get_metrics_answers_the_exposition_text(start, kind):
    port = start(kind).server_port
    status, headers, body = get(port)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert KNOWN_METRIC.encode() in body


def test_the_answer_closes_the_connection_and_a_query_string_is_ignored(start):
    port = start().server_port
    status, headers, body = get(port, "/metrics?name[]=anything")
    assert status == 200
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert KNOWN_METRIC.encode() in body


def test_head_answers_the_headers_without_the_body(start):
    port = start().server_port
    status, headers, body = get(port, method="HEAD")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


def test_openmetrics_and_gzip_are_served_when_asked_for(start):
    port = start().server_port
    accept = "Accept: application/openmetrics-text; version=1.0.0\r\nAccept-Encoding: gzip\r\n"
    status, headers, body = get(port, extra=accept)
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).rstrip().endswith(b"# EOF")


@BOTH
@pytest.mark.parametrize("path", ["/", "/other", "/metricsx", "/metrics/", "/favicon.ico"])
def test_any_other_path_is_not_found(start, kind, path):
    port = start(kind).server_port
    status, _, body = get(port, path)
    assert status == 404
    assert KNOWN_METRIC.encode() not in body


@BOTH
@pytest.mark.parametrize("method", ["OPTIONS", "POST", "PUT", "DELETE"])
def test_other_methods_are_not_allowed_and_say_what_is(start, kind, method):
    port = start(kind).server_port
    body = "Content-Length: 5\r\n\r\nhello" if method in ("POST", "PUT") else "\r\n"
    raw = f"{method} /metrics HTTP/1.1\r\nHost: x\r\n{body}".encode()
    status, headers, answer = exchange(port, raw)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert KNOWN_METRIC.encode() not in answer


def test_a_request_that_is_not_http_is_a_bad_request(start):
    port = start().server_port
    assert exchange(port, b"HELLO\r\n\r\n")[0] == 400


def test_a_request_head_over_the_limit_is_refused(start):
    port = start(max_head_bytes=1024).server_port
    raw = b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"a" * 2048 + b"\r\n\r\n"
    assert exchange(port, raw)[0] == 431


@BOTH
def test_300_half_open_connections_cost_no_threads_and_metrics_still_answer(start, kind):
    port = start(kind).server_port
    before = threading.active_count()
    with contextlib.ExitStack() as stack:
        idle = []
        for _ in range(300):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest of the head
            idle.append(sock)
        time.sleep(0.5)  # every one accepted by now
        grown = threading.active_count() - before
        status, _, body = get(port)
        assert status == 200
        assert KNOWN_METRIC.encode() in body
        assert grown <= 2, f"{grown} threads for 300 idle connections"
        for sock in idle:
            sock.settimeout(0.001)
        held = sum(not closed_by_server(sock) for sock in idle)
        assert held <= 16, f"the server holds {held} idle connections"


@BOTH
def test_an_idle_connection_is_closed_after_the_timeout(start, kind):
    port = start(kind, timeout_s=0.5).server_port
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        began = time.monotonic()
        assert closed_by_server(sock)
        assert time.monotonic() - began >= 0.4


def test_a_head_trickled_in_is_closed_after_the_timeout_not_per_byte(start):
    port = start(timeout_s=0.5).server_port
    with socket.create_connection(("127.0.0.1", port), timeout=0.1) as sock:
        began = time.monotonic()
        closed = False
        while not closed and time.monotonic() - began < 3:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
            closed = closed_by_server(sock)
        assert closed
        assert time.monotonic() - began < 2


class _Blocking(Collector):
    """A collector that holds every scrape until released (a slow or stuck one)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def collect(self) -> Iterator[Metric]:
        self.entered.set()
        self.release.wait(10)
        yield GaugeMetricFamily("blocking_probe", "x", value=1)


def test_at_the_cap_with_every_slot_answering_a_newcomer_is_closed_at_once(start):
    registry = CollectorRegistry()
    blocking = _Blocking()
    registry.register(blocking)
    port = start(registry=registry, max_connections=2).server_port
    answers: list[int] = []
    scrapers = [threading.Thread(target=lambda: answers.append(get(port)[0])) for _ in range(2)]
    for scraper in scrapers:
        scraper.start()
    assert blocking.entered.wait(5)
    time.sleep(0.2)  # the second scrape's head is in too
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            assert closed_by_server(sock)
    finally:
        blocking.release.set()
        for scraper in scrapers:
            scraper.join(10)
    assert answers == [200, 200]


def test_close_joins_the_threads_and_frees_the_port(start):
    before = threading.active_count()
    endpoint = MetricsServer(Metrics().registry, "127.0.0.1", 0)
    port = endpoint.server_port
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # one left open
        assert threading.active_count() == before + 2
        endpoint.close()
        assert threading.active_count() == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_port_in_use_is_an_error_to_the_caller(start):
    port = start().server_port
    with pytest.raises(OSError):
        MetricsServer(Metrics().registry, "127.0.0.1", port)
