"""Server processes under test: start pinned to a core, wait until they serve, read their
RSS and CPU time from /proc, stop them. Also what the machine is, for the results file."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """Prefix ``taskset -c CPUS`` when pinning is asked for and possible."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *cmd]
    return cmd


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (a multi-worker server forks its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return out


def all_cpus() -> str:
    return ",".join(str(c) for c in sorted(cpu_set(None)))


def cpu_set(cpus: str | None) -> set[int]:
    """ "0" or "0,1" as a set; None means every CPU of the machine."""
    if cpus is None:
        return set(range(os.cpu_count() or 1))
    return {int(c) for c in cpus.split(",")}


def set_cpus(pid: int, cpus: str | None) -> None:
    """Affinity of every thread of ``pid`` and its descendants (``taskset -a -p``)."""
    mask = cpu_set(cpus)
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), mask)


def rss_bytes(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total


def cpu_seconds(pid: int) -> float:
    """User+system CPU of the process tree so far (threads included)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def python_thread_cpu_seconds(pid: int) -> float:
    """On-CPU time so far (schedstat, ns) of the server process's own Python threads.

    Why: both the bare server and the service are bound by the thread that holds the
    GIL (its event loop runs at 100 % of a core at saturation while gRPC's C threads
    idle at a few per cent each), so a call's cost to throughput is the CPU its Python
    threads spend on it, not the process's. gRPC names its C threads
    (``event_engine``, ``grpc_global_tim``, ...); Python 3.11 leaves its own threads
    with the executable's name, the main thread's. Child processes are not counted
    (they hold no GIL of the server's)."""
    main = Path(f"/proc/{pid}/comm")
    try:
        name = main.read_text().strip()
    except OSError:
        return 0.0
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if (task / "comm").read_text().strip() == name:
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process tree's threads spent runnable but waiting for a CPU (schedstat).

    On a shared machine this is the honest noise figure: a server that waited 30% of
    a point for its core measured the neighbours as much as itself."""
    total = 0
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(task.read_text().split()[1])
    return total / 1e9


def core_busy_seconds(cpus: str | None) -> float:
    """Busy time so far of the given CPUs ("0" or "0,1"; None = all), from /proc/stat.

    Minus the server's own CPU time over a point, this is what *other* processes took
    from the server's core: the neighbours' share on a shared machine."""
    wanted = None if cpus is None else {f"cpu{c}" for c in cpus.split(",")}
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if wanted is not None and name not in wanted:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in vals[:8])
        busy += user + nice + system + irq + softirq + steal
    return busy / CLK_TCK


class ServerProcess:
    """One server under test; ``stop()`` is always called (context manager)."""

    def __init__(self, cmd: list[str], *, cpus: str | None, log: Path, env: dict[str, str]):
        # None means every CPU, said explicitly: a child would otherwise inherit whatever
        # mask the runner has at that moment (CPU 1 in the pinned layout).
        self.cmd = pinned(cmd, cpus if cpus is not None else all_cpus())
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_port_line(self, timeout: float = 30.0) -> int:
        """For the empty server, which prints ``PORT n`` once it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("PORT "):
                    return int(line.split()[1])
            self._check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"no PORT line from {self.cmd}")

    def wait_serving(self, target: str, timeout: float = 60.0) -> None:
        """Poll grpc health until the overall status is SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{self.cmd} not SERVING after {timeout}s; see {self.log_path}")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server exited {self.proc.returncode}: {self.cmd}\n{tail}")

    def set_cpus(self, cpus: str | None) -> None:
        """Move every thread of the running process tree to ``cpus`` (None: all CPUs).

        The bench alternates one set of preloaded servers between the pinned and the
        unpinned layout instead of starting (and preloading) them twice; threads created
        later inherit their creator's mask, so this is the same as starting there."""
        set_cpus(self.pid, cpus)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def python_cpu(self) -> float:
        return python_thread_cpu_seconds(self.pid)

    def runqueue_wait(self) -> float:
        return runqueue_wait_seconds(self.pid)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes ``python -P -m cds`` import ``tree``'s cds (A/B runs
    serve several source trees side by side; ``-P`` keeps the working directory out)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + os.pathsep + os.environ.get("AB_EXTRA_PYTHONPATH", "")
    return env


def machine_info() -> dict[str, Any]:
    import google.protobuf
    from google.protobuf.internal import api_implementation

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    h2load = ""
    if shutil.which("h2load"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            h2load = subprocess.run(
                ["h2load", "--version"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
    mem_total = ""
    with contextlib.suppress(OSError):
        mem_total = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory": mem_total,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "protobuf_backend": api_implementation.Type(),
        "h2load": h2load,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
