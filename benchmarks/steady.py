"""What the soak (``soak.py``) and the fault run (``faults.py``) share: a steady open-loop
load in the background, a feed trickle, a sampler of the server process, a Redis that
can be killed, frozen and restarted, and flags passed only when ``cds serve`` has them.

The load is the bench's own Python driver (``driver.py``), open loop on a fixed
schedule, not h2load: h2load is closed loop only (no request rate), so it would
saturate the server instead of offering the steady rate a soak needs, and its latency
hides stalls (coordinated omission). Each driver runs with ``--raw``, so every call's
due time, latency or error code comes back, and the caller cuts them by minute (the
soak) or by fault phase (the fault run). Driver processes start on a shared
``time.monotonic()`` instant, so consecutive windows follow each other without a gap.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.procs import (
    ServerProcess,
    cpu_seconds,
    free_port,
    process_tree,
    rss_bytes,
    runqueue_wait_seconds,
)
from benchmarks.run import ROOT, Env, cds_command

PUT_RESULTS = "/cds.v1.ResultFeedService/PutResults"


def log(msg: str, tag: str = "steady") -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- flags


def supported(env: Env, args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` (``--flag value`` pairs and bare ``--switch``es) without the flags this
    tree's ``cds serve`` does not have, and the flags left out. Other helpers add flags
    (``--drain-seconds``) in parallel: a run must measure today's tree, not fail on it."""
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        takes_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        group = args[i : i + 2] if takes_value else [flag]
        if flag in env.serve_flags:
            kept += group
        else:
            dropped.append(flag)
        i += len(group)
    return kept, dropped


# --------------------------------------------------------------------------- servers


def tree_env(env: Env, tree: Path | None) -> dict[str, str]:
    """The server's environment: this checkout's cds, or ``tree``'s (a before/after run)."""
    out = env.subprocess_env()
    if tree is not None:
        out["PYTHONPATH"] = str(tree)
    return out


def start_cds(
    env: Env,
    catalog: Path,
    name: str,
    extra: list[str],
    *,
    tree: Path | None = None,
    timeout: float = 90.0,
) -> tuple[ServerProcess, str, str]:
    """``cds serve`` on free ports, unpinned; (process, gRPC target, metrics host:port)."""
    port, mport = free_port(), free_port()
    cmd = cds_command(env, catalog, port, mport, extra)
    if tree is not None:
        cmd.insert(1, "-P")  # else `-m cds` finds the working directory's cds first
    server = ServerProcess(cmd, cpus=None, log=env.tmp / f"{name}.log", env=tree_env(env, tree))
    target = f"127.0.0.1:{port}"
    server.wait_serving(target, timeout=timeout)
    return server, target, f"127.0.0.1:{mport}"


def start_bare(env: Env, name: str) -> tuple[ServerProcess, str]:
    """The bench's bare empty server (``grpc.aio.server()``, grpc's defaults): the stack's
    own behaviour, for comparing what cds does on SIGTERM."""
    cmd = [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
    server = ServerProcess(cmd, cpus=None, log=env.tmp / f"{name}.log", env=env.subprocess_env())
    port = server.wait_port_line()
    return server, f"127.0.0.1:{port}"


def workers_of(pid: int) -> list[int]:
    """The worker processes of a ``--workers N`` parent (its direct children running
    ``cds.runtime.worker``)."""
    out = []
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"cds.runtime.worker" in cmdline:
                out.append(child)
    return out


def tree_counts(pid: int) -> tuple[int, int]:
    """Threads and open file descriptors of the process tree (leak watch)."""
    threads = fds = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            threads += len(os.listdir(f"/proc/{p}/task"))
            fds += len(os.listdir(f"/proc/{p}/fd"))
    return threads, fds


class Redis:
    """A redis-server of our own on a free port: killed (-9) and restarted on the same
    port and directory, frozen (SIGSTOP) and resumed. ``aof`` turns on
    ``appendonly yes``/``appendfsync everysec``, so a restart reloads what was written."""

    def __init__(self, env: Env, name: str, *, aof: bool = False) -> None:
        self.env = env
        self.name = name
        self.port = free_port()
        self.dir = env.tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*"):
            if old.is_file():
                old.unlink()
        self.aof = aof
        self.proc: ServerProcess | None = None
        self.starts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> float:
        """Start (or restart) and wait until it answers; seconds that took."""
        t0 = time.monotonic()
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else [
            "--appendonly", "no"
        ]  # fmt: skip
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--dir", str(self.dir), *persistence]  # fmt: skip
        self.starts += 1
        self.proc = ServerProcess(
            cmd,
            cpus=None,
            log=self.env.tmp / f"{self.name}-{self.starts}.log",
            env=dict(os.environ),
        )
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    # loading an AOF answers LOADING errors until done
                    if client.ping() and int(client.info("persistence").get("loading", 0)) == 0:
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server not up after {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()
        return time.monotonic() - t0

    def kill9(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait()
        self.proc.stop()  # closes its log

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.stop()


# --------------------------------------------------------------------------- load


@dataclass
class Calls:
    """Every call of a load, times in seconds after the load's own start (``t0``)."""

    ok_due: np.ndarray
    latency_ms: np.ndarray
    err_due: np.ndarray
    err_codes: list[str]
    marked: np.ndarray  # per answer (as ok_due): it contained the mark (e.g. degraded)
    sent: int = 0
    late: int = 0
    dropped: int = 0
    driver_errors: list[str] = field(default_factory=list)

    def between(self, lo: float, hi: float) -> dict[str, Any]:
        """What the client saw of the calls due in [lo, hi)."""
        ok = (self.ok_due >= lo) & (self.ok_due < hi)
        lat = self.latency_ms[ok]
        errs = Counter(
            code for due, code in zip(self.err_due, self.err_codes, strict=True) if lo <= due < hi
        )
        marked = int(self.marked[ok].sum())
        out: dict[str, Any] = {
            "from_s": round(lo, 3),
            "to_s": round(hi, 3),
            "ok": int(ok.sum()),
            "failed": sum(errs.values()),
            "errors": dict(errs),
            "marked": marked,
        }
        if lat.size:
            out |= {
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "p999_ms": float(np.percentile(lat, 99.9)),
                "max_ms": float(lat.max()),
            }
        return out

    def answered_in(self, lo: float, hi: float) -> tuple[int, int]:
        """Answers that *arrived* in [lo, hi) (due time + latency), and how many of them
        carried the mark: what the client was told while a fault lasted."""
        done = self.ok_due + self.latency_ms / 1000
        inside = (done >= lo) & (done < hi)
        return int(inside.sum()), int(self.marked[inside].sum())


def _arr(b64: str) -> np.ndarray:
    return np.frombuffer(array("q", base64.b64decode(b64)).tobytes(), dtype=np.int64)


class Load:
    """An open-loop load of ``rate`` calls/s for ``seconds``, from ``procs`` driver
    processes (one channel, so one connection, each) that start at ``t0``."""

    def __init__(
        self,
        env: Env,
        target: str,
        bodies: Path,
        rate: float,
        seconds: float,
        *,
        procs: int = 1,
        t0: float | None = None,
        mark: str = "",
        timeout_s: float = 2.0,
    ) -> None:
        self.env, self.target, self.bodies = env, target, bodies
        self.rate, self.seconds, self.procs = rate, seconds, max(1, procs)
        self.t0 = time.monotonic() + 3.0 if t0 is None else t0
        self.mark, self.timeout_s = mark, timeout_s
        self._popen: list[subprocess.Popen[str]] = []

    def start(self) -> Load:
        for k in range(self.procs):
            cmd = [sys.executable, "-m", "benchmarks.driver", "--target", self.target,
                   "--bodies", str(self.bodies), "--rate", str(self.rate / self.procs),
                   "--duration", str(self.seconds), "--warmup", "0",
                   "--timeout", str(self.timeout_s), "--start-at", str(self.t0),
                   "--phase", str(k / self.rate), "--raw"]  # fmt: skip
            if self.mark:
                cmd += ["--mark", self.mark]
            self._popen.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=self.env.subprocess_env(),
                    cwd=ROOT,
                )
            )
        return self

    def result(self) -> Calls:
        ok_due, lat, err_due, marked = [], [], [], []
        codes: list[str] = []
        sent = late = dropped = 0
        problems: list[str] = []
        for p in self._popen:
            try:
                stdout, stderr = p.communicate(
                    timeout=self.seconds + self.t0 - time.monotonic() + 120
                )
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            if p.returncode != 0:
                problems.append(stderr[-2000:])
                continue
            o = json.loads(stdout)
            shift = o["start"] - self.t0  # the driver's phase
            ok_due.append(_arr(o["raw_due_us"]) / 1e6 + shift)
            lat.append(_arr(o["raw_latency_us"]) / 1e3)
            err_due.append(_arr(o["raw_error_due_us"]) / 1e6 + shift)
            codes += o["raw_error_codes"]
            marked.append(np.frombuffer(base64.b64decode(o["raw_marked"]), dtype=np.int8) > 0)
            sent += o["sent"]
            late += o["late"]
            dropped += o["dropped"]

        def cat(xs: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0)

        if not marked:
            marked = [np.zeros(0, dtype=bool)]

        return Calls(cat(ok_due), cat(lat), cat(err_due), codes, cat(marked), sent, late,
                     dropped, problems)  # fmt: skip

    def kill(self) -> None:
        for p in self._popen:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- feed


class Feed(threading.Thread):
    """PutResults as a LIS feed trickles them, in the background: ``batch`` results every
    ``batch / rate`` seconds, re-sending results of the preload (the same keys, so the
    store's size stays put). Each call's time, status and accepted count is kept: what
    the feed saw of a fault."""

    def __init__(self, target: str, batches: list[bytes], rate: float, t0: float) -> None:
        super().__init__(daemon=True, name="feed")
        self.target, self.batches, self.rate, self.t0 = target, batches, rate, t0
        self.stop_event = threading.Event()
        self.calls: list[tuple[float, str, int]] = []  # (s after t0, code, accepted)

    def run(self) -> None:
        from cds.v1 import result_feed_pb2

        if not self.batches or self.rate <= 0:
            return
        per_batch = len(result_feed_pb2.PutResultsRequest.FromString(self.batches[0]).results)
        interval = per_batch / self.rate
        with grpc.insecure_channel(self.target) as channel:
            call = channel.unary_unary(PUT_RESULTS)
            i = 0
            next_at = max(self.t0, time.monotonic())
            while not self.stop_event.is_set():
                wait_until(next_at)
                at = time.monotonic() - self.t0
                try:
                    raw = call(self.batches[i % len(self.batches)], timeout=5.0)
                    accepted = result_feed_pb2.PutResultsResponse.FromString(raw).accepted
                    self.calls.append((at, "OK", accepted))
                except grpc.RpcError as exc:
                    self.calls.append((at, exc.code().name, 0))
                i += 1
                next_at += interval

    def between(self, lo: float, hi: float) -> dict[str, Any]:
        seen = [(c, n) for at, c, n in self.calls if lo <= at < hi]
        return {
            "calls": len(seen),
            "codes": dict(Counter(c for c, _ in seen)),
            "accepted": sum(n for _, n in seen),
        }

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def feed_batches(batches: list[bytes], size: int, count: int) -> list[bytes]:
    """``count`` PutResults bodies of ``size`` results cut from the preload's batches."""
    from cds.v1 import result_feed_pb2

    out: list[bytes] = []
    for body in batches:
        results = list(result_feed_pb2.PutResultsRequest.FromString(body).results)
        for i in range(0, len(results), size):
            out.append(
                result_feed_pb2.PutResultsRequest(results=results[i : i + size]).SerializeToString()
            )
            if len(out) >= count:
                return out
    return out


# --------------------------------------------------------------------------- sampler


class Sampler(threading.Thread):
    """Every ``every`` seconds: the server tree's RSS, CPU seconds, threads and fds, and
    the noise: the seconds its threads waited for a CPU (schedstat) and the load average.
    On a shared machine a window whose server waited long measured the neighbours."""

    def __init__(self, pid: int, t0: float, every: float = 5.0) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid, self.t0, self.every = pid, t0, every
        self.samples: list[dict[str, float]] = []
        self.stop_event = threading.Event()

    def sample(self) -> dict[str, float]:
        threads, fds = tree_counts(self.pid)
        s = {
            "t_s": round(time.monotonic() - self.t0, 2),
            "rss_mib": rss_bytes(self.pid) / 2**20,
            "cpu_s": cpu_seconds(self.pid),
            "threads": threads,
            "fds": fds,
            "runqueue_wait_s": runqueue_wait_seconds(self.pid),
            "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
        }
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            self.sample()

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def preload_via(target: str, batches: list[bytes], inflight: int = 4) -> dict[str, Any]:
    """The bench's own ingest (PutResults, batches retried as a feed would)."""
    from benchmarks.run import _ingest

    return asyncio.run(_ingest(target, batches, inflight))
