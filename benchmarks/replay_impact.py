"""Impact preview: the replay's own time, and the Check p99 while a replay runs.

Two measurements, one JSON line (``main()``):

* ``replay``: in this process, no gRPC. The benchmark workload's results (the in-process
  store, filled as PutResults would) and ``--orders`` of its orders in a
  ``RecentOrders`` buffer, replayed against the shipped catalogue and a candidate
  (recognition made a block, consent silent, three windows halved: every order judged
  twice): seconds for the whole replay, as the server runs it (in slices, waiting for
  checks between them), orders per second, and what the impact found.
  ``replay_windows_only``: the same with only the windows changed, which reaches only
  the orders of those three items.
* ``checks``: a real ``cds serve`` pinned to CPU 0 (the driver on CPU 1), preloaded the
  same way and sent ``--orders`` Checks so its buffer is full; then an open-loop stream
  of Checks at ``--rate`` (latency counted from each call's scheduled time, so a stall
  is not hidden) for ``--window-s`` without a replay, and again while a dry run with
  that candidate replays the buffer: p50/p99/max of each, failed calls, and the dry
  run's RPC time.

``python -m benchmarks.replay_impact [--orders N] [--quick]``. Figures of record come
from a quiet machine; on a shared one, compare the two ``checks`` windows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog" / "catalog.json"
CHECK = "/cds.v1.OrderCheckService/Check"
PUT = "/cds.v1.ResultFeedService/PutResults"
RELOAD = "/cds.v1.CatalogAdminService/ReloadCatalog"


def candidate_of(cat: dict[str, Any], *, policy: bool = True) -> dict[str, Any]:
    """The change previewed: three windows halved and, with ``policy``, recognition made
    a block and consent silent. A policy change reaches every order (the worst case: all
    are judged twice); windows alone reach only the orders of those items."""
    new = copy.deepcopy(cat)
    new["version"] = cat["version"] + "-candidate"
    if policy:
        new["policy"] = {
            "severity": {"RECOGNIZABLE_RESULT_EXISTS": "BLOCK", "CONSENT_REQUIRED": "SILENT"}
        }
    for item in new["recognition_items"][:3]:
        item["validity_days"] = max(1, item["validity_days"] // 2)
    return new


def workload(cat: dict[str, Any], orders: int, results: int, patients: int) -> tuple[Any, Any]:
    from benchmarks.workload import CatalogView, build_orders, build_population

    view = CatalogView.of(cat)
    population = build_population(view, results, patients)
    return population, build_orders(view, population, orders)


def measure_replay(
    cat: dict[str, Any], population: Any, orders: Any, *, policy: bool = True
) -> dict[str, Any]:
    from cds.catalog.load import parse_catalog
    from cds.results.memory import MemoryResultStore
    from cds.rollout.replay import RecentOrders, replay
    from cds.rules.engine import Engine
    from cds.service.convert import checked_order, rows_from_results
    from cds.v1 import order_check_pb2, result_feed_pb2

    active = parse_catalog(json.dumps(cat).encode())
    candidate = parse_catalog(json.dumps(candidate_of(cat, policy=policy)).encode())
    now_us = time.time_ns() // 1000
    store = MemoryResultStore(10 * population.n_results)
    recent = RecentOrders(len(orders))
    for order in orders:
        recent.record(checked_order(order_check_pb2.CheckRequest.FromString(order.body), now_us))

    async def run() -> tuple[float, Any]:
        for batch in population.batches:
            request = result_feed_pb2.PutResultsRequest.FromString(batch)
            rows = rows_from_results(request.results, now_us, active.retention_us).rows
            await store.put_many(rows)
        records = recent.records()
        # As the server does once started: the benchmark's own workload objects are
        # not the replay's to walk in a collection.
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        impact = await replay(records, store.get_patient, Engine(active), Engine(candidate), now_us)
        return time.perf_counter() - started, impact

    seconds, impact = asyncio.run(run())
    return {
        "orders": impact.orders_replayed,
        "seconds": round(seconds, 3),
        "orders_per_second": round(impact.orders_replayed / seconds),
        "lines_changed": impact.lines_changed,
        "rows": len(impact.rows),
    }


def _percentiles(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"calls": 0}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "calls": len(ordered),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


async def _open_loop(check: Any, bodies: list[bytes], rate: float, until: asyncio.Future[Any],
                     out: list[float], failures: list[str]) -> None:  # fmt: skip
    """Checks on a schedule until ``until`` is done; latency from the scheduled send."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task[None]] = set()

    async def one(body: bytes, due: float) -> None:
        try:
            await check(body, timeout=10)
            out.append(loop.time() - due)
        except Exception as e:
            failures.append(type(e).__name__)

    i = 0
    while not until.done():
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(bodies[i % len(bodies)], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    if pending:
        await asyncio.wait(pending)


async def _drive(address: str, args: argparse.Namespace, population: Any, orders: Any,
                 candidate: bytes) -> dict[str, Any]:  # fmt: skip
    import grpc

    from cds.v1 import catalog_admin_pb2

    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary(CHECK)
        put = channel.unary_unary(PUT)
        reload = channel.unary_unary(
            RELOAD,
            request_serializer=catalog_admin_pb2.ReloadCatalogRequest.SerializeToString,
            response_deserializer=catalog_admin_pb2.ReloadCatalogResponse.FromString,
        )
        for batch in population.batches:
            await put(batch, timeout=60)
        bodies = [o.body for o in orders]
        queue = iter(bodies)

        async def filler() -> None:
            for body in queue:
                await check(body, timeout=30)

        await asyncio.gather(*(filler() for _ in range(32)))  # the buffer is now full

        loop = asyncio.get_running_loop()
        quiet: list[float] = []
        failures: list[str] = []
        window = loop.create_task(asyncio.sleep(args.window_s))
        await _open_loop(check, bodies, args.rate, window, quiet, failures)

        during: list[float] = []
        request = catalog_admin_pb2.ReloadCatalogRequest(dry_run=True, candidate=candidate)
        started = loop.time()

        async def preview() -> Any:
            await asyncio.sleep(0.5)  # the stream is running first
            t0 = loop.time()
            answer = await reload(request, timeout=120)
            return answer, loop.time() - t0

        dry_run = loop.create_task(preview())
        await _open_loop(check, bodies, args.rate, dry_run, during, failures)
        answer, rpc_s = dry_run.result()
        return {
            "rate_per_s": args.rate,
            "without_replay": _percentiles(quiet),
            "during_replay": _percentiles(during),
            "failed_calls": len(failures),
            "dry_run_rpc_s": round(rpc_s, 3),
            "window_s": round(loop.time() - started, 3),
            "orders_replayed": answer.impact.orders_replayed,
            "lines_changed": answer.impact.lines_changed,
        }


def measure_checks(
    cat: dict[str, Any], population: Any, orders: Any, args: argparse.Namespace
) -> dict[str, Any]:
    from benchmarks.procs import ServerProcess, free_port

    with tempfile.TemporaryDirectory(prefix="cds-replay-") as tmp:
        path = Path(tmp) / "catalog.json"
        path.write_text(json.dumps(cat, ensure_ascii=False), encoding="utf-8")
        port = free_port()
        command = [
            sys.executable, "-m", "cds", "serve", "--catalog", str(path),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0",
            "--no-decision-log", "--replay-orders", str(len(orders)),
            "--max-results", str(2 * population.n_results),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        two = (os.cpu_count() or 1) > 1
        if two:  # the driver keeps off the server's core
            os.sched_setaffinity(0, {1})
        log = Path(tmp) / "server.log"
        with ServerProcess(command, cpus="0" if two else None, log=log, env=env) as server:
            server.wait_serving(f"127.0.0.1:{port}")
            candidate = json.dumps(candidate_of(cat), ensure_ascii=False).encode()
            return asyncio.run(_drive(f"127.0.0.1:{port}", args, population, orders, candidate))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", type=Path, default=CATALOG)
    p.add_argument("--orders", type=int, default=100_000)
    p.add_argument("--results", type=int, default=300_000)
    p.add_argument("--patients", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=300.0, help="Checks/s during the windows")
    p.add_argument("--window-s", type=float, default=5.0)
    p.add_argument("--no-server", action="store_true", help="only the in-process replay")
    p.add_argument("--quick", action="store_true", help="toy scale, for a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.orders, args.results, args.patients, args.window_s = 2_000, 6_000, 2_000, 1.0
    cat = json.loads(args.catalog.read_text(encoding="utf-8"))
    population, orders = workload(cat, args.orders, args.results, args.patients)
    out: dict[str, Any] = {
        "replay": measure_replay(cat, population, orders),
        "replay_windows_only": measure_replay(cat, population, orders, policy=False),
    }
    if not args.no_server:
        out["checks"] = measure_checks(cat, population, orders, args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
