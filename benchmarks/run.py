"""``make bench``: every benchmark of issues 4, 5 and 12 in one run, so ratios are
measured against the same machine state.

Sections (``--only`` picks some, comma-separated; the default is all but percall):
  engine   Engine.evaluate alone, µs per order (needs cds.rules.engine and cds.catalog)
  empty    the bare (grpc defaults) and options-matched empty gRPC servers
  service  cds serve: preload ≥1M results (ingest rate, RSS), the all-WARN check, then
           h2load per order class and open-loop points, alternating with the empty servers
  reload   a 10,000-entry catalogue reloaded during open-loop load (needs service)
  redis    the Redis store against the in-process one at the same fixed rate (issue 5)
  workers  --workers 2 against 1, on Redis (issue 5)
  percall  instructions per Check under callgrind, bare vs service (slow; benchmarks.percall)
A section whose feature has not landed yet is skipped with the reason in the results.

Two layouts on 2 cores, the same servers moved between them: unpinned (server and
drivers free on both cores, as a user runs it; the targets are judged there) and pinned
(server on CPU 0, drivers and this runner on CPU 1). In each, the bare empty server,
the options-matched one and the service take turns, three rounds, and the targets are
medians of the rounds' ratios. Results go to ``benchmarks/results/`` (results.json,
RESULTS.md, latency_vs_rate.png); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hdrh.histogram import HdrHistogram

from benchmarks import h2load, metrics, report
from benchmarks.bodies import write_bodies
from benchmarks.catalog_gen import grow_catalog, synthetic_catalog
from benchmarks.driver import new_histogram
from benchmarks.empty_server import canned_response, stack_settings
from benchmarks.procs import (
    ServerProcess,
    core_busy_seconds,
    cpu_set,
    free_port,
    machine_info,
    pinned,
)
from benchmarks.workload import (
    WARN_CLASS,
    CatalogView,
    Order,
    Population,
    build_orders,
    build_population,
    build_warn_orders,
    grpc_frame,
    load_catalog_json,
    representative_orders,
)
from cds.v1 import catalog_admin_pb2, order_check_pb2, types_pb2

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CATALOG = ROOT / "catalog" / "catalog.json"
SECTIONS = ("engine", "empty", "service", "reload", "redis", "workers", "percall")
DEFAULT_SECTIONS = SECTIONS[:-1]  # percall (valgrind) is slow: only when asked for
PUT_RESULTS = "/cds.v1.ResultFeedService/PutResults"


@dataclass
class Config:
    """Scale of one run. ``full`` is what `make bench` measures; ``quick`` is the smoke test."""

    results: int = 1_000_000
    patients: int = 300_000
    batch: int = 5_000
    ingest_inflight: int = 4
    orders: int = 20_000
    warn_orders: int = 2_000  # distinct all-WARN bodies, cycled by the open-loop driver
    point_s: float = 6.0  # measured seconds per open-loop rate
    warmup_s: float = 1.0
    # Open loop: fractions of each server's *own* h2load saturation (mix), and absolute
    # rates a hospital or a province would send (see report.NEEDS), for every server.
    own_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    fixed_rates: tuple[float, ...] = (200.0, 1000.0)
    # bare/matched/service alternated this many times per layout; the targets are medians
    rounds: int = 3
    h2load_s: float = 3.0
    h2load_warmup_s: float = 1.0
    h2load_families: int = 5  # how many of the mix's order families h2load runs (of 5)
    h2load_clients: int = 4  # issue 12 measured with -c 4 -m 8
    h2load_streams: int = 8
    # an h2load run while other processes took more of the server's cores than this is
    # "disturbed" and left out of the medians (see h2load_mix)
    disturbed_cores: float = 0.3
    ceiling_s: float = 3.0  # Python driver closed loop
    ceiling_concurrency: int = 64
    driver_procs: int = 1
    sample_responses: int = 1_000
    sample_warn: int = 300
    reload_entries: int = 10_000
    reload_fraction: float = 0.3  # of the bare empty server's saturation, pinned
    reload_run_s: float = 12.0
    reload_at_s: float = 5.0
    engine_calls: int = 20_000
    engine_repeats: int = 7
    redis_results: int = 1_000_000
    timeout_s: float = 2.0
    # percall (callgrind): a smaller preload, since the store's size hardly changes the
    # instructions of one Check but preloading under valgrind is slow
    percall_results: int = 30_000
    percall_patients: int = 10_000
    percall_calls: int = 2_000
    percall_warmup_calls: int = 200
    percall_concurrency: int = 4


QUICK = Config(
    results=3_000,
    patients=1_000,
    batch=1_000,
    orders=200,
    warn_orders=50,
    point_s=1.0,
    warmup_s=0.3,
    own_fractions=(0.5,),
    fixed_rates=(200.0,),
    rounds=1,
    h2load_s=1.0,
    h2load_warmup_s=0.0,
    h2load_families=1,
    ceiling_s=1.0,
    ceiling_concurrency=16,
    sample_responses=100,
    sample_warn=20,
    reload_entries=500,
    reload_run_s=3.0,
    reload_at_s=1.0,
    engine_calls=500,
    engine_repeats=3,
    redis_results=3_000,
    percall_results=2_000,
    percall_patients=500,
    percall_calls=40,
    percall_warmup_calls=10,
)


@dataclass
class Env:
    """What the run found on this machine and in this tree."""

    cfg: Config
    out: Path
    tmp: Path
    server_cpus: str | None
    driver_cpus: str | None
    profile: bool = False
    features: dict[str, str | bool] = field(default_factory=dict)
    serve_flags: set[str] = field(default_factory=set)

    def subprocess_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        return env


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- detection


def detect(env: Env) -> None:
    """Which sections can run: a section needs its feature to have landed in the tree."""
    f = env.features
    proc = subprocess.run(
        [sys.executable, "-m", "cds", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env.subprocess_env(),
        timeout=60,
    )
    if proc.returncode == 0:
        f["service"] = True
        env.serve_flags = set(re.findall(r"--[a-z][a-z-]*", proc.stdout))
    else:
        f["service"] = "`python -m cds serve` is not there yet (core service not merged)"
    has_engine = importlib.util.find_spec("cds.rules.engine") is not None
    has_catalog = importlib.util.find_spec("cds.catalog") is not None
    f["engine"] = (
        True
        if has_engine and has_catalog
        else "cds.rules.engine / cds.catalog not there yet (engine or catalogue not merged)"
    )
    if f["service"] is not True:
        f["redis"] = f["service"]
    elif "--results" not in env.serve_flags:
        f["redis"] = "`cds serve` has no --results flag yet (Redis store not merged)"
    elif not shutil.which("redis-server"):
        f["redis"] = "redis-server not on PATH (apt-get install redis-server)"
    else:
        f["redis"] = True
    if f["redis"] is not True:
        f["workers"] = f"needs the Redis store: {f['redis']}"
    elif "--workers" not in env.serve_flags:
        f["workers"] = "`cds serve` has no --workers flag yet"
    else:
        f["workers"] = True
    f["h2load"] = (
        True if h2load.available() else "h2load not on PATH (apt-get install nghttp2-client)"
    )


# --------------------------------------------------------------------------- drivers


def hist_summary(hist: HdrHistogram) -> dict[str, float]:
    if hist.get_total_count() == 0:
        return {"count": 0}
    return {
        "count": hist.get_total_count(),
        "mean_us": hist.get_mean_value(),
        "p50_us": hist.get_value_at_percentile(50),
        "p90_us": hist.get_value_at_percentile(90),
        "p99_us": hist.get_value_at_percentile(99),
        "p999_us": hist.get_value_at_percentile(99.9),
        "max_us": hist.get_max_value(),
    }


def run_driver(env: Env, args: list[str], timeout: float) -> dict[str, Any]:
    cmd = pinned([sys.executable, "-m", "benchmarks.driver", *args], env.driver_cpus)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env.subprocess_env(), timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"driver failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _reap(proc: subprocess.Popen[str]) -> None:
    """A driver still running after its point (an error elsewhere) is ended, by its pid."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def open_point(
    env: Env,
    target: str,
    bodies: Path,
    rate: float,
    server: ServerProcess | None,
    *,
    duration: float | None = None,
    warmup: float | None = None,
    raw: bool = False,
    start_at: float | None = None,
) -> dict[str, Any]:
    """One offered rate, spread over ``driver_procs`` processes that start together.

    ``start_at`` (time.monotonic(), shared by all processes on Linux) fixes when the
    schedule begins, for a caller that must act at a known point in the run."""
    cfg = env.cfg
    duration = cfg.point_s if duration is None else duration
    warmup = cfg.warmup_s if warmup is None else warmup
    procs = max(1, cfg.driver_procs)
    if start_at is None and procs > 1:
        start_at = time.monotonic() + 1.5
    common = [
        "--target",
        target,
        "--bodies",
        str(bodies),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--timeout",
        str(cfg.timeout_s),
    ]
    cpu0 = server.cpu() if server else 0.0
    wait0 = server.runqueue_wait() if server else 0.0
    core0 = core_busy_seconds(env.server_cpus)
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        cmds: list[subprocess.Popen[str]] = []
        for k in range(procs):
            extra = ["--rate", str(rate / procs)]
            if start_at is not None:
                extra += ["--start-at", str(start_at), "--phase", str(k / rate)]
            if raw:
                extra.append("--raw")
            cmds.append(
                subprocess.Popen(
                    pinned(
                        [sys.executable, "-m", "benchmarks.driver", *common, *extra],
                        env.driver_cpus,
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env.subprocess_env(),
                )
            )
            stack.callback(_reap, cmds[-1])
        outs = []
        for p in cmds:
            stdout, stderr = p.communicate(timeout=duration + warmup + 120)
            if p.returncode != 0:
                raise RuntimeError(f"driver failed:\n{stderr[-3000:]}")
            outs.append(json.loads(stdout))
    wall = time.monotonic() - t0
    server_cpu = (server.cpu() - cpu0) / wall if server else None
    server_wait = (server.runqueue_wait() - wait0) / wall if server else None
    core_busy = (core_busy_seconds(env.server_cpus) - core0) / wall
    driver_cpu = sum(o["driver_cpu_frac"] for o in outs)
    # What *other* processes took of the server's cores (in cores): unpinned, the server
    # may run on every core, so the driver's own share is taken off as well.
    others = None
    if server_cpu is not None:
        others = core_busy - server_cpu - (0.0 if env.server_cpus else driver_cpu)
        others = max(0.0, others)
    hist, from_send = new_histogram(), new_histogram()
    errors: Counter[str] = Counter()
    for o in outs:
        hist.decode_and_add(base64.b64decode(o["hist"]))
        from_send.decode_and_add(base64.b64decode(o["hist_from_send"]))
        errors.update(o["errors"])
    point = {
        "offered_rps": rate,
        "achieved_rps": hist.get_total_count() / duration,
        "sent": sum(o["sent"] for o in outs),
        "ok": sum(o["ok"] for o in outs),
        "errors": dict(errors),
        "late": sum(o["late"] for o in outs),
        "dropped": sum(o["dropped"] for o in outs),
        "max_send_lag_us": max(o["max_send_lag_us"] for o in outs),
        "driver_cpu_frac": driver_cpu,
        "server_cpu_frac": server_cpu,
        # Server CPU per completed call over the whole point: the least noisy cost figure.
        "server_cpu_us_per_call": (server_cpu * wall / max(1, sum(o["ok"] for o in outs)) * 1e6)
        if server_cpu is not None
        else None,
        "server_wait_frac": server_wait,
        "server_core_others_frac": others,
        "mean_response_bytes": outs[0]["mean_response_bytes"],
        **hist_summary(hist),
        "from_send": hist_summary(from_send),
    }
    if raw:
        point["raw"] = [
            (
                o["start"],
                array("q", base64.b64decode(o["raw_due_us"])),
                array("q", base64.b64decode(o["raw_latency_us"])),
            )
            for o in outs
        ]
    return point


def python_ceiling(env: Env, target: str, bodies: Path, server: ServerProcess) -> dict[str, Any]:
    """The Python driver closed loop: the most one driver process pushes at this server."""
    cfg = env.cfg
    cpu0, t0 = server.cpu(), time.monotonic()
    out = run_driver(
        env,
        [
            "--target",
            target,
            "--bodies",
            str(bodies),
            "--concurrency",
            str(cfg.ceiling_concurrency),
            "--duration",
            str(cfg.ceiling_s),
            "--warmup",
            str(min(1.0, cfg.warmup_s)),
        ],
        timeout=cfg.ceiling_s + 120,
    )
    hist = new_histogram()
    hist.decode_and_add(base64.b64decode(out.pop("hist")))
    out.update(hist_summary(hist))
    out["server_cpu_frac"] = (server.cpu() - cpu0) / (time.monotonic() - t0)
    # The driver cannot be pushed past a Python server here, so its own ceiling is
    # extrapolated from its CPU use: calls per second per core it spent.
    out["driver_ceiling_est_rps"] = out["rps"] / max(0.01, out["driver_cpu_frac"])
    log(
        f"  python driver closed loop: {out['rps']:.0f}/s (driver cpu "
        f"{out['driver_cpu_frac']:.0%}, server cpu {out['server_cpu_frac']:.0%}; "
        f"driver ceiling ~{out['driver_ceiling_est_rps']:.0f}/s)"
    )
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _per_call_mean(fams: list[dict[str, Any]], key: str) -> float | None:
    """A per-call cost of the mix: its families' costs weighted by share (the mean cost
    of a call drawn from the mix; its inverse is the mix's harmonic-mean rate). A class
    of one family (all-WARN, share 0) is that family's."""
    chosen = [f for f in fams if f["share"] > 0] or fams
    weights = [float(f["share"]) if f["share"] > 0 else 1.0 for f in chosen]
    costs: list[float] = [f[key] for f in chosen if f.get(key) is not None]
    if not chosen or len(costs) != len(chosen):
        return None
    return sum(w * c for w, c in zip(weights, costs, strict=True)) / sum(weights)


def h2load_mix(
    env: Env,
    target: str,
    frames: list[tuple[str, Path, float]],
    metrics_listen: str | None,
    *,
    clients: int | None = None,
    streams: int | None = None,
    server: ServerProcess | None = None,
) -> dict[str, Any]:
    """h2load once per order class, the mix's throughput from its families, grpc codes
    verified. ``frames`` are (class, frame file, share of the mix); a class with share 0
    (the all-WARN class) is a row of its own and not part of the mix.

    With ``server``, each run also records the server's CPU and what other processes
    took of the server's cores meanwhile; a run where they took more than
    ``cfg.disturbed_cores`` (or that measured nothing) is marked not ``valid``: on this
    shared machine a neighbour can take the server's core for whole seconds (a bare
    server measured 2 req/s once), and such a run measures the neighbour. The mix is
    valid when all its families are."""
    cfg = env.cfg
    clients = cfg.h2load_clients if clients is None else clients
    streams = cfg.h2load_streams if streams is None else streams
    before = metrics.check_codes(metrics_listen) if metrics_listen else None
    fams = []
    for name, path, share in frames:
        cpu0 = server.cpu() if server else 0.0
        py0 = server.python_cpu() if server else 0.0
        core0 = core_busy_seconds(env.server_cpus)
        kids0 = _children_cpu()
        t0 = time.monotonic()
        r = h2load.run(
            target,
            path,
            duration=cfg.h2load_s,
            warmup=cfg.h2load_warmup_s,
            clients=clients,
            streams=streams,
            cpus=env.driver_cpus,
        )
        wall = time.monotonic() - t0
        r.update(family=name, share=share)
        valid = bool(r.get("rps")) and "error" not in r
        if server is not None:
            server_cpu = (server.cpu() - cpu0) / wall
            h2_cpu = (_children_cpu() - kids0) / wall
            busy = (core_busy_seconds(env.server_cpus) - core0) / wall
            others = max(0.0, busy - server_cpu - (0.0 if env.server_cpus else h2_cpu))
            r.update(server_cpu_frac=server_cpu, h2load_cpu_frac=h2_cpu, others_cores=others)
            if r.get("rps"):
                # What bounds throughput (see procs.python_thread_cpu_seconds), per call
                r["python_cpu_us_per_call"] = 1e6 * (server.python_cpu() - py0) / wall / r["rps"]
                r["server_cpu_us_per_call"] = 1e6 * server_cpu / r["rps"]
            valid = valid and others <= cfg.disturbed_cores
        r["valid"] = valid
        fams.append(r)
        log(
            f"  h2load {name:10s}: {r.get('rps', 0):8.0f}/s failed {r.get('failed')}"
            + (f" others {r['others_cores']:.2f} cores" if "others_cores" in r else "")
            + ("" if valid else "  DISTURBED: not counted")
        )
    after = metrics.check_codes(metrics_listen) if metrics_listen else None
    mix = [(f["family"], f["share"], f.get("rps", 0)) for f in fams if f["share"] > 0]
    out: dict[str, Any] = {
        "connections": clients,
        "streams_per_connection": streams,
        "families": fams,
        "rps": {f["family"]: f.get("rps", 0.0) for f in fams},
        "valid": {f["family"]: f["valid"] for f in fams},
        "mix_rps": h2load.mix_rps(mix),
        "mix_valid": all(f["valid"] for f in fams if f["share"] > 0),
        "python_cpu_us_per_call": _per_call_mean(fams, "python_cpu_us_per_call"),
        "server_cpu_us_per_call": _per_call_mean(fams, "server_cpu_us_per_call"),
        "http_failed": sum(f.get("failed", 0) + f.get("errored", 0) for f in fams),
    }
    if before is not None and after is not None:
        delta = after - before
        out["grpc_codes"] = dict(delta)
        out["grpc_not_ok"] = sum(v for k, v in delta.items() if k != "OK")
    elif metrics_listen:
        out["grpc_codes"] = "server exposes no grpc_server_handled_total"
    else:
        out["grpc_codes"] = "empty server: canned OK response, grpc-status 0 by construction"
        out["grpc_not_ok"] = 0
    return out


# --------------------------------------------------------------------------- profile


def profile_point(
    env: Env, target: str, bodies: Path, rate: float, server: ServerProcess, name: str
) -> dict[str, Any]:
    """py-spy on the server during an extra, unmeasured open-loop point.

    Samples only threads holding the GIL (``--gil``): a grpc.aio server's poller
    threads sit idle in C most of the time and would drown the handler's profile.
    ``--native`` shows grpc's Cython and C frames, which otherwise all collapse into
    asyncio's ``Handle._run``.
    py-spy pauses the server for each sample (native stacks need it), so this point is
    extra and unmeasured; py-spy itself is pinned to the driver core. Writes the
    collapsed stacks to results/ and keeps the top frames by own samples."""
    venv_spy = Path(sys.executable).parent / "py-spy"
    spy_bin = shutil.which("py-spy") or (str(venv_spy) if venv_spy.exists() else None)
    if spy_bin is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    duration = max(2, round(env.cfg.point_s))
    raw = env.out / f"profile-{name}.txt"
    cmd = pinned(
        [
            spy_bin,
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(duration),
            "--rate",
            "250",
            "--gil",
            "--native",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        env.driver_cpus,
    )
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        open_point(env, target, bodies, rate, server, duration=duration + 1, warmup=0.0)
    finally:
        _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        return {"error": err[-1000:]}
    shares = profile_shares(raw)
    log(f"  profile ({name}): {shares['samples']} samples -> {raw.name}")
    for t in shares["top_own"][:8]:
        log(f"    {t['share']:5.1%} {t['frame']}")
    return {"file": raw.name, "rate": rate, **shares}


def profile_shares(raw: Path, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the top frames by own samples, every function by
    inclusive samples (each counted once per stack, line numbers dropped), and cds's own
    functions inclusive, outside the CLI's entry frames."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    cds_inclusive: Counter[str] = Counter()
    total = 0
    text = raw.read_text() if raw.exists() else ""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        funcs = {re.sub(r":\d+\)$", ")", f) for f in frames}
        for func in funcs:
            inclusive[func] += n
            if "(cds/" in func and "cds/cli.py" not in func and "cds/__main__.py" not in func:
                cds_inclusive[func] += n

    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "share": n / total} for f, n in c.most_common(top)] if total else []

    return {
        "samples": total,
        "top_own": rows(own),
        "top_inclusive": rows(inclusive),
        "top_cds_inclusive": rows(cds_inclusive),
    }


# --------------------------------------------------------------------------- service


RETRYABLE = (
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


async def _ingest(target: str, batches: list[bytes], inflight: int) -> dict[str, Any]:
    """PutResults as a feed would send them: a batch the server asks to retry (its store
    did not answer within the deadline cap, or it is shedding load) is sent again, up
    to 5 times, and the retries are counted (and their time is in the rate)."""
    from cds.v1 import result_feed_pb2

    accepted = rejected = expired = retries = 0
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(PUT_RESULTS)
        queue = list(reversed(batches))

        async def worker() -> None:
            nonlocal accepted, rejected, expired, retries
            while queue:
                body = queue.pop()
                for attempt in range(6):
                    try:
                        raw = await call(body, timeout=120)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE or attempt == 5:
                            raise
                        retries += 1
                        await asyncio.sleep(0.2 * (attempt + 1))
                resp = result_feed_pb2.PutResultsResponse.FromString(raw)
                accepted += resp.accepted
                rejected += resp.rejected
                expired += resp.expired
                errors.extend(resp.errors[: max(0, 5 - len(errors))])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        wall = time.perf_counter() - t0
    return {
        "accepted": accepted,
        "rejected": rejected,
        "expired": expired,
        "retried_batches": retries,
        "errors": errors,
        "seconds": wall,
    }


def preload(
    env: Env, server: ServerProcess, target: str, metrics_listen: str, pop: Population
) -> dict[str, Any]:
    rss0 = server.rss()
    cached0 = metrics.gauge(metrics_listen, "cds_results_cached") or 0
    res = asyncio.run(_ingest(target, pop.batches, env.cfg.ingest_inflight))
    time.sleep(1.0)  # let the server settle (a post-load gc.freeze, say)
    rss1 = server.rss()
    cached = metrics.gauge(metrics_listen, "cds_results_cached")
    held = (cached - cached0) if cached is not None else res["accepted"]
    out = {
        "results_sent": pop.n_results,
        "patients": pop.n_patients,
        "batch_size": env.cfg.batch,
        "inflight_batches": env.cfg.ingest_inflight,
        **res,
        "results_per_s": res["accepted"] / res["seconds"] if res["seconds"] else 0,
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "results_cached": cached,
        "rss_per_result_bytes": (rss1 - rss0) / held if held else None,
    }
    log(
        f"  ingest {res['accepted']} results in {res['seconds']:.1f}s = "
        f"{out['results_per_s']:.0f}/s; RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB, "
        f"{out['rss_per_result_bytes'] or 0:.0f} B/result (cached {cached})"
    )
    return out


def sample_responses(target: str, orders: list[Order], n: int) -> dict[str, Any]:
    """Send part of the mix through a real stub: response sizes, decisions, reasons per class.

    This is what the empty server's canned response is sized from, and it checks that
    the workload does what the README says (a third of lab orders hit, and so on)."""
    from cds.v1 import order_check_pb2_grpc

    sizes, decisions, reasons = [], Counter(), Counter()
    per_kind: dict[str, Counter[str]] = {}
    errors: Counter[str] = Counter()
    with grpc.insecure_channel(target) as ch:
        stub = order_check_pb2_grpc.OrderCheckServiceStub(ch)
        for o in orders[:n]:
            try:
                resp = stub.Check(order_check_pb2.CheckRequest.FromString(o.body), timeout=5)
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                continue
            sizes.append(resp.ByteSize())
            decisions[types_pb2.Decision.Name(resp.decision)] += 1
            codes = {r.code for item in resp.items for r in item.reasons}
            reasons.update(codes)
            kc = per_kind.setdefault(o.kind, Counter())
            kc["n"] += 1
            kc.update(codes)
    return {
        "n": len(sizes),
        "errors": dict(errors),
        "mean_bytes": sum(sizes) / len(sizes) if sizes else 0,
        "median_bytes": float(np.median(sizes)) if sizes else 0,
        "decisions": dict(decisions),
        "reasons": dict(reasons),
        "per_kind": {k: dict(v) for k, v in sorted(per_kind.items())},
    }


def class_responses(target: str, frames: list[tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    """Each class's representative body through a real stub once: the decision and size
    it answers with (the empty servers answer that body with as many bytes)."""
    from cds.v1 import order_check_pb2_grpc

    out: dict[str, dict[str, Any]] = {}
    with grpc.insecure_channel(target) as ch:
        stub = order_check_pb2_grpc.OrderCheckServiceStub(ch)
        for name, body in frames:
            resp = stub.Check(order_check_pb2.CheckRequest.FromString(body), timeout=5)
            out[name] = {
                "request_bytes": len(body),
                "response_bytes": resp.ByteSize(),
                "decision": types_pb2.Decision.Name(resp.decision),
                "reasons": sorted({r.code for item in resp.items for r in item.reasons}),
            }
    return out


def check_warn_class(
    target: str, orders: list[Order], n: int, decision_log: Path | None
) -> dict[str, Any]:
    """Is the all-WARN class what it claims? Every sampled call must answer WARN and its
    decision must reach the decision log (found there by ``decision_id``), so the class
    really measures a decision-log record per call."""
    from cds.v1 import order_check_pb2_grpc

    decisions: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    ids: list[str] = []
    sizes: list[int] = []
    with grpc.insecure_channel(target) as ch:
        stub = order_check_pb2_grpc.OrderCheckServiceStub(ch)
        for o in orders[:n]:
            resp = stub.Check(order_check_pb2.CheckRequest.FromString(o.body), timeout=5)
            decisions[types_pb2.Decision.Name(resp.decision)] += 1
            reasons.update({r.code for item in resp.items for r in item.reasons})
            sizes.append(resp.ByteSize())
            if resp.decision == types_pb2.DECISION_WARN:
                ids.append(resp.decision_id)
    logged = 0
    if decision_log is not None:
        # The log's writer gathers records for a few tens of ms before it writes.
        deadline = time.monotonic() + 10
        wanted = set(ids)
        while True:
            found = set()
            for path in sorted(decision_log.parent.glob(decision_log.name + "*")):
                with contextlib.suppress(OSError):
                    for line in path.read_bytes().splitlines():
                        rec = json.loads(line)
                        if rec.get("type") == "decision" and rec.get("decision_id") in wanted:
                            found.add(rec["decision_id"])
            logged = len(found)
            if logged == len(wanted) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    sampled = sum(decisions.values())
    return {
        "sampled": sampled,
        "decisions": dict(decisions),
        "reasons": dict(reasons),
        "warn": decisions.get("DECISION_WARN", 0),
        "logged": logged,
        "decision_log": str(decision_log) if decision_log else None,
        "mean_response_bytes": sum(sizes) / len(sizes) if sizes else 0,
        "ok": bool(sampled) and decisions.get("DECISION_WARN", 0) == sampled == logged,
    }


def decision_log_path(env: Env, port: int) -> Path:
    return env.tmp / f"decisions-{port}.jsonl"


def cds_command(env: Env, catalog: Path, port: int, mport: int, extra: list[str]) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "cds",
        "serve",
        "--catalog",
        str(catalog),
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{mport}",
    ]
    if "--max-results" in env.serve_flags:
        cmd += ["--max-results", str(max(2 * env.cfg.results, 100_000))]
    if "--decision-log" in env.serve_flags:
        # Keep the default behaviour (WARN/BLOCK decisions are logged) but not in the tree.
        cmd += ["--decision-log", str(decision_log_path(env, port))]
    return cmd + extra


def start_service(
    env: Env, catalog: Path, name: str, extra: list[str] | None = None, *, cpus: str | None
) -> tuple[ServerProcess, str, str]:
    port, mport = free_port(), free_port()
    cmd = cds_command(env, catalog, port, mport, extra or [])
    server = ServerProcess(cmd, cpus=cpus, log=env.tmp / f"{name}.log", env=env.subprocess_env())
    target = f"127.0.0.1:{port}"
    server.wait_serving(target)
    return server, target, f"127.0.0.1:{mport}"


# --------------------------------------------------------------------------- reload


def reload_under_load(
    env: Env,
    target: str,
    active_catalog: Path,
    big_catalog: Path,
    bodies: Path,
    rate: float,
    server: ServerProcess,
) -> dict[str, Any]:
    """Open loop at a moderate rate; mid-run the catalogue file is swapped and reloaded."""
    cfg = env.cfg
    result: dict[str, Any] = {"rate": rate, "entries": cfg.reload_entries}
    staged = active_catalog.with_suffix(".staged.json")
    shutil.copyfile(big_catalog, staged)

    start_at = time.monotonic() + 3.0  # time for the driver to start and connect

    def do_reload() -> None:
        time.sleep(max(0.0, start_at + cfg.reload_at_s - time.monotonic()))
        os.replace(staged, active_catalog)
        with grpc.insecure_channel(target) as ch:
            call = ch.unary_unary(
                "/cds.v1.CatalogAdminService/ReloadCatalog",
                request_serializer=catalog_admin_pb2.ReloadCatalogRequest.SerializeToString,
                response_deserializer=catalog_admin_pb2.ReloadCatalogResponse.FromString,
            )
            t0 = time.monotonic()
            try:
                resp = call(catalog_admin_pb2.ReloadCatalogRequest(), timeout=30)
                result.update(
                    activated=resp.activated,
                    version=resp.version,
                    previous_version=resp.previous_version,
                    changes=len(resp.changes),
                )
            except grpc.RpcError as exc:
                result["reload_error"] = f"{exc.code().name}: {exc.details()}"
            t1 = time.monotonic()
        result["reload_start"], result["reload_end"] = t0, t1
        result["reload_ms"] = (t1 - t0) * 1000

    import threading

    th = threading.Thread(target=do_reload)
    th.start()
    pt = open_point(
        env,
        target,
        bodies,
        rate,
        server,
        duration=cfg.reload_run_s,
        warmup=0.0,
        raw=True,
        start_at=start_at,
    )
    th.join()
    raws = pt.pop("raw")
    before, during = new_histogram(), new_histogram()
    t0, t1 = result.get("reload_start"), result.get("reload_end")
    settle = min(1.0, cfg.reload_at_s / 2)  # the first calls of a run pay for connecting
    for start, dues, lats in raws:
        for due_us, lat_us in zip(dues, lats, strict=True):
            due = start + due_us / 1e6
            done = due + lat_us / 1e6
            v = max(1, lat_us)
            if t0 is not None and due <= t1 and done >= t0:
                during.record_value(v)
            elif t0 is not None and start + settle <= due < t0:
                before.record_value(v)
    result.update(
        failed_calls=sum(pt["errors"].values()) + pt["dropped"],
        errors=pt["errors"],
        dropped=pt["dropped"],
        whole_run=pt,
        before=hist_summary(before),
        during=hist_summary(during),
    )
    log(
        f"  reload of {cfg.reload_entries} entries: {result.get('reload_ms', -1):.0f} ms, "
        f"activated={result.get('activated')}, failed calls {result['failed_calls']}, "
        f"p99 before {before.get_value_at_percentile(99) / 1000:.2f} ms during "
        f"{during.get_value_at_percentile(99) / 1000:.2f} ms ({during.get_total_count()} calls)"
    )
    return result


# --------------------------------------------------------------------------- redis, workers


class RedisServer:
    def __init__(self, env: Env, cpus: str | None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = ServerProcess(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cpus=cpus,
            log=env.tmp / "redis.log",
            env=env.subprocess_env(),
        )
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()


# --------------------------------------------------------------------------- main


SERVERS = ("bare", "matched", "service")
# name -> (server CPUs, driver CPUs); unpinned first: it is how a user runs the service,
# and the layout the targets are judged in.
LAYOUTS: dict[str, tuple[str | None, str | None]] = {
    "unpinned": (None, None),
    "pinned": ("0", "1"),
}


@dataclass
class Under:
    """One server under test in the comparison: a process, where it listens, its metrics."""

    name: str  # bare | matched | service
    proc: ServerProcess
    target: str
    metrics: str | None = None


def layout_env(env: Env, layout: str) -> Env:
    server_cpus, driver_cpus = LAYOUTS[layout]
    if env.server_cpus is None and layout == "pinned":
        return env  # pinning impossible here (one CPU, no taskset): say so in the results
    return replace(env, server_cpus=server_cpus, driver_cpus=driver_cpus)


def own_rates(saturation: float, cfg: Config) -> list[dict[str, Any]]:
    """The open-loop points of one server: fractions of its own capacity and the fixed
    hospital rates, each labelled with what it is."""
    pts = [
        {"rate": round(saturation * f), "label": f"{f:.0%} of own capacity", "fraction": f}
        for f in cfg.own_fractions
    ]
    pts += [{"rate": round(r), "label": f"fixed {r:,.0f}/s", "fixed": r} for r in cfg.fixed_rates]
    return [p for p in sorted(pts, key=lambda p: p["rate"]) if p["rate"] >= 10]


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else 0.0


def measure_layout(
    env: Env,
    layout: str,
    servers: list[Under],
    frames: list[tuple[str, Path, float]],
    bodies: Path,
    warn_bodies: Path | None,
) -> dict[str, Any]:
    """Every server of the comparison in one layout, in alternation.

    The h2load rows run round by round (bare, matched, service; again; again) so drift
    on a shared machine hits every server alike, and each ratio is the median of the
    rounds' ratios. The open-loop point at half the bare server's saturation (the p99
    target) alternates the same way; the other points (fractions of each server's own
    capacity, the fixed rates) run once per server."""
    cfg = env.cfg
    lay: dict[str, Any] = {
        "server_cpus": env.server_cpus,
        "driver_cpus": env.driver_cpus,
        "pinned": env.server_cpus is not None,
    }
    log(
        f"layout {layout}: server CPUs {env.server_cpus or 'all'}, "
        f"driver CPUs {env.driver_cpus or 'all'}"
    )
    for s in servers:
        s.proc.set_cpus(env.server_cpus)
    os.sched_setaffinity(0, cpu_set(env.driver_cpus))  # the runner goes with the drivers
    use_h2load = env.features.get("h2load") is True

    lay["python_closed"] = {}
    for s in servers:
        log(f"  {s.name}: python driver closed loop")
        lay["python_closed"][s.name] = python_ceiling(env, s.target, bodies, s.proc)

    rounds: list[dict[str, Any]] = []
    if use_h2load:
        for r in range(cfg.rounds):
            row = {}
            for s in servers:
                log(f"  round {r + 1}/{cfg.rounds}: h2load {s.name}")
                row[s.name] = h2load_mix(env, s.target, frames, s.metrics, server=s.proc)
            rounds.append(row)
    lay["h2load_rounds"] = rounds
    sat: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    counted: dict[str, dict[str, int]] = {}

    def value(row: dict[str, Any], server: str, cls: str) -> float | None:
        """A round's figure for a class ("mix" too), or None if that run was disturbed."""
        h = row[server]
        if cls == "mix":
            return h["mix_rps"] if h.get("mix_valid", True) and h["mix_rps"] else None
        ok = h.get("valid", {}).get(cls, True) and h["rps"].get(cls)
        return h["rps"][cls] if ok else None

    classes = [*rounds[0][servers[0].name]["rps"], "mix"] if rounds else []
    for s in servers:
        if rounds:
            vals = {
                c: [v for row in rounds if (v := value(row, s.name, c)) is not None]
                for c in classes
            }
            per_class[s.name] = {c: median(v) if v else None for c, v in vals.items() if c != "mix"}
            sat[s.name], disturbed = capacity(
                vals["mix"], [row[s.name].get("mix_rps") for row in rounds]
            )
            if disturbed:
                lay.setdefault("saturation_disturbed", []).append(s.name)
            counted[s.name] = {c: len(v) for c, v in vals.items()}
        else:
            sat[s.name] = lay["python_closed"][s.name]["rps"]
    lay["saturation_rps"] = sat
    lay["saturation_from"] = (
        f"h2load mix, median of the undisturbed of {len(rounds)} rounds"
        if rounds
        else "python driver (no h2load)"
    )
    if lay.get("saturation_disturbed"):
        lay["saturation_from"] += (
            "; every round disturbed for "
            + ", ".join(lay["saturation_disturbed"])
            + ": all its rounds used"
        )
    lay["h2load_median"] = per_class
    lay["h2load_counted_rounds"] = counted
    if rounds and "bare" in sat:
        # Ratios per round, then the median: each round's servers saw the same neighbours.
        # A round counts for a class only when neither side of its ratio was disturbed.
        ratios: dict[str, dict[str, list[float]]] = {}
        for s in servers:
            if s.name == "bare":
                continue
            rs: dict[str, list[float]] = {}
            for c in classes:
                rs[c] = []
                for row in rounds:
                    b, x = value(row, "bare", c), value(row, s.name, c)
                    if b and x:
                        rs[c].append(x / b)
            ratios[s.name] = rs
        lay["ratios_vs_bare"] = {
            n: {c: {"rounds": v, "median": median(v) if v else None} for c, v in rs.items()}
            for n, rs in ratios.items()
        }

    half = round(sat.get("bare", 0) * 0.5)
    lay["half_rate"] = half
    lay["half"] = {s.name: [] for s in servers}
    if half >= 10:
        for r in range(cfg.rounds):
            for s in servers:
                log(f"  round {r + 1}/{cfg.rounds}: {s.name} at half the bare saturation")
                pt = safe_point(env, s.target, bodies, half, s.proc)
                lay["half"][s.name].append(pt)
        lay["half_median"] = {
            n: {
                k: median([p[k] for p in pts if p.get(k) is not None and not p.get("disturbed")])
                for k in ("p50_us", "p99_us", "p999_us", "server_cpu_us_per_call")
            }
            for n, pts in lay["half"].items()
        }

    lay["open"] = {}
    for s in servers:
        pts = []
        for spec in own_rates(sat.get(s.name, 0), cfg):
            log(f"  {s.name}: open loop {spec['label']}")
            pt = safe_point(env, s.target, bodies, spec["rate"], s.proc)
            pts.append(pt | {k: v for k, v in spec.items() if k != "rate"})
        lay["open"][s.name] = pts
    svc = next((s for s in servers if s.name == "service"), None)
    if svc is not None and warn_bodies is not None:
        # The worst case at the rates a hospital sends: every call a WARN and a log record.
        pts = []
        for r in cfg.fixed_rates:
            log(f"  service: all-WARN class open loop at {r:.0f}/s")
            pt = safe_point(env, svc.target, warn_bodies, r, svc.proc)
            pts.append(pt | {"label": f"fixed {r:,.0f}/s", "fixed": r})
        lay["warn_open"] = pts
    return lay


def capacity(undisturbed: list[float], every: list[float | None]) -> tuple[float, bool]:
    """A server's saturation rate: the median of its undisturbed rounds or, when
    neighbours disturbed every round, of all of them (flagged), so that a busy machine
    still gets its half-rate points instead of silently measuring none."""
    if undisturbed:
        return median(undisturbed), False
    measured = [v for v in every if v]
    return (median(measured), True) if measured else (0.0, False)


def safe_point(
    env: Env, target: str, bodies: Path, rate: float, server: ServerProcess
) -> dict[str, Any]:
    """An open-loop point whose driver failure is recorded as the point, not raised: one
    starved point on a busy machine should not throw away a 20-minute run."""
    try:
        pt = open_point(env, target, bodies, rate, server)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log(f"    {rate:8.0f}/s: driver failed: {str(exc)[-300:]}")
        return {
            "offered_rps": rate,
            "achieved_rps": 0.0,
            "count": 0,
            "failed": str(exc)[-2000:],
            "errors": {"driver failed": 1},
            "late": 0,
            "dropped": 0,
            "driver_cpu_frac": 0.0,
            "disturbed": True,
        }
    pt["disturbed"] = (pt.get("server_core_others_frac") or 0.0) > env.cfg.disturbed_cores
    _log_point(pt)
    return pt


def _log_point(pt: dict[str, Any]) -> None:
    log(
        f"    {pt['offered_rps']:8.0f}/s: achieved {pt['achieved_rps']:8.0f}/s "
        f"p50 {pt.get('p50_us', 0) / 1000:6.2f} ms p99 {pt.get('p99_us', 0) / 1000:7.2f} ms "
        f"late {pt['late']} dropped {pt['dropped']} err {sum(pt['errors'].values())} "
        f"cpu driver {pt['driver_cpu_frac']:.0%} server {pt['server_cpu_frac'] or 0:.0%} "
        f"others {pt['server_core_others_frac'] or 0:.2f} cores"
        + ("  DISTURBED" if pt.get("disturbed") else "")
    )


def start_empty(
    env: Env, stack: str, response_bytes: int | None, class_map: Path | None
) -> tuple[ServerProcess, str]:
    cmd = [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
    cmd += ["--stack", stack]
    if response_bytes:
        cmd += ["--response-bytes", str(response_bytes)]
    if class_map is not None:
        cmd += ["--class-responses", str(class_map)]
    proc = ServerProcess(
        cmd, cpus=None, log=env.tmp / f"empty-{stack}.log", env=env.subprocess_env()
    )
    try:
        return proc, f"127.0.0.1:{proc.wait_port_line()}"
    except BaseException:
        proc.stop()
        raise


def write_class_map(path: Path, frames: list[tuple[str, bytes]], sizes: dict[str, Any]) -> Path:
    """For the empty servers: each class's representative request and the size of the
    service's answer to it, so a class's row compares replies of the same size."""
    entries = [
        {
            "request_b64": base64.b64encode(body).decode(),
            "response_bytes": sizes[n]["response_bytes"],
        }
        for n, body in frames
        if n in sizes
    ]
    path.write_text(json.dumps(entries))
    return path


def run(env: Env, only: set[str], res: dict[str, Any], layouts: list[str]) -> None:
    """Fill ``res`` section by section, so a failure part-way still leaves what was measured."""
    cfg = env.cfg
    res |= {
        "command": " ".join(
            shlex.quote(a) for a in ["python", "-m", "benchmarks.run", *sys.argv[1:]]
        ),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": asdict(cfg),
        "layouts_run": layouts,
        "skipped": {},
    }
    detect(env)
    res["features"] = {k: v is True for k, v in env.features.items()}
    res["empty_servers"] = {
        stack: {k: (v if k != "options" else [list(o) for o in v]) for k, v in st.items()}
        for stack in ("bare", "matched")
        for st in [stack_settings(stack)]
    }

    def skip(section: str, why: str) -> None:
        res["skipped"][section] = why
        log(f"skip {section}: {why}")

    for s in SECTIONS:
        if s in only and s in env.features and env.features[s] is not True:
            skip(s, str(env.features[s]))
    if "reload" in only and env.features["service"] is not True:
        skip("reload", str(env.features["service"]))
    if "percall" in only and not shutil.which("valgrind"):
        skip("percall", "valgrind not on PATH (apt-get install valgrind)")
    want = {s for s in only if s not in res["skipped"]}
    if "redis" in want:
        want.add("service")  # its added latency is against the in-process store, same run

    catalog_json = (
        load_catalog_json(SHIPPED_CATALOG) if SHIPPED_CATALOG.exists() else synthetic_catalog()
    )
    res["catalog"] = {
        "source": str(SHIPPED_CATALOG.relative_to(ROOT))
        if SHIPPED_CATALOG.exists()
        else "synthetic stand-in (catalog/catalog.json not there yet)",
        "version": catalog_json.get("version"),
        "recognition_items": len(catalog_json["recognition_items"]),
        "gene_tests": len(catalog_json["gene_tests"]),
    }
    active_catalog = env.tmp / "catalog-active.json"
    active_catalog.write_text(json.dumps(catalog_json, ensure_ascii=False), encoding="utf-8")

    if "engine" in want:
        run_engine(env, res, active_catalog)

    load_sections = want & {"empty", "service", "reload", "redis", "workers"}
    if load_sections:
        run_load(env, res, want, layouts, catalog_json, active_catalog)
    if "percall" in want:
        from benchmarks import percall

        try:
            res["percall"] = percall.section(env, catalog_json)
        except Exception:
            res.setdefault("section_errors", {})["percall"] = traceback.format_exc()[-3000:]
            log(f"percall failed:\n{res['section_errors']['percall']}")


def run_engine(env: Env, res: dict[str, Any], active_catalog: Path) -> None:
    cfg = env.cfg
    log("engine micro-benchmark")
    cmd = pinned(
        [
            sys.executable,
            "-m",
            "benchmarks.engine_bench",
            "--catalog",
            str(active_catalog),
            "--calls",
            str(cfg.engine_calls),
            "--repeats",
            str(cfg.engine_repeats),
            "--warmup",
            str(max(100, cfg.engine_calls // 4)),
        ],
        LAYOUTS["pinned"][0] if env.server_cpus is not None else None,
    )
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env.subprocess_env(), timeout=600
    )
    if proc.returncode == 0:
        res["engine"] = json.loads(proc.stdout)
        for name, c in res["engine"]["cases"].items():
            log(f"  {name}: {c['median_us']:.1f} µs")
    else:
        res["engine"] = {"error": proc.stderr[-3000:]}
        log(f"  engine benchmark failed:\n{proc.stderr[-1500:]}")


def run_load(
    env: Env,
    res: dict[str, Any],
    want: set[str],
    layouts: list[str],
    catalog_json: dict[str, Any],
    active_catalog: Path,
) -> None:
    """The servers compared (bare, matched, service), layout by layout, then reload,
    Redis and workers."""
    cfg = env.cfg
    view = CatalogView.of(catalog_json)
    log(f"building workload: {cfg.results} results over {cfg.patients} patients")
    t0 = time.perf_counter()
    pop = build_population(view, cfg.results, cfg.patients, batch_size=cfg.batch)
    orders = build_orders(view, pop, cfg.orders)
    warn_orders = build_warn_orders(view, pop, cfg.warn_orders)
    res["workload"] = {
        "build_s": time.perf_counter() - t0,
        "orders": len(orders),
        "mix": dict(Counter(o.kind for o in orders).most_common()),
        "mean_request_bytes": sum(len(o.body) for o in orders) / len(orders),
        "warn_orders": len(warn_orders),
    }
    bodies = env.tmp / "orders.bin"
    write_bodies(bodies, [o.body for o in orders])
    warn_bodies = None
    if warn_orders:
        warn_bodies = env.tmp / "orders-all-warn.bin"
        write_bodies(warn_bodies, [o.body for o in warn_orders])
    reps = representative_orders(orders)[: cfg.h2load_families]
    class_bodies = [(family, body) for family, body, _ in reps]
    if warn_orders:
        class_bodies.append((WARN_CLASS, warn_orders[0].body))
    shares = {family: share for family, _, share in reps}
    frames = []
    for family, body in class_bodies:
        path = env.tmp / f"h2load-{family}.bin"
        path.write_bytes(grpc_frame(body))
        frames.append((family, path, shares.get(family, 0.0)))
    res["h2load_classes"] = {f: {"share_of_mix": s} for f, _, s in frames}

    servers: list[Under] = []
    service: ServerProcess | None = None
    try:
        response_bytes: int | None = None
        class_map: Path | None = None
        if want & {"service", "reload"}:
            log("service: start, preload")
            service, svc_target, svc_metrics = start_service(
                env, active_catalog, "service", cpus=None
            )
            svc = res["service"] = {"command": " ".join(service.cmd)}
            svc["rss_idle_bytes"] = service.rss()
            svc["ingest"] = preload(env, service, svc_target, svc_metrics, pop)
            svc["responses"] = sample_responses(svc_target, orders, cfg.sample_responses)
            response_bytes = round(svc["responses"]["mean_bytes"]) or None
            log(
                f"  responses: mean {svc['responses']['mean_bytes']:.0f} B, "
                f"decisions {svc['responses']['decisions']}"
            )
            svc["classes"] = class_responses(svc_target, class_bodies)
            class_map = write_class_map(
                env.tmp / "class-responses.json", class_bodies, svc["classes"]
            )
            if warn_orders:
                port = int(svc_target.rsplit(":", 1)[1])
                log_path = decision_log_path(env, port) if "--decision-log" in service.cmd else None
                svc["warn_check"] = check_warn_class(
                    svc_target, warn_orders, cfg.sample_warn, log_path
                )
                wc = svc["warn_check"]
                log(
                    f"  all-WARN class: {wc['warn']}/{wc['sampled']} WARN, "
                    f"{wc['logged']} found in the decision log"
                )
            servers.append(Under("service", service, svc_target, svc_metrics))

        res["servers"] = {}
        for stack in ("bare", "matched"):
            log(f"{stack} empty server (response {response_bytes or 'default'} bytes)")
            proc, target = start_empty(env, stack, response_bytes, class_map)
            servers.insert(len(servers) - (1 if service else 0), Under(stack, proc, target))
            res["servers"][stack] = {
                "command": " ".join(proc.cmd),
                "response_bytes": len(canned_response(response_bytes)),
                "rss_idle_bytes": proc.rss(),
            }
        res["layouts"] = {}
        for layout in layouts:
            lenv = layout_env(env, layout)
            res["layouts"][layout] = measure_layout(
                lenv, layout, servers, frames, bodies, warn_bodies if service else None
            )
        # The empty servers are done; the rest runs pinned (as the results of record did)
        for s in servers:
            if s.name != "service":
                s.proc.stop()
        servers = [s for s in servers if s.name == "service"]

        penv = layout_env(env, "pinned")
        base = res["layouts"].get("pinned") or res["layouts"][layouts[0]]
        if service is not None:
            service.set_cpus(penv.server_cpus)
            os.sched_setaffinity(0, cpu_set(penv.driver_cpus))
            svc = res["service"]
            svc["rss_after_load_bytes"] = service.rss()
            if env.profile and base.get("half_rate"):
                svc["profile"] = profile_point(
                    penv, svc_target, bodies, base["half_rate"], service, "service"
                )
            if "reload" in want:
                log("reload under load")
                big = env.tmp / "catalog-10k.json"
                big.write_text(
                    json.dumps(
                        grow_catalog(catalog_json, cfg.reload_entries, "bench-reload-10k"),
                        ensure_ascii=False,
                    ),
                    encoding="utf-8",
                )
                rate = max(20.0, round(base["saturation_rps"]["bare"] * cfg.reload_fraction))
                res["reload"] = reload_under_load(
                    penv, svc_target, active_catalog, big, bodies, rate, service
                )
            service.stop()
            service = None
            servers = []

        if want & {"redis", "workers"}:
            # Issue 5's rows are apart from the comparison above: a failure there is
            # recorded and the run goes on to the next section.
            try:
                run_redis_sections(penv, res, want, active_catalog, pop, bodies, frames)
            except Exception:
                res.setdefault("section_errors", {})["redis"] = traceback.format_exc()[-3000:]
                log(f"redis/workers failed, going on:\n{res['section_errors']['redis']}")
    finally:
        if service is not None:  # before stopping anything: did it die on its own?
            code = service.proc.poll()
            if code is not None:
                res["service_exit"] = (
                    f"the service exited ({code}) during the run; log tail: "
                    + service.log_path.read_text(errors="replace")[-600:]
                )
        for s in servers:
            s.proc.stop()
        if service is not None:
            service.stop()


def run_redis_sections(
    env: Env,
    res: dict[str, Any],
    want: set[str],
    catalog: Path,
    pop: Population,
    bodies: Path,
    frames: list[tuple[str, Path, float]],
) -> None:
    """Issue 5's rows: one redis-server (on the driver's core) preloaded once, then the
    Redis-store service at the highest fixed rate (1,000/s: a rate both stores carry, so
    the difference is the store and not a queue), then 1 and 2 workers. Pinned layout,
    except the workers, which need both cores."""
    cfg = env.cfg
    frames = [f for f in frames if f[2] > 0]  # the mix's families only
    if pop.n_results > cfg.redis_results:
        pop = replace(pop, batches=pop.batches[: max(1, cfg.redis_results // cfg.batch)])
    log("redis: start redis-server, preload through the service")
    redis = RedisServer(env, env.driver_cpus)
    try:
        mem0 = redis.used_memory()
        extra = ["--results", redis.url]
        server, target, mlisten = start_service(
            env, catalog, "service-redis", extra, cpus=env.server_cpus
        )
        r = res["redis"] = {"command": " ".join(server.cmd)}
        try:
            r["ingest"] = preload(env, server, target, mlisten, pop)
            r["redis_used_memory_bytes"] = redis.used_memory() - mem0
            r["redis_bytes_per_result"] = r["redis_used_memory_bytes"] / max(
                1, r["ingest"]["accepted"]
            )
            if "redis" in want:
                rate = cfg.fixed_rates[-1] if cfg.fixed_rates else 100.0
                r["open_fixed_rate"] = safe_point(env, target, bodies, rate, server)
                if env.features["h2load"] is True:
                    r["h2load"] = h2load_mix(env, target, frames, mlisten)
        finally:
            server.stop()
        if "workers" in want:
            os.sched_setaffinity(0, cpu_set(None))  # h2load inherits it: both cores too
            w = res["workers"] = {}
            for n in (1, 2):
                log(f"workers: {n} on Redis (unpinned: they need both cores)")
                server, target, mlisten = start_service(
                    env, catalog, f"service-workers{n}", [*extra, "--workers", str(n)], cpus=None
                )
                try:
                    row: dict[str, Any] = {"command": " ".join(server.cmd)}
                    if env.features["h2load"] is True:
                        # 8 connections so SO_REUSEPORT spreads them over both workers
                        row["h2load"] = h2load_mix(
                            replace(env, driver_cpus=None),
                            target,
                            frames,
                            mlisten,
                            clients=8,
                            streams=8,
                        )
                    row["rss_bytes"] = server.rss()
                    w[str(n)] = row
                finally:
                    server.stop()
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"sections: {','.join(SECTIONS)} (default all but percall)",
    )
    p.add_argument("--quick", action="store_true", help="tiny scale (the smoke test)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--driver-procs", type=int, default=None, help="open-loop driver processes")
    p.add_argument(
        "--layouts",
        default=",".join(LAYOUTS),
        help="unpinned (both processes on every core, as a user runs it), pinned (server "
        "on CPU 0, drivers on CPU 1); default both",
    )
    p.add_argument("--no-pin", action="store_true", help="the unpinned layout only")
    p.add_argument(
        "--note",
        default=None,
        help='a banner for the top of RESULTS.md, e.g. "provisional: measured on a busy machine"',
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also py-spy the service at half rate (results/profile-service.txt)",
    )
    args = p.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    cfg = QUICK if args.quick else Config()
    if args.driver_procs:
        cfg = replace(cfg, driver_procs=args.driver_procs)
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if set(layouts) - set(LAYOUTS):
        p.error(f"unknown layouts {layouts}; choose from {', '.join(LAYOUTS)}")
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if args.no_pin or not pin:
        layouts = ["unpinned"]
    out = args.out
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = Env(cfg, out, tmp, "0" if pin else None, "1" if pin else None, profile=args.profile)
    t0 = time.monotonic()
    res: dict[str, Any] = {"note": args.note} if args.note else {}
    status = 0
    try:
        run(env, only, res, layouts)
    except Exception:  # the partial results are still worth writing
        res["error"] = traceback.format_exc()[-4000:]
        log(f"FAILED, writing what was measured:\n{res['error']}")
        status = 1
    res["wall_s"] = time.monotonic() - t0
    res.setdefault("machine", machine_info())["loadavg_end"] = (
        Path("/proc/loadavg").read_text().split()[:3]
    )
    report.write_all(res, out)
    log(f"done in {res['wall_s']:.0f}s: {out / 'RESULTS.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
