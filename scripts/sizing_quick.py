"""Quick sizing measurements for docs/sizing.md (not the benchmark suite: see benchmarks/).

1. Redis memory per result: fill a fresh redis-server through RedisResultStore with
   realistic ids and read ``used_memory`` before and after.
2. Server CPU per Check: run ``cds serve`` (in-process store, Redis store, and
   ``--workers 2``), send checks from this process, and divide the checks answered by
   the CPU seconds the server processes (and redis-server) used, read from /proc. CPU
   seconds per check do not depend on the load driver sharing the cores, which is why
   this and not a throughput figure.

Run: PYTHONPATH=. .venv/bin/python scripts/sizing_quick.py
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import grpc
from redis import Redis

from cds.domain import StoredResult
from cds.results.base import StoredRow
from cds.results.redis_store import RedisResultStore
from cds.v1 import order_check_pb2_grpc, result_feed_pb2, result_feed_pb2_grpc
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.redis_server import RedisServer
from tests.support.server import RunningServer, running_server

ITEMS = [f"{random.Random(i).randint(1000, 99999)}-{i % 10}" for i in range(300)]
INSTITUTIONS = [f"3501{i:02d}-H{i:04d}" for i in range(60)]


def used_memory(url: str) -> int:
    return int(Redis.from_url(url).info("memory")["used_memory"])


async def fill(url: str, patients: int, per_patient: int) -> None:
    store = RedisResultStore(url)
    rng = random.Random(7)
    now = now_us()
    rows = []
    for p in range(patients):
        for k in range(per_patient):
            rows.append(
                StoredRow(
                    f"FJ{p:010d}",
                    StoredResult(
                        f"LIS-2026-{p:08d}-{k:02d}",
                        rng.choice(ITEMS),
                        rng.choice(INSTITUTIONS),
                        now - rng.randint(0, 30) * DAY_US,
                        rng.random() < 0.8,
                    ),
                    now + rng.randint(30, 180) * DAY_US,
                )
            )
    for start in range(0, len(rows), 10_000):
        await store.put_many(rows[start : start + 10_000])
    await store.close()


def redis_memory() -> None:
    print("## Redis memory per result")
    for patients, per_patient in ((50_000, 1), (20_000, 5), (5_000, 20)):
        with tempfile.TemporaryDirectory() as d:
            server = RedisServer(Path(d))
            server.start()
            try:
                before = used_memory(server.url)
                asyncio.run(fill(server.url, patients, per_patient))
                after = used_memory(server.url)
            finally:
                server.stop()
        n = patients * per_patient
        per = (after - before) / n
        print(
            f"{per_patient:>2} results/patient: {n} results, {per:.0f} B/result, "
            f"{1024**3 / per / 1e6:.1f} M results per GB of used_memory"
        )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(address: str, patients: int, checks: int, concurrency: int, first: int = 0) -> None:
    """``checks`` Checks of patients ``first``, ``first + 1``, …: each patient once,
    so the Redis store's near-cache never answers (the worst case for Redis)."""
    # several connections so --workers N spreads them
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(concurrency)
    ]
    stubs = [order_check_pb2_grpc.OrderCheckServiceStub(c) for c in channels]
    requests = [
        check_request(
            item("1", ITEMS[i % 40]),
            item("2", ITEMS[(i * 7) % 40]),
            patient_id=f"FJ{(first + i) % patients:010d}",
        )
        for i in range(checks)
    ]

    async def lane(i: int) -> None:
        stub = stubs[i]
        for n in range(i, checks, concurrency):
            await stub.Check(requests[n], timeout=5)

    await asyncio.gather(*(lane(i) for i in range(concurrency)))
    for c in channels:
        await c.close()


def feed(server: RunningServer, patients: int) -> None:
    stub = result_feed_pb2_grpc.ResultFeedServiceStub(server.channel)
    rng = random.Random(3)
    batch = []
    for p in range(patients):
        for k in range(3):
            batch.append(
                result(
                    f"R{p}-{k}",
                    patient_id=f"FJ{p:010d}",
                    item_code=rng.choice(ITEMS[:40]),
                    reported_at_us=now_us() - rng.randint(1, 20) * DAY_US,
                )
            )
    for start in range(0, len(batch), 10_000):
        stub.PutResults(
            result_feed_pb2.PutResultsRequest(results=batch[start : start + 10_000]), timeout=30
        )


def server_pids(server: RunningServer) -> list[int]:
    pids = re.search(r"pids ([\d,]+);", server.log_text())
    return [int(p) for p in pids.group(1).split(",")] if pids else [server.process.pid]


def cpu_per_check(label: str, args: tuple[str, ...], redis: RedisServer | None) -> None:
    warm, checks = 2_000, 20_000
    patients = warm + checks
    with (
        tempfile.TemporaryDirectory() as d,
        running_server(Path(d), extra_args=("--no-decision-log", *args)) as server,
    ):
        feed(server, patients)
        asyncio.run(drive(server.address, patients, warm, 8))  # warm up
        pids = server_pids(server)
        before = sum(cpu_seconds(p) for p in pids)
        rbefore = cpu_seconds(redis.process.pid) if redis else 0.0
        t0 = time.perf_counter()
        asyncio.run(drive(server.address, patients, checks, 8, first=warm))
        wall = time.perf_counter() - t0
        used = sum(cpu_seconds(p) for p in pids) - before
        rused = (cpu_seconds(redis.process.pid) - rbefore) if redis else 0.0
    extra = f", redis-server {rused / checks * 1e6:.0f} µs/check" if redis else ""
    print(
        f"{label}: {used / checks * 1e6:.0f} µs server CPU/check -> {checks / used:.0f} checks/s "
        f"per core{extra} (wall {checks / wall:.0f}/s with the driver on the same 2 cores)"
    )


def main() -> None:
    redis_memory()
    print("## Server CPU per Check (2 lines, every patient has 3 results, each checked once)")
    cpu_per_check("in-process store, 1 process", (), None)
    with tempfile.TemporaryDirectory() as d:
        redis = RedisServer(Path(d))
        redis.start()
        try:
            cpu_per_check("Redis store, 1 process", ("--results", redis.url), redis)
            cpu_per_check(
                "Redis store, --workers 2", ("--results", redis.url, "--workers", "2"), redis
            )
        finally:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
