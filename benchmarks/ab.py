"""Before/after on a noisy machine: several source trees served side by side, interleaved.

An optimisation is judged by comparing the code before and after it *in one run*,
measured in turns (A, B, A, B, ...) so the neighbours' load falls on both alike. Each
tree (``--tree NAME=DIR[@FLAG,FLAG]``, ``DIR`` a checkout whose ``cds`` is imported,
``FLAG``s extra ``cds serve`` flags such as ``--no-decision-log``) gets its own
``python -m cds serve``, preloaded with the same population through ``PutResults``.
The bare empty server (grpc's defaults, raw bytes: the baseline of issue 12) is served
beside them unless ``--no-bare``; ``--matched`` adds the options-matched one.

Every round runs (servers in turn, the order reversed every other round), per server,
h2load on each order class (``--classes``: ``mix`` is the five families of the mix
combined, ``all_warn`` the every-call-a-WARN worst case, or any single family such as
``lab_miss``) and, for each ``--rate``, an open-loop point (server CPU µs per call,
p50/p99). The summary gives medians over the rounds and a line to paste
into a commit message::

    A/B (unpinned, h2load -c 4 -m 8, median of 3 rounds): all_warn 3,610 → 4,020 req/s
    (+11 %), mix 4,150 → 4,420 req/s (+7 %); bare empty 6,850 req/s (all_warn)

Not part of ``make bench``: a tool for the commit messages of performance changes.
Instruction counts per call (``benchmarks/percall.py --tree ...``) are its quiet-machine
complement.

    python -m benchmarks.ab --tree before=/tmp/base --tree after=. --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.bodies import write_bodies
from benchmarks.empty_server import canned_response
from benchmarks.procs import ServerProcess, cpu_set, free_port, tree_env
from benchmarks.run import (
    LAYOUTS,
    SHIPPED_CATALOG,
    Config,
    Env,
    cds_command,
    class_responses,
    detect,
    h2load_mix,
    log,
    open_point,
    preload,
    sample_responses,
    start_empty,
    write_class_map,
)
from benchmarks.workload import (
    WARN_CLASS,
    CatalogView,
    build_orders,
    build_population,
    build_warn_orders,
    grpc_frame,
    load_catalog_json,
    representative_orders,
)


def class_frames(
    tmp: Path, orders: list[Any], warn_orders: list[Any], classes: list[str]
) -> tuple[dict[str, list[tuple[str, Path, float]]], list[tuple[str, bytes]]]:
    """Per requested class, the h2load frames it is measured with (``mix``: its five
    families, combined by share), and every body used (for the empty servers' replies)."""
    reps = representative_orders(orders)
    by_family = {family: (body, share) for family, body, share in reps}
    if warn_orders:
        by_family[WARN_CLASS] = (warn_orders[0].body, 0.0)
    used: dict[str, bytes] = {}
    out: dict[str, list[tuple[str, Path, float]]] = {}
    for cls in classes:
        families = [f for f, _, _ in reps] if cls == "mix" else [cls]
        frames = []
        for family in families:
            if family not in by_family:
                raise SystemExit(
                    f"unknown class {family!r}: mix, {WARN_CLASS}, {sorted(by_family)}"
                )
            body, share = by_family[family]
            path = tmp / f"h2load-{family}.bin"
            path.write_bytes(grpc_frame(body))
            used[family] = body
            frames.append((family, path, share if cls == "mix" else 1.0))
        out[cls] = frames
    return out, list(used.items())


def commit_line(summary: dict[str, Any], trees: list[str], classes: list[str], how: str) -> str:
    """``A/B (...): all_warn 3,610 → 4,020 req/s (+11 %), …; bare empty 6,850 req/s``."""
    parts = []
    for cls in classes:
        vals = [summary.get(t, {}).get(f"h2load_{cls}_rps") for t in trees]
        if not all(vals):
            continue
        txt = f"{cls} " + " → ".join(f"{v:,.0f}" for v in vals) + " req/s"
        if len(vals) >= 2:
            txt += f" ({(vals[-1] / vals[0] - 1) * 100:+.0f} %)"
        parts.append(txt)
    line = f"A/B ({how}): " + ", ".join(parts)
    bare = summary.get("bare", {})
    bare_bits = [
        f"{bare[f'h2load_{c}_rps']:,.0f} req/s ({c})"
        for c in classes
        if bare.get(f"h2load_{c}_rps")
    ]
    if bare_bits:
        line += "; bare empty " + ", ".join(bare_bits)
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], help="NAME=DIR[@FLAG,FLAG] (repeatable)")
    p.add_argument("--no-bare", action="store_true", help="leave the bare empty server out")
    p.add_argument("--empty", action="store_true", help=argparse.SUPPRESS)  # the old name: bare
    p.add_argument("--matched", action="store_true", help="the options-matched empty server too")
    p.add_argument(
        "--classes",
        default=f"mix,{WARN_CLASS}",
        help=f"h2load classes per round: mix, {WARN_CLASS}, lab_hit, lab_miss, exam_hit, "
        "exam_miss, gene_clean (default mix,all_warn)",
    )
    p.add_argument("--no-h2load", action="store_true", help="open-loop points only")
    p.add_argument("--layout", choices=list(LAYOUTS), default="unpinned")
    p.add_argument("--results", type=int, default=1_000_000)
    p.add_argument("--patients", type=int, default=300_000)
    p.add_argument("--rate", type=float, action="append", default=[], help="open-loop req/s")
    p.add_argument("--point-s", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--h2load-s", type=float, default=3.0)
    p.add_argument("--extra", default="", help="extra `cds serve` flags, space-separated")
    p.add_argument("--out", type=Path, default=Path("/tmp/cds-ab"))
    args = p.parse_args(argv)
    trees = []
    for t in args.tree:
        name, _, spec = t.partition("=")
        d, _, flags = spec.partition("@")
        trees.append((name, Path(d).resolve(), flags.split(",") if flags else []))
    if not trees:
        p.error("give at least one --tree NAME=DIR")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    rates = args.rate or [1000.0]
    cfg = replace(
        Config(),
        results=args.results,
        patients=args.patients,
        point_s=args.point_s,
        h2load_s=args.h2load_s,
    )
    tmp = args.out
    tmp.mkdir(parents=True, exist_ok=True)
    server_cpus, driver_cpus = LAYOUTS[args.layout]
    env = Env(cfg, tmp, tmp, server_cpus, driver_cpus)
    os.sched_setaffinity(0, cpu_set(driver_cpus))
    detect(env)
    use_h2load = not args.no_h2load and env.features.get("h2load") is True
    catalog_json = load_catalog_json(SHIPPED_CATALOG)
    catalog = tmp / "catalog.json"
    catalog.write_text(json.dumps(catalog_json, ensure_ascii=False), encoding="utf-8")
    view = CatalogView.of(catalog_json)
    pop = build_population(view, cfg.results, cfg.patients, batch_size=cfg.batch)
    orders = build_orders(view, pop, cfg.orders)
    warn_orders = build_warn_orders(view, pop, cfg.warn_orders)
    bodies = tmp / "orders.bin"
    write_bodies(bodies, [o.body for o in orders])
    frames, used = class_frames(tmp, orders, warn_orders, classes)

    servers: dict[str, tuple[ServerProcess, str, str | None]] = {}
    res: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}, "servers": {}}
    try:
        response_bytes = None
        class_map = None
        for name, tree, flags in trees:
            port, mport = free_port(), free_port()
            cmd = cds_command(env, catalog, port, mport, args.extra.split() + flags)
            cmd.insert(1, "-P")  # import the tree's cds, not the one in the current directory
            if "--no-decision-log" in cmd and "--decision-log" in cmd:
                i = cmd.index("--decision-log")
                del cmd[i : i + 2]
            srv = ServerProcess(cmd, cpus=server_cpus, log=tmp / f"{name}.log", env=tree_env(tree))
            target = f"127.0.0.1:{port}"
            srv.wait_serving(target)
            log(f"{name}: preload")
            ingest = preload(env, srv, target, f"127.0.0.1:{mport}", pop)
            resp = sample_responses(target, orders, 300)
            sizes = class_responses(target, used)
            if response_bytes is None:  # the empty servers answer like the first tree
                response_bytes = round(resp["mean_bytes"])
                class_map = write_class_map(tmp / "class-responses.json", used, sizes)
            res["servers"][name] = {
                "tree": str(tree),
                "flags": flags,
                "ingest": ingest,
                "mean_response_bytes": resp["mean_bytes"],
                "classes": sizes,
            }
            servers[name] = (srv, target, f"127.0.0.1:{mport}")
        stacks = ([] if args.no_bare else ["bare"]) + (["matched"] if args.matched else [])
        for stack in stacks:
            srv, target = start_empty(env, stack, response_bytes, class_map)
            srv.set_cpus(server_cpus)
            servers[stack] = (srv, target, None)
            res["servers"][stack] = {"response_bytes": len(canned_response(response_bytes))}
        points: dict[str, list[dict[str, Any]]] = {n: [] for n in servers}
        for rnd in range(args.rounds):
            # A, B, …, then …, B, A: a server's place in the round (say, first after an
            # idle spell) then favours no tree over the others.
            order = list(servers.items())
            if rnd % 2:
                order.reverse()
            for name, (srv, target, mt) in order:
                row: dict[str, Any] = {"round": rnd}
                if use_h2load:
                    for cls, fr in frames.items():
                        h = h2load_mix(env, target, fr, mt, server=srv)
                        # a run a neighbour disturbed is kept in ab.json, not in medians
                        row[f"h2load_{cls}_rps"] = h["mix_rps"] if h["mix_valid"] else None
                        row[f"h2load_{cls}_measured_rps"] = h["mix_rps"]
                        row[f"h2load_{cls}_not_ok"] = h.get("grpc_not_ok")
                        row[f"h2load_{cls}_python_us"] = h["python_cpu_us_per_call"]
                        row[f"h2load_{cls}_process_us"] = h["server_cpu_us_per_call"]
                        py_us = h["python_cpu_us_per_call"]
                        log(
                            f"  r{rnd} {name:8s} h2load {cls:9s} {h['mix_rps']:8.0f}/s"
                            + (f", Python threads {py_us:6.1f} µs/call" if py_us else "")
                            + ("" if h["mix_valid"] else " (disturbed: not counted)")
                        )
                for rate in rates:
                    pt = open_point(env, target, bodies, rate, srv)
                    row[f"open_{rate:.0f}"] = {
                        k: pt[k]
                        for k in (
                            "achieved_rps",
                            "server_cpu_us_per_call",
                            "server_core_others_frac",
                            "p50_us",
                            "p99_us",
                            "p999_us",
                            "max_us",
                            "errors",
                            "late",
                        )
                        if k in pt
                    }
                    log(
                        f"  r{rnd} {name:8s} {rate:6.0f}/s: cpu {pt['server_cpu_us_per_call']:6.1f}"
                        f" µs/call p50 {pt['p50_us'] / 1000:6.2f} p99 {pt['p99_us'] / 1000:7.2f}"
                        f" max {pt['max_us'] / 1000:7.2f} ms err {sum(pt['errors'].values())}"
                        f" others {pt['server_core_others_frac'] or 0:.2f} cores"
                    )
                points[name].append(row)
        res["points"] = points
        summary: dict[str, dict[str, Any]] = {}
        for name, rows in points.items():
            s: dict[str, Any] = {}
            for rate in rates:
                key = f"open_{rate:.0f}"
                s[key] = {
                    "cpu_us_per_call_median": statistics.median(
                        r[key]["server_cpu_us_per_call"] for r in rows
                    ),
                    "p50_ms_median": statistics.median(r[key]["p50_us"] for r in rows) / 1000,
                    "p99_ms_median": statistics.median(r[key]["p99_us"] for r in rows) / 1000,
                    "p99_ms_max": max(r[key]["p99_us"] for r in rows) / 1000,
                }
            if use_h2load:
                for cls in classes:
                    key = f"h2load_{cls}_rps"
                    vals = [r[key] for r in rows if r[key]]
                    s[key] = statistics.median(vals) if vals else None
                    s[f"h2load_{cls}_rounds_counted"] = len(vals)
                    if "bare" in points and name != "bare":
                        rs = [
                            r[key] / b[key]
                            for r, b in zip(rows, points["bare"], strict=True)
                            if r[key] and b[key]
                        ]
                        s[f"h2load_{cls}_vs_bare_median"] = statistics.median(rs) if rs else None
                    for what in ("python_us", "process_us"):
                        k = f"h2load_{cls}_{what}"
                        us = [r[k] for r in rows if r[key] and r.get(k)]
                        s[f"{k}_median"] = statistics.median(us) if us else None
                        if "bare" in points and name != "bare":
                            # bare's cost over ours: the rate ratio if that CPU is the limit
                            cs = [
                                b[k] / r[k]
                                for r, b in zip(rows, points["bare"], strict=True)
                                if r[key] and b[key] and r.get(k) and b.get(k)
                            ]
                            s[f"h2load_{cls}_{what}_bare_over_service"] = (
                                statistics.median(cs) if cs else None
                            )
            summary[name] = s
        res["summary"] = summary
        how = (
            f"{args.layout}, h2load -c {cfg.h2load_clients} -m {cfg.h2load_streams}, "
            f"median of {args.rounds} rounds"
        )
        if use_h2load:
            res["commit_line"] = commit_line(summary, [t[0] for t in trees], classes, how)
        print(json.dumps({"summary": summary, "servers": res["servers"]}, indent=1, default=str))
        if res.get("commit_line"):
            print(res["commit_line"])
    finally:
        for srv, _, _ in servers.values():
            srv.stop()
        (tmp / "ab.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
