"""``make bench``: every benchmark of issue 4 (and issue 5's rows) in one run, so ratios
are measured against the same machine state.

Sections (``--only`` picks some, comma-separated; the default is all):
  engine   Engine.evaluate alone, µs per order (needs cds.rules.engine and cds.catalog)
  empty    the empty gRPC server: Python driver ceiling, h2load saturation, open-loop sweep
  service  cds serve: preload ≥1M results (ingest rate, RSS), h2load, the same sweep
  reload   a 10,000-entry catalogue reloaded during open-loop load (needs service)
  redis    the Redis store against the in-process one at the same rate (issue 5)
  workers  --workers 2 against 1, on Redis (issue 5)
A section whose feature has not landed yet is skipped with the reason in the results.

Layout on 2 cores: the server under test is pinned to CPU 0, the drivers (and this
runner) to CPU 1, so a driver never steals the server's core. Results go to
``benchmarks/results/`` (results.json, RESULTS.md, latency_vs_rate.png).
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
from benchmarks.empty_server import canned_response, max_concurrent_rpcs, server_options
from benchmarks.procs import ServerProcess, core_busy_seconds, free_port, machine_info, pinned
from benchmarks.workload import (
    CatalogView,
    Order,
    Population,
    build_orders,
    build_population,
    grpc_frame,
    load_catalog_json,
    representative_orders,
)
from cds.v1 import catalog_admin_pb2, order_check_pb2, types_pb2

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CATALOG = ROOT / "catalog" / "catalog.json"
SECTIONS = ("engine", "empty", "service", "reload", "redis", "workers")
PUT_RESULTS = "/cds.v1.ResultFeedService/PutResults"


@dataclass
class Config:
    """Scale of one run. ``full`` is what `make bench` measures; ``quick`` is the smoke test."""

    results: int = 1_000_000
    patients: int = 300_000
    batch: int = 5_000
    ingest_inflight: int = 4
    orders: int = 20_000
    point_s: float = 8.0  # measured seconds per open-loop rate
    warmup_s: float = 2.0
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.7, 0.85, 1.0, 1.2)
    h2load_s: float = 4.0
    h2load_warmup_s: float = 1.0
    h2load_families: int = 5  # how many order families h2load runs (the mix has 5)
    ceiling_s: float = 4.0  # Python driver closed loop
    ceiling_concurrency: int = 64
    driver_procs: int = 1
    sample_responses: int = 1_000
    reload_entries: int = 10_000
    reload_fraction: float = 0.3  # of the empty server's saturation
    reload_run_s: float = 12.0
    reload_at_s: float = 5.0
    engine_calls: int = 20_000
    engine_repeats: int = 7
    redis_results: int = 1_000_000
    timeout_s: float = 2.0


QUICK = Config(
    results=3_000,
    patients=1_000,
    batch=1_000,
    orders=200,
    point_s=1.0,
    warmup_s=0.3,
    fractions=(0.2, 0.5),
    h2load_s=1.0,
    h2load_warmup_s=0.0,
    h2load_families=1,
    ceiling_s=1.0,
    ceiling_concurrency=16,
    sample_responses=100,
    reload_entries=500,
    reload_run_s=3.0,
    reload_at_s=1.0,
    engine_calls=500,
    engine_repeats=3,
    redis_results=3_000,
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
    others = max(0.0, core_busy - (server_cpu or 0.0)) if env.server_cpus else None
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
        "driver_cpu_frac": sum(o["driver_cpu_frac"] for o in outs),
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


def sweep(
    env: Env, target: str, bodies: Path, rates: list[float], server: ServerProcess | None
) -> list[dict[str, Any]]:
    points = []
    for rate in rates:
        pt = open_point(env, target, bodies, rate, server)
        log(
            f"  open loop {rate:8.0f}/s: achieved {pt['achieved_rps']:8.0f}/s "
            f"p50 {pt.get('p50_us', 0) / 1000:6.2f} ms p99 {pt.get('p99_us', 0) / 1000:7.2f} ms "
            f"late {pt['late']} dropped {pt['dropped']} err {sum(pt['errors'].values())} "
            f"cpu driver {pt['driver_cpu_frac']:.0%} server {pt['server_cpu_frac'] or 0:.0%} "
            f"others on server core {pt['server_core_others_frac'] or 0:.0%}"
        )
        points.append(pt)
    return points


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


def h2load_mix(
    env: Env,
    target: str,
    frames: list[tuple[str, Path, float]],
    metrics_listen: str | None,
    *,
    clients: int = 4,
    streams: int = 16,
) -> dict[str, Any]:
    """h2load per order family, combined into the mix's throughput, grpc codes verified."""
    cfg = env.cfg
    before = metrics.check_codes(metrics_listen) if metrics_listen else None
    fams = []
    for name, path, share in frames[: cfg.h2load_families]:
        r = h2load.run(
            target,
            path,
            duration=cfg.h2load_s,
            warmup=cfg.h2load_warmup_s,
            clients=clients,
            streams=streams,
            cpus=env.driver_cpus,
        )
        r.update(family=name, share=share)
        fams.append(r)
        log(f"  h2load {name:10s}: {r.get('rps', 0):8.0f}/s failed {r.get('failed')}")
    after = metrics.check_codes(metrics_listen) if metrics_listen else None
    out: dict[str, Any] = {
        "connections": clients,
        "streams_per_connection": streams,
        "families": fams,
        "mix_rps": h2load.mix_rps([(f["family"], f["share"], f.get("rps", 0)) for f in fams]),
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
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()  # cds's own frames, counted once per stack
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        # by function (line numbers dropped), outside the CLI's entry frames
        funcs = {re.sub(r":\d+\)$", ")", f) for f in frames if "(cds/" in f}
        for func in funcs:
            if "cds/cli.py" not in func and "cds/__main__.py" not in func:
                inclusive[func] += n
    top = (
        [{"frame": frame, "share": n / total} for frame, n in own.most_common(25)] if total else []
    )
    top_cds = (
        [{"frame": f, "share": n / total} for f, n in inclusive.most_common(25)] if total else []
    )
    log(f"  profile ({name}): {total} samples -> {raw.name}")
    for t in top[:8]:
        log(f"    {t['share']:5.1%} {t['frame']}")
    return {
        "file": raw.name,
        "samples": total,
        "rate": rate,
        "top_own": top,
        "top_cds_inclusive": top_cds,
    }


# --------------------------------------------------------------------------- service


async def _ingest(target: str, batches: list[bytes], inflight: int) -> dict[str, Any]:
    from cds.v1 import result_feed_pb2

    accepted = rejected = 0
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(PUT_RESULTS)
        queue = list(reversed(batches))

        async def worker() -> None:
            nonlocal accepted, rejected
            while queue:
                body = queue.pop()
                raw = await call(body, timeout=120)
                resp = result_feed_pb2.PutResultsResponse.FromString(raw)
                accepted += resp.accepted
                rejected += resp.rejected
                errors.extend(resp.errors[: max(0, 5 - len(errors))])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        wall = time.perf_counter() - t0
    return {"accepted": accepted, "rejected": rejected, "errors": errors, "seconds": wall}


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
        cmd += ["--decision-log", str(env.tmp / f"decisions-{port}.jsonl")]
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


def rates_for(saturation: float, fractions: tuple[float, ...]) -> list[float]:
    rates = {round(saturation * f) for f in fractions} | {round(saturation * 0.5)}
    return sorted(r for r in rates if r >= 10)


def run(env: Env, only: set[str], res: dict[str, Any]) -> None:
    """Fill ``res`` section by section, so a failure part-way still leaves what was measured."""
    cfg = env.cfg
    res |= {
        "command": " ".join(
            shlex.quote(a) for a in ["python", "-m", "benchmarks.run", *sys.argv[1:]]
        ),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": asdict(cfg),
        "layout": {"server_cpus": env.server_cpus, "driver_cpus": env.driver_cpus},
        "skipped": {},
    }
    detect(env)
    res["features"] = {k: v is True for k, v in env.features.items()}
    opts, where = server_options()
    res["empty_server_options"] = {
        "from": where,
        "options": [list(o) for o in opts],
        "maximum_concurrent_rpcs": max_concurrent_rpcs(),
    }

    def skip(section: str, why: str) -> None:
        res["skipped"][section] = why
        log(f"skip {section}: {why}")

    for s in SECTIONS:
        if s in only and s in env.features and env.features[s] is not True:
            skip(s, str(env.features[s]))
    if "reload" in only and env.features["service"] is not True:
        skip("reload", str(env.features["service"]))
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
            env.server_cpus,
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

    load_sections = want & {"empty", "service", "reload", "redis", "workers"}
    if not load_sections:
        return
    view = CatalogView.of(catalog_json)
    log(f"building workload: {cfg.results} results over {cfg.patients} patients")
    t0 = time.perf_counter()
    pop = build_population(view, cfg.results, cfg.patients, batch_size=cfg.batch)
    orders = build_orders(view, pop, cfg.orders)
    res["workload"] = {
        "build_s": time.perf_counter() - t0,
        "orders": len(orders),
        "mix": dict(Counter(o.kind for o in orders).most_common()),
        "mean_request_bytes": sum(len(o.body) for o in orders) / len(orders),
    }
    bodies = env.tmp / "orders.bin"
    write_bodies(bodies, [o.body for o in orders])
    frames = []
    for family, body, share in representative_orders(orders):
        path = env.tmp / f"h2load-{family}.bin"
        path.write_bytes(grpc_frame(body))
        frames.append((family, path, share))
    use_h2load = env.features["h2load"] is True

    service = svc_target = svc_metrics = None
    response_bytes: int | None = None
    try:
        if want & {"service", "reload"}:
            log("service: start, preload")
            service, svc_target, svc_metrics = start_service(
                env, active_catalog, "service", cpus=env.server_cpus
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

        # The baseline: always measured when any load section runs (ratios need it).
        log(f"empty server (response {response_bytes or 'default'} bytes)")
        payload = canned_response(response_bytes)
        cmd = [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
        if response_bytes:
            cmd += ["--response-bytes", str(response_bytes)]
        emp = res["empty"] = {"response_bytes": len(payload)}
        with ServerProcess(
            cmd, cpus=env.server_cpus, log=env.tmp / "empty.log", env=env.subprocess_env()
        ) as empty:
            target = f"127.0.0.1:{empty.wait_port_line()}"
            emp["rss_idle_bytes"] = empty.rss()
            emp["python_closed"] = python_ceiling(env, target, bodies, empty)
            if use_h2load:
                emp["h2load"] = h2load_mix(env, target, frames, None)
                saturation = emp["h2load"]["mix_rps"]
                emp["saturation_from"] = "h2load"
            else:
                saturation = emp["python_closed"]["rps"]
                emp["saturation_from"] = "python driver (no h2load)"
            emp["saturation_rps"] = saturation
            rates = rates_for(saturation, cfg.fractions)
            res["rates"] = rates
            res["half_rate"] = round(saturation * 0.5)
            emp["open"] = sweep(env, target, bodies, rates, empty)

        if service is not None:
            log("service: load")
            res["service_pid"] = service.pid
            svc = res["service"]
            assert svc_target is not None and svc_metrics is not None
            svc["python_closed"] = python_ceiling(env, svc_target, bodies, service)
            if use_h2load:
                svc["h2load"] = h2load_mix(env, svc_target, frames, svc_metrics)
            if "service" in want:
                svc["open"] = sweep(env, svc_target, bodies, res["rates"], service)
            svc["rss_after_load_bytes"] = service.rss()
            if env.profile:
                svc["profile"] = profile_point(
                    env, svc_target, bodies, res["half_rate"], service, "service"
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
                rate = max(20.0, round(res["empty"]["saturation_rps"] * cfg.reload_fraction))
                res["reload"] = reload_under_load(
                    env, svc_target, active_catalog, big, bodies, rate, service
                )
            service.stop()
            service = None

        if want & {"redis", "workers"}:
            run_redis_sections(env, res, want, active_catalog, pop, bodies, frames)
    finally:
        if service is not None:
            code = service.proc.poll()
            if code is not None:
                res["service_exit"] = (
                    f"the service exited ({code}) during the run; log tail: "
                    + service.log_path.read_text(errors="replace")[-600:]
                )
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
    Redis-store service at the in-process run's half rate, then 1 and 2 workers."""
    cfg = env.cfg
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
                rate = res.get("half_rate") or 100
                r["open_half_rate"] = open_point(env, target, bodies, rate, server)
                if env.features["h2load"] is True:
                    r["h2load"] = h2load_mix(env, target, frames, mlisten)
        finally:
            server.stop()
        if "workers" in want:
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
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny scale (the smoke test)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--driver-procs", type=int, default=None, help="open-loop driver processes")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/driver to cores")
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
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    out = args.out
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = Env(cfg, out, tmp, "0" if pin else None, "1" if pin else None, profile=args.profile)
    if pin:
        os.sched_setaffinity(0, {1})  # the runner itself stays off the server's core
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    status = 0
    try:
        run(env, only, res)
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
