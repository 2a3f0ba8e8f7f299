"""``make faults``: faults under steady load, and what the clients saw of each.

Every scenario starts its own server (and redis-server), preloads it, runs the bench's
order mix at a steady open-loop rate from the bench's driver (``--raw``: every call's
due time, latency or status comes back, and every answer is flagged when it says
``RESULTS_UNAVAILABLE``), injects one fault at a known instant and cuts the calls into
phases around it:

  redis-kill      redis-server (AOF, appendfsync everysec) kill -9, restarted 6 s later
                  on the same port; a LIS feed trickles PutResults throughout; the
                  preloaded results are checked to be there afterwards
  redis-freeze    redis-server SIGSTOP for 5 s, then SIGCONT (a hung Redis: sockets open,
                  nothing answers); counts answers given *without* RESULTS_UNAVAILABLE
                  while Redis was frozen (issue 14 defect 7: the near-cache)
  worker-kill     ``--workers 2``: one worker kill -9, respawned by the parent
  reload          ReloadCatalog and SIGHUP, alternately, every 1.5 s (one process)
  reload-workers  the same with ``--workers 2`` on Redis (one reload reaches every worker)
  sigterm         SIGTERM under load, three times: the calls racing the stop
  sigterm-drain   the same with ``--drain-seconds 1``, when this tree's cds serve has it
  sigterm-bare    the same against the bench's bare ``grpc.aio.server()`` (what the stack
                  itself does), for comparison

Flags a scenario wants but this tree's ``cds serve`` lacks are left out and said (other
work adds flags in parallel); a scenario that needs one is skipped with the reason.
Output: ``FAULTS.md`` (a table, then each scenario's phases) and ``faults.json`` in
``--out``. The machine is shared: latencies are noisy, the counts are the result.
``--tree PATH`` serves another checkout's cds (a before/after of a fix), ``--tag NAME``
names the outputs ``faults-NAME.*``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks import metrics
from benchmarks.bodies import write_bodies
from benchmarks.procs import ServerProcess, machine_info
from benchmarks.run import QUICK, ROOT, SHIPPED_CATALOG, Config, Env, detect
from benchmarks.steady import (
    Calls,
    Feed,
    Load,
    Redis,
    feed_batches,
    log,
    preload_via,
    start_bare,
    start_cds,
    supported,
    wait_until,
    workers_of,
)
from benchmarks.workload import (
    CatalogView,
    Order,
    Population,
    build_orders,
    build_population,
    load_catalog_json,
)

SCENARIOS = (
    "redis-kill",
    "redis-freeze",
    "worker-kill",
    "reload",
    "reload-workers",
    "sigterm",
    "sigterm-drain",
    "sigterm-bare",
)
DEGRADED = "RESULTS_UNAVAILABLE"


def say(msg: str) -> None:
    log(msg, "faults")


@dataclass
class Ctx:
    env: Env
    args: argparse.Namespace
    catalog_json: dict[str, Any]
    pop: Population
    orders: list[Order]
    bodies: Path
    feed: list[bytes]
    tree: Path | None
    scale: float  # the timeline's: 1 in a real run, smaller with --quick
    lead: float = 3.0  # seconds the drivers get to connect before the load starts

    def at(self, seconds: float) -> float:
        return seconds * self.scale


# --------------------------------------------------------------------------- helpers


def serve(
    ctx: Ctx, name: str, extra: list[str], *, preload: bool = True
) -> tuple[ServerProcess, str, str, dict[str, Any]]:
    """A fresh ``cds serve`` on its own copy of the catalogue, preloaded."""
    catalog = ctx.env.tmp / f"{name}-catalog.json"
    catalog.write_text(json.dumps(ctx.catalog_json, ensure_ascii=False), encoding="utf-8")
    flags, dropped = supported(ctx.env, extra)
    server, target, mlisten = start_cds(ctx.env, catalog, f"faults-{name}", flags, tree=ctx.tree)
    info: dict[str, Any] = {"flags": flags, "catalog": catalog}
    if dropped:
        info["flags_left_out"] = dropped
        say(f"  {name}: cds serve lacks {dropped}; left out")
    if preload:
        got = preload_via(target, ctx.pop.batches, ctx.env.cfg.ingest_inflight)
        info["preloaded"] = got["accepted"]
    return server, target, mlisten, info


def run_load(
    ctx: Ctx,
    target: str,
    seconds: float,
    actions: list[tuple[float, str, Callable[[], dict[str, Any] | None]]],
    *,
    procs: int = 2,
    feed: bool = False,
) -> tuple[Calls, list[dict[str, Any]], Feed | None]:
    """Steady load for ``seconds``; each action runs at its instant (seconds after the
    load's start), in order, in this thread, and is recorded with when it ran and how
    long it took."""
    t0 = time.monotonic() + ctx.lead
    load = Load(
        ctx.env,
        target,
        ctx.bodies,
        ctx.args.rate,
        seconds,
        procs=procs,
        t0=t0,
        mark=DEGRADED,
        timeout_s=ctx.args.timeout,
    ).start()
    feeder = Feed(target, ctx.feed, ctx.args.feed_rate, t0) if feed else None
    events: list[dict[str, Any]] = []
    try:
        wait_until(t0)
        if feeder is not None:
            feeder.start()
        for at, what, action in actions:
            wait_until(t0 + at)
            began = time.monotonic() - t0
            info = action() or {}
            took = time.monotonic() - t0 - began
            events.append({"what": what, "at_s": round(began, 3), "took_s": round(took, 3)} | info)
            say(f"    {began:6.2f} s  {what} ({took:.2f} s) {info or ''}")
        calls = load.result()
    finally:
        if feeder is not None:
            feeder.halt()
        load.kill()
    if calls.driver_errors:
        raise RuntimeError("driver failed:\n" + calls.driver_errors[0])
    return calls, events, feeder


def recovered_after(calls: Calls, since: float) -> float | None:
    """Seconds from ``since`` to the last failed or degraded call due after it: when the
    client saw normal service again (0 if nothing went wrong after ``since``)."""
    bad = [calls.err_due[calls.err_due >= since]]
    bad.append(calls.ok_due[(calls.ok_due >= since) & calls.marked])
    times = np.concatenate(bad)
    return float(times.max() - since) if times.size else 0.0


def server_metrics(mlisten: str) -> dict[str, Any]:
    try:
        fams = metrics.scrape(mlisten)
    except OSError as exc:
        return {"error": type(exc).__name__}
    codes: Counter[str] = Counter()
    for labels, value in fams.get("grpc_server_handled_total", []):
        if labels.get("grpc_method") == "Check":
            codes[labels.get("grpc_code", "?")] += int(value)
    out: dict[str, Any] = {"check_codes": dict(codes)}
    for name in ("cds_checks_degraded_total", "cds_worker_restarts_total", "cds_workers"):
        if name in fams:
            out[name] = sum(v for _, v in fams[name])
    return out


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a, b = after.get("check_codes", {}), before.get("check_codes", {})
    out["check_codes"] = {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}
    for name in ("cds_checks_degraded_total", "cds_worker_restarts_total"):
        if name in after:
            out[name] = after[name] - before.get(name, 0)
    if "cds_workers" in after:
        out["cds_workers"] = after["cds_workers"]
    return out


def log_lines(path: Path, since: int) -> dict[str, Any]:
    """WARNING/ERROR lines and tracebacks the server logged after byte ``since``."""
    text = path.read_bytes()[since:].decode(errors="replace")
    lines = text.splitlines()
    warnings = [ln for ln in lines if " WARNING " in ln or "WARNING:" in ln]
    errors = [ln for ln in lines if " ERROR " in ln or "ERROR:" in ln]

    def shapes(xs: list[str]) -> dict[str, int]:
        # the message without its timestamp, grouped: at most 6 kinds
        c = Counter(x.split(" ", 2)[-1][:140] for x in xs)
        return dict(c.most_common(6))

    return {
        "warnings": len(warnings),
        "errors": len(errors),
        "tracebacks": text.count("Traceback"),
        "warning_kinds": shapes(warnings),
        "error_kinds": shapes(errors),
    }


def recognised(target: str, orders: list[Order]) -> dict[str, int]:
    """These lab_hit orders through a real stub: how many still find their prior result."""
    from cds.v1 import order_check_pb2, order_check_pb2_grpc

    found = degraded = failed = 0
    with grpc.insecure_channel(target) as channel:
        stub = order_check_pb2_grpc.OrderCheckServiceStub(channel)
        for o in orders:
            try:
                answer = stub.Check(order_check_pb2.CheckRequest.FromString(o.body), timeout=5)
            except grpc.RpcError:
                failed += 1
                continue
            degraded += bool(answer.degraded)
            found += any(
                r.code == "RECOGNIZABLE_RESULT_EXISTS" for i in answer.items for r in i.reasons
            )
    return {"orders": len(orders), "recognised": found, "degraded": degraded, "failed": failed}


def phases(calls: Calls, cuts: list[tuple[str, float, float]]) -> dict[str, dict[str, Any]]:
    return {name: calls.between(lo, hi) for name, lo, hi in cuts}


def stopped(server: ServerProcess) -> dict[str, Any]:
    code = server.stop()
    return {"exit_code": code}


# --------------------------------------------------------------------------- scenarios


def redis_kill(ctx: Ctx) -> dict[str, Any]:
    redis = Redis(ctx.env, "faults-redis-kill", aof=True)
    server, target, mlisten, info = serve(ctx, "redis-kill", ["--results", redis.url])
    try:
        time.sleep(1.5)  # appendfsync everysec: the preload is on disk
        hits = [o for o in ctx.orders if o.kind == "lab_hit"][:200]
        before_check = recognised(target, hits)
        m0, log0 = server_metrics(mlisten), server.log_path.stat().st_size
        kill_at, down_s, seconds = ctx.at(6), ctx.at(6), ctx.at(24)

        def kill() -> dict[str, Any]:
            redis.kill9()
            return {}

        def restart() -> dict[str, Any]:
            return {"redis_ready_after_s": round(redis.start(), 3)}

        calls, events, feed = run_load(
            ctx,
            target,
            seconds,
            [(kill_at, "redis-server kill -9", kill), (kill_at + down_s, "restart", restart)],
            feed=True,
        )
        killed, back = events[0]["at_s"], events[1]["at_s"] + events[1]["took_s"]
        cuts = [("before", 0.0, killed), ("Redis down", killed, back), ("after", back, seconds)]
        after_check = recognised(target, hits)
        assert feed is not None
        return info | {
            "what": f"redis-server kill -9 at {killed:.1f} s, restarted {down_s:.0f} s later "
            "(same port, AOF everysec)",
            "events": events,
            "phases": phases(calls, cuts),
            "fault_phase": "Redis down",
            "recovered_after_s": recovered_after(calls, back),
            "feed": {name: feed.between(lo, hi) for name, lo, hi in cuts},
            "results_kept": {"before": before_check, "after": after_check},
            "server": diff(server_metrics(mlisten), m0),
            "log": log_lines(server.log_path, log0),
        }
    finally:
        server.stop()
        redis.stop()


def redis_freeze(ctx: Ctx) -> dict[str, Any]:
    redis = Redis(ctx.env, "faults-redis-freeze")
    server, target, mlisten, info = serve(ctx, "redis-freeze", ["--results", redis.url])
    try:
        m0, log0 = server_metrics(mlisten), server.log_path.stat().st_size
        stop_at, frozen_s, seconds = ctx.at(6), ctx.at(5), ctx.at(20)

        def pause() -> dict[str, Any]:
            redis.pause()
            return {}

        def resume() -> dict[str, Any]:
            redis.resume()
            return {}

        calls, events, feed = run_load(
            ctx,
            target,
            seconds,
            [(stop_at, "redis-server SIGSTOP", pause), (stop_at + frozen_s, "SIGCONT", resume)],
            feed=True,
        )
        stop, cont = events[0]["at_s"], events[1]["at_s"]
        grace = 0.1  # the store's read timeout (50 ms) and then some
        answered, marked = calls.answered_in(stop + grace, cont)
        cuts = [("before", 0.0, stop), ("Redis frozen", stop, cont), ("after", cont, seconds)]
        assert feed is not None
        return info | {
            "what": f"redis-server SIGSTOP at {stop:.1f} s for {frozen_s:.0f} s, then SIGCONT",
            "events": events,
            "phases": phases(calls, cuts),
            "fault_phase": "Redis frozen",
            "answered_while_frozen": {
                "window_s": [round(stop + grace, 3), round(cont, 3)],
                "answers": answered,
                "degraded": marked,
                "not_degraded": answered - marked,
            },
            "recovered_after_s": recovered_after(calls, cont),
            "feed": {name: feed.between(lo, hi) for name, lo, hi in cuts},
            "server": diff(server_metrics(mlisten), m0),
            "log": log_lines(server.log_path, log0),
        }
    finally:
        server.stop()
        redis.stop()


def worker_kill(ctx: Ctx) -> dict[str, Any]:
    if "--workers" not in ctx.env.serve_flags:
        return {"skipped": "this tree's cds serve has no --workers"}
    redis = Redis(ctx.env, "faults-worker-kill")
    server, target, mlisten, info = serve(
        ctx, "worker-kill", ["--workers", "2", "--results", redis.url]
    )
    try:
        m0, log0 = server_metrics(mlisten), server.log_path.stat().st_size
        kill_at, seconds = ctx.at(6), ctx.at(20)

        def kill() -> dict[str, Any]:
            before = workers_of(server.pid)
            victim = before[0]
            os.kill(victim, signal.SIGKILL)
            t = time.monotonic()
            while time.monotonic() - t < 30:
                now = workers_of(server.pid)
                if len(now) == len(before) and victim not in now:
                    return {"workers_before": len(before), "respawned_after_s": round(
                        time.monotonic() - t, 3)}  # fmt: skip
                time.sleep(0.02)
            return {"workers_before": len(before), "respawned_after_s": None}

        calls, events, _ = run_load(
            ctx, target, seconds, [(kill_at, "one worker kill -9", kill)], procs=4
        )
        killed = events[0]["at_s"]
        back = killed + (events[0].get("respawned_after_s") or 0.0)
        cuts = [("before", 0.0, killed), ("worker down", killed, back + 1.0),
                ("after", back + 1.0, seconds)]  # fmt: skip
        return info | {
            "what": f"--workers 2, one worker kill -9 at {killed:.1f} s; 4 client connections",
            "events": events,
            "phases": phases(calls, cuts),
            "fault_phase": "worker down",
            "recovered_after_s": recovered_after(calls, killed),
            "server": diff(server_metrics(mlisten), m0),
            "log": log_lines(server.log_path, log0),
        }
    finally:
        server.stop()
        redis.stop()


def _reloads(ctx: Ctx, name: str, extra: list[str]) -> dict[str, Any]:
    from cds.v1 import catalog_admin_pb2, catalog_admin_pb2_grpc

    server, target, mlisten, info = serve(ctx, name, extra)
    catalog: Path = info.pop("catalog")
    base = str(ctx.catalog_json.get("version", "catalog"))
    channel = grpc.insecure_channel(target)
    admin = catalog_admin_pb2_grpc.CatalogAdminServiceStub(channel)
    try:
        m0, log0 = server_metrics(mlisten), server.log_path.stat().st_size
        n = 8 if ctx.scale >= 1 else 2
        first, every, seconds = ctx.at(4), ctx.at(1.5), ctx.at(4) + n * ctx.at(1.5) + ctx.at(4)

        def write(version: str) -> None:
            data = dict(ctx.catalog_json, version=version)
            tmp = catalog.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, catalog)

        def status() -> str:
            request = catalog_admin_pb2.GetCatalogStatusRequest()
            return str(admin.GetCatalogStatus(request, timeout=5).version)

        def by_rpc(version: str) -> Callable[[], dict[str, Any]]:
            def act() -> dict[str, Any]:
                write(version)
                try:
                    r = admin.ReloadCatalog(catalog_admin_pb2.ReloadCatalogRequest(), timeout=30)
                    return {"ok": bool(r.activated) and r.version == version}
                except grpc.RpcError as exc:
                    return {"ok": False, "code": exc.code().name}

            return act

        def by_sighup(version: str) -> Callable[[], dict[str, Any]]:
            def act() -> dict[str, Any]:
                write(version)
                server.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    with contextlib.suppress(grpc.RpcError):
                        if status() == version:
                            return {"ok": True}
                    time.sleep(0.01)
                return {"ok": False}

            return act

        actions: list[tuple[float, str, Callable[[], dict[str, Any] | None]]] = []
        for i in range(n):
            version = f"{base}-fault-{i}"
            how = by_rpc(version) if i % 2 == 0 else by_sighup(version)
            actions.append((first + i * every, "ReloadCatalog" if i % 2 == 0 else "SIGHUP", how))
        calls, events, _ = run_load(ctx, target, seconds, actions)
        start = events[0]["at_s"]
        end = events[-1]["at_s"] + events[-1]["took_s"]
        cuts = [("before", 0.0, start), ("reloading", start, end), ("after", end, seconds)]
        return info | {
            "what": f"{n} reloads every {every:.1f} s, ReloadCatalog and SIGHUP alternately",
            "events": events,
            "reloads_ok": sum(bool(e.get("ok")) for e in events),
            "reloads": len(events),
            "final_version": status(),
            "phases": phases(calls, cuts),
            "fault_phase": "reloading",
            "recovered_after_s": recovered_after(calls, end),
            "server": diff(server_metrics(mlisten), m0),
            "log": log_lines(server.log_path, log0),
        }
    finally:
        channel.close()
        server.stop()


def reload(ctx: Ctx) -> dict[str, Any]:
    return _reloads(ctx, "reload", [])


def reload_workers(ctx: Ctx) -> dict[str, Any]:
    if "--workers" not in ctx.env.serve_flags:
        return {"skipped": "this tree's cds serve has no --workers"}
    redis = Redis(ctx.env, "faults-reload-workers")
    try:
        return _reloads(ctx, "reload-workers", ["--workers", "2", "--results", redis.url])
    finally:
        redis.stop()


def _sigterm(ctx: Ctx, name: str, start: Callable[[int], tuple[ServerProcess, str]]) -> dict:
    runs = []
    for k in range(ctx.args.repeat):
        server, target = start(k)
        try:
            log0 = server.log_path.stat().st_size
            term_at, seconds = ctx.at(5), ctx.at(5) + ctx.at(3)

            def term(server: ServerProcess = server) -> dict[str, Any]:
                t = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                try:
                    code = server.proc.wait(timeout=60)
                except Exception:
                    code = None
                return {"exit_code": code, "exited_after_s": round(time.monotonic() - t, 3)}

            calls, events, _ = run_load(ctx, target, seconds, [(term_at, "SIGTERM", term)])
            sig = events[0]["at_s"]
            gone = sig + (events[0].get("exited_after_s") or 0.0)
            cuts = [("before", 0.0, sig), ("SIGTERM to exit", sig, gone),
                    ("after exit", gone, seconds)]  # fmt: skip
            ph = phases(calls, cuts)
            # calls due shortly before the signal that failed: in flight when it came
            racing = calls.between(sig - 0.5, gone + 0.05)
            runs.append(
                {
                    "events": events,
                    "exit_code": events[0].get("exit_code"),
                    "exited_after_s": events[0].get("exited_after_s"),
                    "phases": ph,
                    "racing_the_stop": racing["errors"],
                    "ok_after_signal": calls.between(sig, seconds)["ok"],
                    "log": log_lines(server.log_path, log0),
                }
            )
        finally:
            server.stop()
    return {"runs": runs}


def sigterm(ctx: Ctx) -> dict[str, Any]:
    def start(k: int) -> tuple[ServerProcess, str]:
        server, target, _, _ = serve(ctx, f"sigterm-{k}", [], preload=False)
        return server, target

    return {"what": "SIGTERM under load, default flags"} | _sigterm(ctx, "sigterm", start)


def sigterm_drain(ctx: Ctx) -> dict[str, Any]:
    if "--drain-seconds" not in ctx.env.serve_flags:
        return {"skipped": "this tree's cds serve has no --drain-seconds yet (issue 14 item 4)"}

    def start(k: int) -> tuple[ServerProcess, str]:
        server, target, _, _ = serve(ctx, f"sigterm-drain-{k}", ["--drain-seconds", "1"],
                                     preload=False)  # fmt: skip
        return server, target

    return {"what": "SIGTERM under load, --drain-seconds 1"} | _sigterm(ctx, "drain", start)


def sigterm_bare(ctx: Ctx) -> dict[str, Any]:
    def start(k: int) -> tuple[ServerProcess, str]:
        return start_bare(ctx.env, f"faults-bare-{k}")

    return {
        "what": "SIGTERM under load, bare grpc.aio.server() (benchmarks/empty_server.py, "
        "server.stop(grace=1.0))"
    } | _sigterm(ctx, "bare", start)


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "redis-kill": redis_kill,
    "redis-freeze": redis_freeze,
    "worker-kill": worker_kill,
    "reload": reload,
    "reload-workers": reload_workers,
    "sigterm": sigterm,
    "sigterm-drain": sigterm_drain,
    "sigterm-bare": sigterm_bare,
}
NEEDS_REDIS = {"redis-kill", "redis-freeze", "worker-kill", "reload-workers"}


# --------------------------------------------------------------------------- report


def _codes(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "0"


def _ms(p: dict[str, Any], key: str = "p99_ms") -> str:
    return f"{p[key]:.1f}" if key in p else "–"


def table_rows(res: dict[str, Any]) -> list[str]:
    rows = [
        "| fault | what was done | checks answered | failed checks (codes) | degraded answers "
        "| p99 ms before / during / after | client saw normal service again | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, sc in res.get("scenarios", {}).items():
        if "skipped" in sc or "error" in sc:
            why = sc.get("skipped") or "failed: " + sc["error"].strip().splitlines()[-1][:120]
            rows.append(f"| {name} | – | – | – | – | – | – | {why} |")
            continue
        if "runs" in sc:
            rows.append(sigterm_row(name, sc))
            continue
        ph = sc["phases"]
        total_ok = sum(p["ok"] for p in ph.values())
        errs: Counter[str] = Counter()
        for p in ph.values():
            errs.update(p["errors"])
        marked = sum(p["marked"] for p in ph.values())
        b, d, a = ph["before"], ph[sc["fault_phase"]], ph["after"]
        notes = scenario_notes(name, sc)
        rec = sc.get("recovered_after_s")
        rows.append(
            f"| {name} | {sc['what']} | {total_ok:,} | {_codes(dict(errs))} | {marked:,} | "
            f"{_ms(b)} / {_ms(d)} / {_ms(a)} | "
            f"{'at once' if rec == 0 else f'{rec:.2f} s after the fault ended'} | {notes} |"
        )
    return rows


def scenario_notes(name: str, sc: dict[str, Any]) -> str:
    notes = []
    if "answered_while_frozen" in sc:
        f = sc["answered_while_frozen"]
        notes.append(
            f"**{f['not_degraded']} of {f['answers']} answers while frozen were not degraded** "
            f"(after the first 0.1 s)"
        )
    if "results_kept" in sc:
        k = sc["results_kept"]
        notes.append(
            f"prior results found in {k['before']['recognised']}/{k['before']['orders']} "
            f"lab_hit orders before, {k['after']['recognised']}/{k['after']['orders']} after"
        )
    if "feed" in sc:
        fd = sc["feed"][sc["fault_phase"]]
        notes.append(f"feed during the fault: {fd['codes'] or 'no calls'}")
    if "reloads" in sc:
        notes.append(f"{sc['reloads_ok']}/{sc['reloads']} reloads took effect")
    events = sc.get("events", [])
    for e in events:
        if e.get("respawned_after_s") is not None:
            notes.append(f"a new worker process {e['respawned_after_s']:.2f} s after the kill")
    srv = sc.get("server", {})
    if srv.get("cds_worker_restarts_total"):
        notes.append(f"cds_worker_restarts_total +{srv['cds_worker_restarts_total']:.0f}")
    lg = sc.get("log", {})
    notes.append(f"server log: {lg.get('warnings', 0)} WARNING, {lg.get('errors', 0)} ERROR")
    if sc.get("flags_left_out"):
        notes.append(f"flags left out: {sc['flags_left_out']}")
    return "; ".join(notes)


def sigterm_row(name: str, sc: dict[str, Any]) -> str:
    """Per run: what failed between the signal (from 0.5 s before it: calls then in
    flight) and the exit, by code. UNAVAILABLE is what a gRPC retry policy retries;
    CANCELLED is not. Calls after the exit are refused (nothing listens) and left out."""
    runs = sc["runs"]
    racing: Counter[str] = Counter()
    for r in runs:
        racing.update(r["racing_the_stop"])
    per_run = "; ".join(
        f"run {i + 1}: exit {r['exit_code']} {r['exited_after_s']:.2f} s after SIGTERM, "
        f"{r['ok_after_signal']} answered after it, {_codes(r['racing_the_stop'])}"
        for i, r in enumerate(runs)
    )
    ok = sum(sum(p["ok"] for p in r["phases"].values()) for r in runs)
    p99 = [r["phases"]["before"] for r in runs]
    return (
        f"| {name} | {sc['what']}, {len(runs)} run(s) | {ok:,} | until the exit, all runs: "
        f"{_codes(dict(racing))} | – | {' / '.join(_ms(p) for p in p99)} (before, per run) "
        f"| – | {per_run} |"
    )


def details(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, sc in res.get("scenarios", {}).items():
        if "skipped" in sc or "error" in sc:
            continue
        lines += ["", f"### {name}", "", sc["what"] + "."]
        if sc.get("flags"):
            lines[-1] += f" Server flags: `{' '.join(sc['flags'])}`."
        runs = sc.get("runs", [sc])
        for i, r in enumerate(runs):
            if len(runs) > 1:
                lines += ["", f"Run {i + 1}: exit code {r['exit_code']}, "
                          f"{r['exited_after_s']:.2f} s after SIGTERM; {r['ok_after_signal']} "
                          "answers after the signal."]  # fmt: skip
            lines += [
                "",
                "| phase | s | answered | failed (codes) | degraded | p50 ms | p99 ms | max ms |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for phase, p in r["phases"].items():
                lines.append(
                    f"| {phase} | {p['from_s']:.2f}–{p['to_s']:.2f} | {p['ok']:,} | "
                    f"{_codes(p['errors'])} | {p['marked']:,} | {_ms(p, 'p50_ms')} | "
                    f"{_ms(p)} | {_ms(p, 'max_ms')} |"
                )
            ev = ", ".join(
                f"{e['what']} at {e['at_s']:.2f} s ({e['took_s']:.2f} s)"
                + (" " + ("ok" if e["ok"] else "FAILED") if "ok" in e else "")
                for e in r.get("events", [])
            )
            lines += ["", f"Events: {ev}."]
            lg = r.get("log", {})
            if lg.get("warning_kinds") or lg.get("error_kinds"):
                kinds = {**lg.get("warning_kinds", {}), **lg.get("error_kinds", {})}
                lines += ["", "Server log, WARNING/ERROR lines by kind: "
                          + "; ".join(f"`{k}` ×{v}" for k, v in kinds.items())]  # fmt: skip
        if "feed" in sc:
            feed = "; ".join(
                f"{ph} {f['calls']} calls {f['codes']}" for ph, f in sc["feed"].items()
            )
            lines += ["", f"Feed (PutResults of 100 results each): {feed}."]
        if "server" in sc:
            lines += ["", f"Server's own counters over the run: {sc['server']}."]
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    a = res["args"]
    lines = ["# Fault run", ""]
    if a.get("note"):
        lines += [f"> {a['note']}", ""]
    lines += [
        f"Command: `{res['command']}`, {res['started_at']}, {res.get('wall_s', 0):.0f} s. "
        f"Machine: {m['cpu_model']}, {m['cores']} cores, **shared with other work** (load "
        f"average {' '.join(m['loadavg_start'])} at start, "
        f"{' '.join(m.get('loadavg_end', []))} at end): the timings are noisy, the counts "
        "are what matter.",
        "",
        f"Each scenario: a fresh server (and redis-server), "
        f"{res.get('preload_results', 0):,} results preloaded, the bench's order mix "
        f"({a['orders']:,} distinct orders, so patients repeat within the near-cache's 10 s) "
        f"at {a['rate']:.0f} checks/s open loop from "
        "2 driver processes (4 for worker-kill), each call with a "
        f"{a['timeout']:.0f} s deadline and no retry; a feed of {a['feed_rate']:.0f} "
        "results/s where said. *Degraded* = the answer said `RESULTS_UNAVAILABLE`. "
        "p99 is from each call's scheduled send. "
        "*Normal service again*: the last failed or degraded call after the fault ended.",
        "",
    ]
    if res.get("tree"):
        lines += [f"Server code: `{res['tree']}` (not this checkout).", ""]
    if res.get("error"):
        lines += ["**The run failed part-way**:", "", "```", res["error"][-1500:], "```", ""]
    lines += table_rows(res)
    lines += ["", "## Scenarios"]
    lines += details(res)
    lines += ["", f"All figures: `{res['outputs']['json']}`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    p.add_argument("--list", action="store_true", help="print the scenarios and exit")
    p.add_argument("--rate", type=float, default=400.0, help="checks per second, open loop")
    p.add_argument("--feed-rate", type=float, default=200.0, help="results/s where a feed runs")
    p.add_argument("--timeout", type=float, default=2.0, help="each check's deadline, seconds")
    p.add_argument("--orders", type=int, default=1000, help="distinct orders cycled")
    p.add_argument("--results", type=int, default=100_000, help="preloaded results")
    p.add_argument("--repeat", type=int, default=3, help="runs of each SIGTERM scenario")
    p.add_argument("--tree", type=Path, default=None, help="serve this checkout's cds instead")
    p.add_argument("--tag", default="", help="outputs faults-TAG.json, FAULTS-TAG.md")
    p.add_argument("--note", default="", help="a line for the top of the report")
    p.add_argument("--quick", action="store_true", help="toy scale and a short timeline")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.quick:
        args.rate, args.repeat = min(args.rate, 100.0), 1
        args.results, args.orders = min(args.results, 3_000), min(args.orders, 200)
    cfg: Config = replace(QUICK if args.quick else Config(), results=args.results,
                          patients=max(1, args.results * 3 // 10), orders=args.orders)  # fmt: skip
    out: Path = args.out
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = Env(cfg, out, tmp, None, None)
    stem = f"faults-{args.tag}" if args.tag else "faults"
    res: dict[str, Any] = {
        "command": " ".join(
            shlex.quote(a)
            for a in [
                "python",
                "-m",
                "benchmarks.faults",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "outputs": {"json": f"{stem}.json", "md": f"{stem.upper()}.md"},
        "tree": str(args.tree) if args.tree else None,
        "scenarios": {},
    }
    t0 = time.monotonic()
    status = 0
    try:
        detect(env)
        res["serve_flags_found"] = sorted(env.serve_flags)
        ctx = setup(env, args)
        res["preload_results"] = ctx.pop.n_results
        for name in only:
            if name in NEEDS_REDIS and env.features.get("redis") is not True:
                res["scenarios"][name] = {"skipped": str(env.features.get("redis"))}
                continue
            say(f"{name}")
            try:
                res["scenarios"][name] = RUNNERS[name](ctx)
            except Exception:
                res["scenarios"][name] = {"error": traceback.format_exc()[-3000:]}
                say(f"{name} FAILED:\n{res['scenarios'][name]['error']}")
                status = 1
    except Exception:
        res["error"] = traceback.format_exc()[-4000:]
        say(f"FAILED:\n{res['error']}")
        status = 1
    res["wall_s"] = time.monotonic() - t0
    res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    (out / res["outputs"]["json"]).write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / res["outputs"]["md"]).write_text(markdown(res), encoding="utf-8")
    say(f"done in {res['wall_s']:.0f} s: {out / res['outputs']['md']}")
    return status


def setup(env: Env, args: argparse.Namespace) -> Ctx:
    catalog_json = load_catalog_json(SHIPPED_CATALOG)
    view = CatalogView.of(catalog_json)
    cfg = env.cfg
    pop = build_population(view, cfg.results, cfg.patients, batch_size=cfg.batch)
    orders = build_orders(view, pop, cfg.orders)
    bodies = env.tmp / "faults-orders.bin"
    write_bodies(bodies, [o.body for o in orders])
    return Ctx(env, args, catalog_json, pop, orders, bodies, feed_batches(pop.batches, 100, 100),
               args.tree, 0.5 if args.quick else 1.0, 1.5 if args.quick else 3.0)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
