"""``make soak``: minutes of steady load on a preloaded server; per minute, the server's
RSS, threads and open files, p50/p99 latency and errors.

What it runs: ``cds serve`` with default flags (decision log on, into
``results/tmp/``), preloaded with 1,000,000 results over 300,000 patients (the bench's
population, ``workload.py``), then the bench's order mix at a fixed open-loop rate
(default 1,000 calls/s, the bench's province-scale fixed point) from the bench's
driver, with a LIS feed trickling PutResults of already-stored results beside it (the
same keys: the store's size stays put, so a growing RSS is the server's, not the
data's). ``--store redis`` serves from a redis-server of its own (``--workers N`` too).

Why per-minute windows: a leak or a slow drift shows as a trend across windows that a
single whole-run percentile hides. Each window is one driver run, the next one started
on the instant the previous ends (a shared ``time.monotonic()``), so the load never
pauses. Output, into ``--out`` (``benchmarks/results/``): ``soak.json`` (every window,
every sample, the config) , ``soak.png`` and ``SOAK.md`` (``soak-redis.*`` with the
Redis store). The machine is shared: latency figures are noisy, RSS and errors are not.

``python -m benchmarks.soak --seconds 300`` (``make soak SOAK_SECONDS=300``);
``--quick`` is a few seconds at toy scale (the smoke test).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.bodies import write_bodies
from benchmarks.procs import machine_info
from benchmarks.run import QUICK, ROOT, SHIPPED_CATALOG, Config, Env, decision_log_path, detect
from benchmarks.steady import (
    Calls,
    Feed,
    Load,
    Redis,
    Sampler,
    feed_batches,
    log,
    preload_via,
    start_cds,
    supported,
    wait_until,
)
from benchmarks.workload import CatalogView, build_orders, build_population, load_catalog_json

BIN_S = 10.0  # the plot's resolution


def say(msg: str) -> None:
    log(msg, "soak")


def window_line(w: dict[str, Any]) -> str:
    lat = (
        f"p50 {w['p50_ms']:6.2f} ms  p99 {w['p99_ms']:7.2f} ms  max {w['max_ms']:7.1f} ms"
        if "p50_ms" in w
        else "no answers"
    )
    return (
        f"{w['from_s']:4.0f}-{w['to_s']:<4.0f}s: {w['achieved_rps']:6.0f}/s  {lat}  "
        f"errors {w['failed']} "
        f"{w['errors'] or ''}  RSS {w['rss_mib']:.0f} MiB  threads {w['threads']}  fds "
        f"{w['fds']}  server CPU {w['server_cpu_us_per_call']:.0f} µs/call, waited for a "
        f"CPU {w['server_cpu_wait_frac']:.0%}, load {w['loadavg_1m']:.1f}"
    )


def bins(calls: Calls, seconds: float, width: float) -> list[dict[str, Any]]:
    out = []
    for k in range(math.ceil(seconds / width)):
        lo, hi = k * width, min(seconds, (k + 1) * width)
        b = calls.between(lo, hi)
        b["achieved_rps"] = b["ok"] / (hi - lo)
        out.append(b)
    return out


def soak(args: argparse.Namespace, env: Env, res: dict[str, Any]) -> None:
    cfg = env.cfg
    catalog_json = load_catalog_json(SHIPPED_CATALOG)
    catalog = env.tmp / "soak-catalog.json"
    catalog.write_text(json.dumps(catalog_json, ensure_ascii=False), encoding="utf-8")
    view = CatalogView.of(catalog_json)
    say(f"building workload: {cfg.results:,} results over {cfg.patients:,} patients")
    pop = build_population(view, cfg.results, cfg.patients, batch_size=cfg.batch)
    orders = build_orders(view, pop, cfg.orders)
    bodies = env.tmp / "soak-orders.bin"
    write_bodies(bodies, [o.body for o in orders])
    feed = feed_batches(pop.batches, 100, 200)

    redis = None
    extra: list[str] = []
    if args.store == "redis":
        redis = Redis(env, "soak-redis")
        extra += ["--results", redis.url]
        if args.workers > 1:
            extra += ["--workers", str(args.workers)]
    extra, dropped = supported(env, extra + args.serve_args)
    if dropped:
        say(f"flags this tree's cds serve does not have, left out: {dropped}")
    res["serve_flags"] = extra
    server, target, mlisten = start_cds(env, catalog, "soak-service", extra)
    try:
        t = time.monotonic()
        ingest = preload_via(target, pop.batches, cfg.ingest_inflight)
        ingest["seconds_wall"] = time.monotonic() - t
        res["preload"] = ingest | {
            "cached": metrics.gauge(mlisten, "cds_results_cached"),
            "rss_mib": server.rss() / 2**20,
        }
        say(
            f"preloaded {ingest['accepted']:,} results in {ingest['seconds']:.1f} s; "
            f"RSS {res['preload']['rss_mib']:.0f} MiB"
        )
        run_windows(args, env, res, server, target, mlisten, bodies, feed)
    finally:
        code = server.stop()
        res["server_exit_code"] = code
        res["server_log_tail"] = server.log_path.read_text(errors="replace")[-3000:]
        if redis is not None:
            with_redis_memory(res, redis)
            redis.stop()


def with_redis_memory(res: dict[str, Any], redis: Redis) -> None:
    import redis as redis_py

    try:
        client = redis_py.Redis(port=redis.port, socket_timeout=1.0)
        res["redis_used_memory_mib"] = int(client.info("memory")["used_memory"]) / 2**20
        client.close()
    except redis_py.RedisError:
        pass


def run_windows(
    args: argparse.Namespace,
    env: Env,
    res: dict[str, Any],
    server: Any,
    target: str,
    mlisten: str,
    bodies: Path,
    feed_bodies: list[bytes],
) -> None:
    seconds, width = args.seconds, args.window
    n = max(1, math.ceil(seconds / width))
    t0 = time.monotonic() + 3.0
    spans = [(k * width, min(seconds, (k + 1) * width)) for k in range(n)]
    loads = [
        Load(env, target, bodies, args.rate, hi - lo, t0=t0 + lo, timeout_s=args.timeout)
        for lo, hi in spans
    ]
    sampler = Sampler(server.pid, t0, every=min(5.0, width / 2))
    feed = Feed(target, feed_bodies, args.feed_rate, t0)
    decision_logs = decision_log_path(env, int(target.rsplit(":", 1)[1]))
    windows: list[dict[str, Any]] = []
    loads[0].start()
    wait_until(t0)
    codes0 = metrics.check_codes(mlisten)
    cpu0 = server.cpu()
    wait0 = server.runqueue_wait()
    sampler.sample()
    sampler.start()
    feed.start()
    say(f"steady load: {args.rate:.0f}/s for {seconds:.0f} s, feed {args.feed_rate:.0f} results/s")
    all_calls: list[Calls] = []
    try:
        for k, (lo, hi) in enumerate(spans):
            if k + 1 < n:
                wait_until(t0 + spans[k + 1][0] - 5.0)  # connect ahead of its instant
                loads[k + 1].start()
            calls = loads[k].result()
            if calls.driver_errors:
                raise RuntimeError("driver failed:\n" + calls.driver_errors[0])
            # back to soak time
            shifted = Calls(
                calls.ok_due + lo, calls.latency_ms, calls.err_due + lo, calls.err_codes,
                calls.marked, calls.sent, calls.late, calls.dropped,
            )  # fmt: skip
            all_calls.append(shifted)
            w = shifted.between(lo, hi)
            s = sampler.sample()
            codes = metrics.check_codes(mlisten)
            cpu = server.cpu()
            wait = server.runqueue_wait()
            w |= {
                "minute": k + 1,
                "achieved_rps": w["ok"] / (hi - lo),
                "sent": calls.sent,
                "late": calls.late,
                "dropped": calls.dropped,
                "rss_mib": s["rss_mib"],
                "threads": s["threads"],
                "fds": s["fds"],
                "server_cpu_us_per_call": (cpu - cpu0) / max(1, w["ok"]) * 1e6,
                # the share of the window the server's threads spent runnable but waiting
                # for a CPU: what the neighbours took (in threads, can exceed 100 %)
                "server_cpu_wait_frac": (wait - wait0) / (hi - lo),
                "loadavg_1m": s["loadavg_1m"],
                "server_non_ok": {
                    c: v - (codes0 or {}).get(c, 0)
                    for c, v in (codes or {}).items()
                    if c != "OK" and v - (codes0 or {}).get(c, 0)
                },
                "results_cached": metrics.gauge(mlisten, "cds_results_cached"),
                "decision_log_bytes": sum(
                    p.stat().st_size
                    for p in decision_logs.parent.glob(decision_logs.name.split(".")[0] + "*")
                ),
                "feed": feed.between(lo, hi),
            }
            codes0, cpu0, wait0 = codes, cpu, wait
            windows.append(w)
            say(window_line(w))
    finally:
        feed.halt()
        sampler.halt()
        for load in loads:
            load.kill()
    merged = Calls(
        np.concatenate([c.ok_due for c in all_calls]),
        np.concatenate([c.latency_ms for c in all_calls]),
        np.concatenate([c.err_due for c in all_calls]),
        [code for c in all_calls for code in c.err_codes],
        np.concatenate([c.marked for c in all_calls]),
    )
    res["windows"] = windows
    res["bins"] = bins(merged, seconds, min(BIN_S, width))
    res["samples"] = sampler.samples
    res["whole"] = merged.between(0, seconds)
    res["feed_total"] = feed.between(0, seconds + 60)
    res["verdict"] = verdict(windows)


def verdict(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The drift from the first window to the last: what a leak or a slow-down shows."""
    first, last = windows[0], windows[-1]
    out: dict[str, Any] = {
        "windows": len(windows),
        "failed": sum(w["failed"] for w in windows),
        "rss_first_mib": first["rss_mib"],
        "rss_last_mib": last["rss_mib"],
        "rss_growth_mib": last["rss_mib"] - first["rss_mib"],
        "threads_first_last": [first["threads"], last["threads"]],
        "fds_first_last": [first["fds"], last["fds"]],
    }
    if "p99_ms" in first and "p99_ms" in last:
        out["p99_first_last_ms"] = [first["p99_ms"], last["p99_ms"]]
        out["p50_first_last_ms"] = [first["p50_ms"], last["p50_ms"]]
    return out


# --------------------------------------------------------------------------- outputs


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    v = res.get("verdict", {})
    store = res["args"]["store"]
    lines = [
        f"# Soak: {res['args']['seconds']:.0f} s at {res['args']['rate']:.0f} checks/s, "
        f"{'Redis' if store == 'redis' else 'in-process'} store",
        "",
        f"Command: `{res['command']}`, {res['started_at']}, {res.get('wall_s', 0):.0f} s. "
        f"Machine: {m['cpu_model']}, {m['cores']} cores, shared with other work (load "
        f"average {' '.join(m['loadavg_start'])} at start, "
        f"{' '.join(m.get('loadavg_end', []))} at end): latencies are noisy, counts "
        "and RSS are not.",
        "",
        f"Server: `cds serve` {' '.join(res.get('serve_flags', [])) or '(default flags)'}, "
        f"decision log on; preloaded with {res.get('preload', {}).get('accepted', 0):,} "
        f"results (RSS {res.get('preload', {}).get('rss_mib', 0):.0f} MiB after). Load: "
        f"the bench's order mix, open loop (latency from each call's scheduled send), "
        f"deadline {res['args']['timeout']:.0f} s; a feed re-sending stored results at "
        f"{res['args']['feed_rate']:.0f} results/s beside it.",
        "",
    ]
    if res.get("error"):
        lines += ["**The run failed part-way**; what was measured is below.", "", "```",
                  res["error"][-1500:].rstrip(), "```", ""]  # fmt: skip
    if v:
        p99 = v.get("p99_first_last_ms")
        lines += [
            f"**Verdict**: {v['failed']} failed calls in {v['windows']} windows; RSS "
            f"{v['rss_first_mib']:.0f} → {v['rss_last_mib']:.0f} MiB "
            f"({v['rss_growth_mib']:+.0f} MiB) from the first window to the last; threads "
            f"{v['threads_first_last'][0]} → {v['threads_first_last'][1]}, open files "
            f"{v['fds_first_last'][0]} → {v['fds_first_last'][1]}"
            + (f"; p99 {p99[0]:.2f} → {p99[1]:.2f} ms." if p99 else "."),
            "",
        ]
    lines += [
        "| window (s) | achieved /s | p50 ms | p99 ms | p99.9 ms | max ms | failed | server "
        "non-OK | late sends | RSS MiB | threads | fds | server CPU µs/call | decision log "
        "MiB | feed calls (codes) | server waited for a CPU | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in res.get("windows", []):
        lat = [f"{w[k]:.2f}" if k in w else "–" for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")]
        feed = w["feed"]
        lines.append(
            f"| {w['from_s']:.0f}–{w['to_s']:.0f} | {w['achieved_rps']:,.0f} | "
            f"{' | '.join(lat)} | {w['failed']}"
            f"{' ' + str(w['errors']) if w['errors'] else ''} | {w['server_non_ok'] or 0} | "
            f"{w['late']} | {w['rss_mib']:.0f} | {w['threads']} | {w['fds']} | "
            f"{w['server_cpu_us_per_call']:.0f} | {w['decision_log_bytes'] / 2**20:.1f} | "
            f"{feed['calls']} {feed['codes']} | {w.get('server_cpu_wait_frac', 0):.0%} | "
            f"{w.get('loadavg_1m', 0):.1f} |"
        )
    name = res["outputs"]["png"]
    bin_s = res["bins"][0]["to_s"] - res["bins"][0]["from_s"] if res.get("bins") else BIN_S
    lines += [
        "",
        f"Plot: `{name}` ({bin_s:.0f}-second bins). All figures: `{res['outputs']['json']}`.",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    b = res.get("bins", [])
    s = res.get("samples", [])
    if not b:
        return
    fig, (ax1, ax2, ax3, ax4) = plt.subplots(
        4, 1, figsize=(11, 10), dpi=110, sharex=True, height_ratios=(2.2, 1.4, 1, 1)
    )
    mid = [(x["from_s"] + x["to_s"]) / 2 / 60 for x in b]
    for key, label, style in (
        ("p50_ms", "p50", "-"),
        ("p99_ms", "p99", "-"),
        ("max_ms", "max", ":"),
    ):
        ax1.plot(mid, [x.get(key, np.nan) for x in b], style, marker=".", label=label, lw=1.4)
    ax1.set_yscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax1.yaxis.set_major_formatter(plain)
    ax1.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
    ax1.set_ylabel("latency (ms, log)\nfrom scheduled send")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="upper right", fontsize=8, ncol=3, framealpha=0.85)
    t = [x["t_s"] / 60 for x in s]
    ax2.plot(t, [x["rss_mib"] for x in s], "-", color="tab:purple", label="RSS (MiB)")
    ax2.set_ylabel("server RSS (MiB)", color="tab:purple")
    lo = min(x["rss_mib"] for x in s)
    hi = max(x["rss_mib"] for x in s)
    pad = max(10.0, (hi - lo) * 0.5)
    ax2.set_ylim(max(0.0, lo - pad), hi + pad)  # a flat line stays flat, a drift shows
    ax2.grid(True, alpha=0.3)
    tw = ax2.twinx()
    tw.plot(t, [x["threads"] for x in s], "--", color="tab:gray", label="threads")
    tw.plot(t, [x["fds"] for x in s], ":", color="tab:brown", label="open fds")
    tw.set_ylabel("threads, fds")
    tw.set_ylim(bottom=0)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = tw.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8, ncol=3, framealpha=0.85)
    width = (b[0]["to_s"] - b[0]["from_s"]) / 60
    ax3.bar(mid, [x["achieved_rps"] for x in b], width=width * 0.9, color="tab:green",
            alpha=0.6, label="answered /s")  # fmt: skip
    ax3.axhline(res["args"]["rate"], color="tab:green", lw=0.8, ls="--", label="offered /s")
    ax3.set_ylabel("checks /s")
    ax3.set_ylim(0, res["args"]["rate"] * 1.25)
    ax3.grid(True, alpha=0.3)
    te = ax3.twinx()
    te.plot(mid, [x["failed"] for x in b], "x-", color="tab:red", label="failed calls")
    te.set_ylabel("failed calls per bin", color="tab:red")
    te.set_ylim(bottom=0, top=max(5, max(x["failed"] for x in b) * 1.3))
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = te.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8, ncol=3, framealpha=0.85)
    # the noise: how long the server's threads waited for a CPU, and the load average
    waits = [
        (b2["t_s"] / 60, (b2["runqueue_wait_s"] - a2["runqueue_wait_s"]) / (b2["t_s"] - a2["t_s"]))
        for a2, b2 in itertools.pairwise(s)
        if "runqueue_wait_s" in a2 and b2["t_s"] > a2["t_s"]
    ]
    if waits:
        label = "server threads waiting for a CPU (%)"
        ax4.fill_between([x for x, _ in waits], [y * 100 for _, y in waits], step="pre",
                         color="tab:orange", alpha=0.5, label=label)  # fmt: skip
    ax4.set_ylabel("waiting for\na CPU (%)", color="tab:orange")
    ax4.set_ylim(bottom=0)
    ax4.grid(True, alpha=0.3)
    tl = ax4.twinx()
    tl.plot(t, [x.get("loadavg_1m", np.nan) for x in s], "-", color="black", lw=1,
            label="load average (1 min)")  # fmt: skip
    tl.set_ylabel("load average")
    tl.set_ylim(bottom=0)
    h1, l1 = ax4.get_legend_handles_labels()
    h2, l2 = tl.get_legend_handles_labels()
    ax4.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8, ncol=2, framealpha=0.85)
    ax4.set_xlabel("minutes into the soak")
    a = res["args"]
    m = res["machine"]
    store = "Redis store" if a["store"] == "redis" else "in-process store"
    span = f"{a['seconds'] / 60:.0f} min" if a["seconds"] >= 120 else f"{a['seconds']:.0f} s"
    fig.suptitle(
        f"Soak: cds serve, {store}, {res.get('preload', {}).get('accepted', 0):,} results, "
        f"{a['rate']:.0f} checks/s open loop for {span} "
        f"({m['cores']}-core VM shared with other work: see the bottom panel)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300.0, help="length of the soak")
    p.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    p.add_argument("--rate", type=float, default=1000.0, help="checks per second, open loop")
    p.add_argument("--feed-rate", type=float, default=200.0, help="results/s re-put (0: none)")
    p.add_argument("--timeout", type=float, default=2.0, help="each check's deadline, seconds")
    p.add_argument("--store", choices=("memory", "redis"), default="memory")
    p.add_argument("--workers", type=int, default=1, help="with --store redis")
    p.add_argument("--results", type=int, default=None, help="preloaded results (1,000,000)")
    p.add_argument(
        "--serve-arg",
        dest="serve_args",
        action="append",
        default=[],
        help="an extra cds serve flag (repeat; a flag the tree lacks is left out and said)",
    )
    p.add_argument("--quick", action="store_true", help="toy scale, a few seconds (smoke test)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.workers > 1 and args.store != "redis":
        p.error("--workers needs --store redis")
    cfg: Config = QUICK if args.quick else Config()
    if args.results:
        cfg = replace(cfg, results=args.results, patients=min(cfg.patients, args.results))
    if args.quick:
        args.seconds = min(args.seconds, 4.0)
        args.window = min(args.window, 2.0)
        args.rate = min(args.rate, 200.0)
    out: Path = args.out
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = Env(cfg, out, tmp, None, None)
    stem = "soak" if args.store == "memory" else "soak-redis"
    res: dict[str, Any] = {
        "command": " ".join(
            shlex.quote(a)
            for a in [
                "python",
                "-m",
                "benchmarks.soak",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "outputs": {"json": f"{stem}.json", "png": f"{stem}.png", "md": f"{stem.upper()}.md"},
    }
    t0 = time.monotonic()
    status = 0
    try:
        detect(env)
        soak(args, env, res)
    except Exception:
        res["error"] = traceback.format_exc()[-4000:]
        say(f"FAILED, writing what was measured:\n{res['error']}")
        status = 1
    res["wall_s"] = time.monotonic() - t0
    res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    (out / res["outputs"]["json"]).write_text(json.dumps(res, indent=1, default=str) + "\n")
    plot(res, out / res["outputs"]["png"])
    (out / res["outputs"]["md"]).write_text(markdown(res), encoding="utf-8")
    say(f"done in {res['wall_s']:.0f} s: {out / res['outputs']['md']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
