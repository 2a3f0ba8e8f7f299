"""Start the real server (``python -m cds serve``) as a subprocess on free ports.

End-to-end tests talk to exactly what an operator runs: the console entry point, a
catalogue file on disk, real sockets. The server binds port 0 and announces its ports
in its start-up log line; its stderr goes to a file the test can read afterwards (to
check what it logged, and to show why it failed to start). Leaving the context sends
SIGTERM and asserts the process drained and exited 0 (with ``--drain-seconds 0`` unless
the test passes its own).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cds.v1 import catalog_admin_pb2_grpc, order_check_pb2_grpc, result_feed_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "tests" / "data"
TEST_CATALOG = DATA / "catalog_v1.json"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_READY = re.compile(r"on (\S+):(\d+), metrics on http://(\S+):(\d+)/metrics")
_HOOKS = re.compile(r"CDS Hooks on (\S+)/cds-services")


def server_env() -> dict[str, str]:
    """The child imports this checkout's ``cds``, whatever is installed in the venv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("CDS_SERVER", None)
    env.pop("CDS_TOKEN", None)
    return env


def cds_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cds", *args]


def run_cds(*args: str, stdin: str = "", timeout: float = 120) -> str:
    """Run a ``cds`` command of this checkout; its stdout, asserting it exited 0."""
    done = subprocess.run(
        cds_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def write_catalog(path: Path, catalog: dict[str, Any] | Path) -> Path:
    if isinstance(catalog, Path):
        shutil.copyfile(catalog, path)
    else:
        path.write_text(json.dumps(catalog, ensure_ascii=False), encoding="utf-8")
    return path


def load_test_catalog() -> dict[str, Any]:
    return json.loads(TEST_CATALOG.read_text(encoding="utf-8"))


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    address: str
    metrics_url: str
    catalog_path: Path
    log_path: Path
    channel: grpc.Channel
    stopped: bool = field(default=False)
    killed: bool = field(default=False)
    hooks_url: str = ""  # the CDS Hooks base URL, with --hooks-listen

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``cds <args> --server <this server>``, as a user types it."""
        return subprocess.run(
            cds_command(*args, "--server", self.address),
            input=stdin,
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=60,
        )

    def hooks(
        self,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        """``GET`` (no body) or ``POST`` (JSON ``body`` or raw ``data``) to ``<base><path>``;
        the status and the decoded JSON answer."""
        if body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(
            self.hooks_url + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b"null")

    @property
    def check(self) -> order_check_pb2_grpc.OrderCheckServiceStub:
        return order_check_pb2_grpc.OrderCheckServiceStub(self.channel)

    @property
    def feed(self) -> result_feed_pb2_grpc.ResultFeedServiceStub:
        return result_feed_pb2_grpc.ResultFeedServiceStub(self.channel)

    @property
    def admin(self) -> catalog_admin_pb2_grpc.CatalogAdminServiceStub:
        return catalog_admin_pb2_grpc.CatalogAdminServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    def health_status(self, service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return self.health.Check(request, timeout=5).status

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def metrics_status(self, path: str = "/metrics", method: str = "GET") -> int:
        """The HTTP status the metrics endpoint answers ``method path`` with."""
        url = self.metrics_url.removesuffix("/metrics") + path
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5):
                return 200
        except urllib.error.HTTPError as e:
            return e.code

    @property
    def decision_log_path(self) -> Path:
        """The default ``--decision-log``, relative to the server's working directory."""
        return self.log_path.parent / "var" / "decisions.jsonl"

    def decision_log_records(self) -> list[dict[str, Any]]:
        text = self.decision_log_path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        """Until ``text`` has appeared ``count`` times in the log (e.g. a SIGHUP's outcome)."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} not logged:\n{self.log_text()}")
            time.sleep(0.02)

    def write_catalog(self, catalog: dict[str, Any] | Path) -> None:
        """Replace the file the server reloads from (atomically, as an admin would)."""
        tmp = self.catalog_path.with_suffix(".tmp")
        write_catalog(tmp, catalog)
        os.replace(tmp, self.catalog_path)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL, as a crash would: no drain, no close, no flush by the server."""
        self.killed = self.stopped = True
        self.channel.close()
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if not self.stopped:
            self.stopped = True
            self.channel.close()
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        return self.process.returncode


@contextmanager
def running_server(
    workdir: Path,
    catalog: dict[str, Any] | Path = TEST_CATALOG,
    extra_args: Sequence[str] = (),
    channel_credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[RunningServer]:
    """``channel_credentials``: for a TLS server, what ``server.channel`` (and the start-up
    health probe) connect with; the server certificate must be valid for 127.0.0.1."""
    workdir.mkdir(parents=True, exist_ok=True)
    catalog_path = write_catalog(workdir / "catalog.json", catalog)
    log_path = workdir / "server.log"
    command = cds_command(
        "serve",
        "--catalog",
        str(catalog_path),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--grace",
        "5",
        # No drain window unless a test asks for one: every test's server stops by SIGTERM.
        "--drain-seconds",
        "0",
        *extra_args,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_env(), cwd=workdir
        )
    try:
        match = _wait_ready(process, log_path)
        address = f"{match.group(1)}:{match.group(2)}"
        metrics_url = f"http://{match.group(3)}:{match.group(4)}/metrics"
        channel = (
            grpc.insecure_channel(address)
            if channel_credentials is None
            else grpc.secure_channel(address, channel_credentials)
        )
        server = RunningServer(process, address, metrics_url, catalog_path, log_path, channel)
        hooks = _HOOKS.search(log_path.read_text(encoding="utf-8", errors="replace"))
        server.hooks_url = hooks.group(1) if hooks else ""
        status = server.health_status()
        assert status == health_pb2.HealthCheckResponse.SERVING, status
    except BaseException:
        process.kill()
        process.wait()
        raise
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0 or server.killed, f"server exited {code}:\n{server.log_text()}"


def _wait_ready(process: subprocess.Popen[bytes], log_path: Path) -> re.Match[str]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        match = _READY.search(text)
        if match:
            return match
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode} at start:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"server not ready in {START_TIMEOUT_S}s:\n{log_path.read_text()}")
