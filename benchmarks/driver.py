"""The Python load driver: open loop on a fixed schedule, or closed loop at a concurrency.

Open loop (after wrk2): request *i* is due at ``start + i / rate``; its latency is
counted from that due time, not from when the driver got round to sending it, so a
stall in the server (or in the driver) shows up in the percentiles instead of silently
lowering the offered rate ("coordinated omission"). A send more than ``--late-ms``
after its due time is counted late; a request due while ``--max-inflight`` calls are
already outstanding is not sent and counted dropped. A dropped request has no latency,
so any drop means the offered rate was not actually offered: read the row as saturated.

Requests are pre-serialized bytes sent through a grpc.aio generic unary call (no
serializer), responses are left as bytes: the driver does as little Python per call as
grpc.aio allows. Its own CPU time is reported so a driver-bound row can be told apart.

Run as a subprocess (so it can be pinned to its own core):
``python -m benchmarks.driver --target H:P --bodies FILE --rate R --duration S``; it
prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import resource
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram

from benchmarks.bodies import read_bodies

CHECK_METHOD = "/cds.v1.OrderCheckService/Check"
HIST_MAX_US = 60_000_000
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def runqueue_wait_seconds() -> float:
    """This process's threads' time spent runnable but not running (see procs.py)."""
    total = 0
    for task in Path("/proc/self/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(task.read_text().split()[1])
    return total / 1e9


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Recorder:
    """Latencies kept raw (cheap appends) and turned into an HDR histogram at the end."""

    def __init__(self) -> None:
        self.due_us = array("q")  # due time, µs after the run's start
        self.latency_us = array("q")
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.late = 0
        self.dropped = 0
        self.sent = 0
        self.max_send_lag_us = 0
        self.response_bytes = 0

    def histogram(self, from_us: int = 0) -> HdrHistogram:
        hist = new_histogram()
        for due, lat in zip(self.due_us, self.latency_us, strict=True):
            if due >= from_us:
                hist.record_value(min(max(lat, 1), HIST_MAX_US))
        return hist


async def open_loop(
    target: str,
    bodies: list[bytes],
    rate: float,
    duration: float,
    warmup: float,
    *,
    start_at: float | None = None,
    phase: float = 0.0,
    max_inflight: int = 2000,
    timeout: float = 2.0,
    late_s: float = 0.001,
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(CHECK_METHOD)
        await channel.channel_ready()
        await call(bodies[0], timeout=5.0)  # connection and first-call costs out of the way
        rec = Recorder()
        interval = 1.0 / rate
        total = int(rate * (warmup + duration))
        measure_from_us = int(warmup * 1e6)
        start = (start_at if start_at is not None else time.monotonic() + 0.05) + phase
        inflight = 0
        nbodies = len(bodies)
        monotonic = time.monotonic
        idle = asyncio.Event()

        async def one(body: bytes, due: float) -> None:
            nonlocal inflight
            sent = monotonic()
            lag = sent - due
            if lag > late_s:
                rec.late += 1
                lag_us = int(lag * 1e6)
                if lag_us > rec.max_send_lag_us:
                    rec.max_send_lag_us = lag_us
            try:
                resp = await call(body, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                rec.errors[exc.code().name] += 1
            else:
                done = monotonic()
                rec.ok += 1
                rec.response_bytes += len(resp)
                rec.due_us.append(int((due - start) * 1e6))
                rec.latency_us.append(int((done - due) * 1e6))
            finally:
                inflight -= 1
                if inflight == 0:
                    idle.set()

        gc.collect()
        gc.freeze()
        gc.disable()  # the driver allocates little; a collection would show up as lag
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        cpu0 = None
        wait0 = wall0 = 0.0
        while i < total:
            now = monotonic()
            if cpu0 is None and now >= start + warmup:
                cpu0, wait0, wall0 = cpu_seconds(), runqueue_wait_seconds(), now
            while i < total:
                due = start + i * interval
                if due > now:
                    break
                i += 1
                if inflight >= max_inflight:
                    rec.dropped += 1
                    continue
                inflight += 1
                rec.sent += 1
                idle.clear()
                task = asyncio.ensure_future(one(bodies[i % nbodies], due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if i < total:
                await asyncio.sleep(max(0.0, start + i * interval - monotonic()))
        if inflight:
            await idle.wait()
        end = monotonic()
        gc.enable()
        if cpu0 is None:
            cpu0, wait0, wall0 = cpu_seconds(), runqueue_wait_seconds(), start
        cpu = cpu_seconds() - cpu0
        wait = runqueue_wait_seconds() - wait0
        hist = rec.histogram(measure_from_us)
        return {
            "mode": "open",
            "rate": rate,
            "duration_s": duration,
            "warmup_s": warmup,
            "start": start,
            "sent": rec.sent,
            "ok": rec.ok,
            "errors": dict(rec.errors),
            "late": rec.late,
            "dropped": rec.dropped,
            "max_send_lag_us": rec.max_send_lag_us,
            "driver_cpu_frac": cpu / max(1e-9, end - wall0),
            "driver_wait_frac": wait / max(1e-9, end - wall0),
            "mean_response_bytes": rec.response_bytes / max(1, rec.ok),
            "hist": base64.b64encode(hist.encode()).decode(),
            "raw": rec,
        }


async def closed_loop(
    target: str,
    bodies: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    *,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """``concurrency`` callers back to back: the most this driver process can push."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(CHECK_METHOD)
        await channel.channel_ready()
        await call(bodies[0], timeout=5.0)
        monotonic = time.monotonic
        start = monotonic()
        measure_from = start + warmup
        stop_at = measure_from + duration
        hist = new_histogram()
        errors: Counter[str] = Counter()
        counted = 0
        nbodies = len(bodies)

        async def caller(k: int) -> None:
            nonlocal counted
            i = k
            while True:
                t = monotonic()
                if t >= stop_at:
                    return
                try:
                    await call(bodies[i % nbodies], timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    continue
                finally:
                    i += concurrency
                done = monotonic()
                if t >= measure_from and done <= stop_at:
                    counted += 1
                    hist.record_value(max(1, int((done - t) * 1e6)))

        gc.collect()
        gc.freeze()
        cpu0 = cpu_seconds()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        cpu = cpu_seconds() - cpu0
        wall = monotonic() - start
        return {
            "mode": "closed",
            "concurrency": concurrency,
            "duration_s": duration,
            "ok": counted,
            "rps": counted / duration,
            "errors": dict(errors),
            "driver_cpu_frac": cpu / wall,
            "hist": base64.b64encode(hist.encode()).decode(),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--bodies", required=True, help="file written by workload.write_bodies")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--concurrency", type=int, help="closed loop: callers in flight")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--start-at", type=float, default=None, help="time.monotonic() to start")
    p.add_argument("--phase", type=float, default=0.0, help="seconds added to the start")
    p.add_argument("--max-inflight", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--late-ms", type=float, default=1.0)
    p.add_argument("--raw", action="store_true", help="include each call's due time/latency")
    args = p.parse_args(argv)
    bodies = read_bodies(args.bodies)
    if args.rate:
        out = asyncio.run(
            open_loop(
                args.target,
                bodies,
                args.rate,
                args.duration,
                args.warmup,
                start_at=args.start_at,
                phase=args.phase,
                max_inflight=args.max_inflight,
                timeout=args.timeout,
                late_s=args.late_ms / 1000,
            )
        )
        rec: Recorder = out.pop("raw")
        if args.raw:
            out["raw_due_us"] = base64.b64encode(rec.due_us.tobytes()).decode()
            out["raw_latency_us"] = base64.b64encode(rec.latency_us.tobytes()).decode()
    elif args.concurrency:
        out = asyncio.run(
            closed_loop(args.target, bodies, args.concurrency, args.duration, args.warmup)
        )
    else:
        p.error("give --rate (open loop) or --concurrency (closed loop)")
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
