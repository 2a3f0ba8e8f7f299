"""Before/after on a noisy machine: several source trees served side by side, interleaved.

An optimisation is judged by comparing the code before and after it *in one run*,
measured in turns (A, B, A, B, ...) so the neighbours' load falls on both alike. Each
tree (``--tree NAME=DIR``, ``DIR`` a checkout whose ``cds`` is imported) gets its own
``python -m cds serve`` on the server core, preloaded with the same population through
``PutResults``; then every round runs, per server, an open-loop point at ``--rate`` (server
CPU µs per call, p50/p99) and, with ``--h2load``, the closed-loop mix. ``--empty`` adds
the empty gRPC server to the rounds, for the service/empty ratios.

Not part of ``make bench``: a tool for the commit messages of performance changes.

    python -m benchmarks.ab --tree before=/tmp/base --tree after=. --rate 1800 --rounds 3
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
from benchmarks.procs import ServerProcess, free_port
from benchmarks.run import (
    SHIPPED_CATALOG,
    Config,
    Env,
    cds_command,
    detect,
    h2load_mix,
    log,
    open_point,
    preload,
    sample_responses,
)
from benchmarks.workload import (
    CatalogView,
    build_orders,
    build_population,
    grpc_frame,
    load_catalog_json,
    representative_orders,
)


def tree_env(env: Env, tree: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(tree) + os.pathsep + os.environ.get("AB_EXTRA_PYTHONPATH", "")
    return e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], help="NAME=DIR[@FLAG,FLAG] (repeatable)")
    p.add_argument("--empty", action="store_true", help="the empty server too")
    p.add_argument("--results", type=int, default=1_000_000)
    p.add_argument("--patients", type=int, default=300_000)
    p.add_argument("--rate", type=float, action="append", default=[])
    p.add_argument("--point-s", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--h2load", action="store_true", help="closed-loop mix each round")
    p.add_argument("--h2load-s", type=float, default=3.0)
    p.add_argument("--extra", default="", help="extra `cds serve` flags, space-separated")
    p.add_argument("--out", type=Path, default=Path("/tmp/cds-ab"))
    args = p.parse_args(argv)
    trees = []
    for t in args.tree:
        name, _, spec = t.partition("=")
        d, _, flags = spec.partition("@")
        trees.append((name, Path(d).resolve(), flags.split(",") if flags else []))
    rates = args.rate or [1800.0]
    cfg = replace(
        Config(),
        results=args.results,
        patients=args.patients,
        point_s=args.point_s,
        h2load_s=args.h2load_s,
    )
    tmp = args.out
    tmp.mkdir(parents=True, exist_ok=True)
    env = Env(cfg, tmp, tmp, "0", "1")
    os.sched_setaffinity(0, {1})
    detect(env)
    catalog_json = load_catalog_json(SHIPPED_CATALOG)
    catalog = tmp / "catalog.json"
    catalog.write_text(json.dumps(catalog_json, ensure_ascii=False), encoding="utf-8")
    view = CatalogView.of(catalog_json)
    pop = build_population(view, cfg.results, cfg.patients, batch_size=cfg.batch)
    orders = build_orders(view, pop, cfg.orders)
    bodies = tmp / "orders.bin"
    write_bodies(bodies, [o.body for o in orders])
    frames = []
    for family, body, share in representative_orders(orders):
        path = tmp / f"h2load-{family}.bin"
        path.write_bytes(grpc_frame(body))
        frames.append((family, path, share))

    servers: dict[str, tuple[ServerProcess, str, str | None]] = {}
    res: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}, "servers": {}}
    try:
        response_bytes = None
        for name, tree, flags in trees:
            port, mport = free_port(), free_port()
            cmd = cds_command(env, catalog, port, mport, args.extra.split() + flags)
            cmd.insert(1, "-P")  # import the tree's cds, not the one in the current directory
            if "--no-decision-log" in cmd and "--decision-log" in cmd:
                i = cmd.index("--decision-log")
                del cmd[i : i + 2]
            srv = ServerProcess(cmd, cpus="0", log=tmp / f"{name}.log", env=tree_env(env, tree))
            target = f"127.0.0.1:{port}"
            srv.wait_serving(target)
            log(f"{name}: preload")
            ingest = preload(env, srv, target, f"127.0.0.1:{mport}", pop)
            resp = sample_responses(target, orders, 300)
            response_bytes = round(resp["mean_bytes"])
            res["servers"][name] = {"ingest": ingest, "mean_response_bytes": resp["mean_bytes"]}
            servers[name] = (srv, target, f"127.0.0.1:{mport}")
        if args.empty:
            cmd = [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
            if response_bytes:
                cmd += ["--response-bytes", str(response_bytes)]
            srv = ServerProcess(cmd, cpus="0", log=tmp / "empty.log", env=env.subprocess_env())
            servers["empty"] = (srv, f"127.0.0.1:{srv.wait_port_line()}", None)
            res["servers"]["empty"] = {"response_bytes": len(canned_response(response_bytes))}
        points: dict[str, list[dict[str, Any]]] = {n: [] for n in servers}
        for rnd in range(args.rounds):
            for name, (srv, target, mt) in servers.items():
                row: dict[str, Any] = {"round": rnd}
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
                            "p99_9_us",
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
                        f" others {pt['server_core_others_frac'] or 0:.0%}"
                    )
                if args.h2load:
                    h = h2load_mix(env, target, frames, mt)
                    row["h2load_mix_rps"] = h["mix_rps"]
                    log(f"  r{rnd} {name:8s} h2load mix {h['mix_rps']:.0f}/s")
                points[name].append(row)
        res["points"] = points
        summary = {}
        for name, rows in points.items():
            s: dict[str, Any] = {}
            for rate in rates:
                key = f"open_{rate:.0f}"
                cpu = [r[key]["server_cpu_us_per_call"] for r in rows]
                s[key] = {
                    "cpu_us_per_call_median": statistics.median(cpu),
                    "p50_ms_median": statistics.median(r[key]["p50_us"] for r in rows) / 1000,
                    "p99_ms_median": statistics.median(r[key]["p99_us"] for r in rows) / 1000,
                    "p99_ms_max": max(r[key]["p99_us"] for r in rows) / 1000,
                }
            if args.h2load:
                s["h2load_mix_rps_median"] = statistics.median(r["h2load_mix_rps"] for r in rows)
            summary[name] = s
        res["summary"] = summary
        print(json.dumps({"summary": summary, "servers": res["servers"]}, indent=1))
    finally:
        for srv, _, _ in servers.values():
            srv.stop()
        (tmp / "ab.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
