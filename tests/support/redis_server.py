"""A real, throwaway redis-server per test: no mocks for the shared store.

The server runs on a free loopback port with persistence off in a temporary
directory; it can be stopped, restarted on the same port (fault tests) and paused
with SIGSTOP (a hung Redis) and resumed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is valid and free too."""
    while True:
        port = _free_port()
        if port <= 55535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH")
        self.directory = directory
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0, extra: list[str] | None = None) -> None:
        assert REDIS_SERVER is not None
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory), *(extra or [])],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log")
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the server (SIGKILL: a crash, nothing flushed) and wait for it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
                self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Same port, empty data (persistence is off): a Redis that came back."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server; import ``redis_server_fixture`` to use it as ``redis_server``."""
    if REDIS_SERVER is None:
        pytest.skip(
            "redis-server not on PATH (CI installs it in .ci/run; apt install redis-server)"
        )
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="redis_module", scope="module")
def redis_module_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a whole test module (servers that outlive a test share it);
    import ``redis_module_fixture`` to use it as ``redis_module``."""
    if REDIS_SERVER is None:
        pytest.skip(
            "redis-server not on PATH (CI installs it in .ci/run; apt install redis-server)"
        )
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisCluster:
    """Three master nodes (no replicas) formed with ``redis-cli --cluster create``."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [RedisServer(directory / f"node{i}", _free_cluster_port()) for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout_s: float = 20.0) -> None:
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.start(extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not all(self._state_ok(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _state_ok(port: int) -> bool:
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True
        ).stdout
        return "cluster_state:ok" in info

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(name="redis_cluster")
def redis_cluster_fixture(tmp_path: Path) -> Iterator[RedisCluster]:
    """A running 3-node Redis Cluster; import ``redis_cluster_fixture`` to use it."""
    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli not on PATH (CI installs them in .ci/run)")
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
