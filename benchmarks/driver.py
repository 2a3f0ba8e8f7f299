"""The Python load driver: open loop on a fixed schedule, or closed loop at a concurrency.

Open loop (after wrk2): request *i* is due at ``start + i / rate``; its latency is
counted from that due time, not from when the driver got round to sending it, so a
stall in the server (or in the driver) shows up in the percentiles instead of silently
lowering the offered rate ("coordinated omission"). A send more than ``--late-ms``
after its due time is counted late; a request due while ``--max-inflight`` calls are
already outstanding is not sent and counted dropped. A dropped request has no latency,
so any drop means the offered rate was not actually offered: read the row as saturated.

Why threads and the sync API's futures rather than grpc.aio: asyncio sleeps with
epoll's millisecond granularity, so an aio sender wakes up to 1 ms late and a
schedule-based latency carries that lag (measured here: p50 1.3 ms against the empty
server at 300/s, versus 0.65 ms with this design). A sender thread sleeps with
``time.sleep`` (nanosleep, timer slack cut to 1 µs) and hands each call to gRPC's C
core with ``future()``; completions run in gRPC's own thread. Requests are
pre-serialized bytes and responses stay bytes (no (de)serializers).

Run as a subprocess (so it can be pinned to its own core):
``python -m benchmarks.driver --target H:P --bodies FILE --rate R --duration S``; it
prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import gc
import json
import resource
import sys
import threading
import time
from array import array
from collections import Counter
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram

from benchmarks.bodies import read_bodies

CHECK_METHOD = "/cds.v1.OrderCheckService/Check"
HIST_MAX_US = 60_000_000
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
PR_SET_TIMERSLACK = 29


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def precise_sleep() -> None:
    """Ask the kernel for 1 µs timer slack (default 50 µs) so sleeps end on time."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


class Recorder:
    """What the completion callbacks record; raw arrays are cheap appends under the GIL."""

    def __init__(self) -> None:
        self.due_us = array("q")  # due time, µs after the run's start
        self.latency_us = array("q")  # completion - due
        self.service_us = array("q")  # completion - actual send
        self.errors: Counter[str] = Counter()
        self.error_due_us = array("q")  # due time of each failed call (faults.py splits by phase)
        self.error_codes: list[str] = []
        self.marked = array("b")  # per answer (as due_us): 1 if it contained ``mark``
        self.completed = 0
        self.response_bytes = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.expect = -1

    def histogram(self, values: array, from_us: int = 0) -> HdrHistogram:
        hist = new_histogram()
        for due, v in zip(self.due_us, values, strict=True):
            if due >= from_us:
                hist.record_value(min(max(v, 1), HIST_MAX_US))
        return hist


def _connect(target: str, body: bytes, patience_s: float = 60.0) -> tuple[grpc.Channel, Any]:
    """A channel whose connection set-up and first calls are out of the way.

    A call that times out here is retried until ``patience_s``: on a shared machine a
    neighbour can starve the server for seconds, which is a result for the point to
    show (in its percentiles), not a reason for the whole run to fail."""
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    call = channel.unary_unary(CHECK_METHOD)  # no serializers: bytes in, bytes out
    deadline = time.monotonic() + patience_s
    done = 0
    while done < 20:
        try:
            call(body, timeout=5.0)
            done += 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() > deadline:
                raise
    return channel, call


def open_loop(
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
    mark: bytes = b"",
) -> tuple[dict[str, Any], Recorder]:
    precise_sleep()
    channel, call = _connect(target, bodies[0])
    rec = Recorder()
    monotonic = time.monotonic
    interval = 1.0 / rate
    total = int(rate * (warmup + duration))
    start = (start_at if start_at is not None else monotonic() + 0.05) + phase
    nbodies = len(bodies)

    def done(fut: grpc.Future, due: float, sent: float) -> None:
        t = monotonic()
        try:
            resp = fut.result()
        except grpc.RpcError as exc:
            code = exc.code().name
            rec.errors[code] += 1
            rec.error_due_us.append(int((due - start) * 1e6))
            rec.error_codes.append(code)
        else:
            rec.response_bytes += len(resp)
            rec.marked.append(1 if mark and mark in resp else 0)
            rec.due_us.append(int((due - start) * 1e6))
            rec.latency_us.append(int((t - due) * 1e6))
            rec.service_us.append(int((t - sent) * 1e6))
        with rec.lock:
            rec.completed += 1
            if rec.completed == rec.expect:
                rec.all_done.set()

    gc.collect()
    gc.freeze()
    gc.disable()  # a collection in the driver would show up as send lag
    sent_n = late = dropped = max_lag_us = 0
    cpu0 = wall0 = None
    measure_at = start + warmup
    for i in range(total):
        due = start + i * interval
        now = monotonic()
        if due > now:
            time.sleep(due - now)
            now = monotonic()
        if cpu0 is None and now >= measure_at:
            cpu0, wall0 = cpu_seconds(), now
        lag = now - due
        if lag > late_s:
            late += 1
            max_lag_us = max(max_lag_us, int(lag * 1e6))
        if sent_n - rec.completed >= max_inflight:
            dropped += 1
            continue
        sent_n += 1
        fut = call.future(bodies[i % nbodies], timeout=timeout)
        fut.add_done_callback(lambda f, due=due, sent=now: done(f, due, sent))
    with rec.lock:
        rec.expect = sent_n
        if rec.completed == sent_n:
            rec.all_done.set()
    rec.all_done.wait(timeout + 10)
    end = monotonic()
    gc.enable()
    if cpu0 is None or wall0 is None:
        cpu0, wall0 = cpu_seconds(), start
    cpu = cpu_seconds() - cpu0
    channel.close()
    from_us = int(warmup * 1e6)
    out = {
        "mode": "open",
        "rate": rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "start": start,
        "sent": sent_n,
        "ok": len(rec.latency_us),
        "errors": dict(rec.errors),
        "marked": sum(rec.marked),
        "late": late,
        "dropped": dropped,
        "max_send_lag_us": max_lag_us,
        "driver_cpu_frac": cpu / max(1e-9, end - wall0),
        "mean_response_bytes": rec.response_bytes / max(1, len(rec.latency_us)),
        "hist": base64.b64encode(rec.histogram(rec.latency_us, from_us).encode()).decode(),
        "hist_from_send": base64.b64encode(
            rec.histogram(rec.service_us, from_us).encode()
        ).decode(),
    }
    return out, rec


def closed_loop(
    target: str,
    bodies: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    *,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """``concurrency`` calls always outstanding: the most this driver process can push.

    Each completion (in gRPC's thread) records and issues the next call at once."""
    channel, call = _connect(target, bodies[0])
    monotonic = time.monotonic
    hist = new_histogram()
    errors: Counter[str] = Counter()
    counted = [0]
    lock = threading.Lock()
    finished = threading.Event()
    live = [concurrency]
    nbodies = len(bodies)
    start = monotonic()
    measure_from = start + warmup
    stop_at = measure_from + duration

    def issue(i: int) -> None:
        sent = monotonic()
        fut = call.future(bodies[i % nbodies], timeout=timeout)
        fut.add_done_callback(lambda f: done(f, i, sent))

    def done(fut: grpc.Future, i: int, sent: float) -> None:
        t = monotonic()
        try:
            fut.result()
        except grpc.RpcError as exc:
            errors[exc.code().name] += 1
        else:
            if sent >= measure_from and t <= stop_at:
                counted[0] += 1
                hist.record_value(max(1, int((t - sent) * 1e6)))
        if t < stop_at:
            issue(i + concurrency)
            return
        with lock:
            live[0] -= 1
            if live[0] == 0:
                finished.set()

    gc.collect()
    gc.freeze()
    cpu0 = cpu_seconds()
    for k in range(concurrency):
        issue(k)
    finished.wait(warmup + duration + timeout + 10)
    wall = monotonic() - start
    cpu = cpu_seconds() - cpu0
    channel.close()
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "duration_s": duration,
        "ok": counted[0],
        "rps": counted[0] / duration,
        "errors": dict(errors),
        "driver_cpu_frac": cpu / wall,
        "hist": base64.b64encode(hist.encode()).decode(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--bodies", required=True, help="file written by bodies.write_bodies")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--concurrency", type=int, help="closed loop: calls in flight")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--start-at", type=float, default=None, help="time.monotonic() to start")
    p.add_argument("--phase", type=float, default=0.0, help="seconds added to the start")
    p.add_argument("--max-inflight", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--late-ms", type=float, default=1.0)
    p.add_argument("--raw", action="store_true", help="include each call's due time/latency")
    p.add_argument(
        "--mark",
        default="",
        help="count answers whose bytes contain this text (e.g. RESULTS_UNAVAILABLE, a "
        "degraded answer); with --raw, a flag per answer too",
    )
    args = p.parse_args(argv)
    bodies = read_bodies(args.bodies)
    if args.rate:
        out, rec = open_loop(
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
            mark=args.mark.encode(),
        )
        if args.raw:
            out["raw_due_us"] = base64.b64encode(rec.due_us.tobytes()).decode()
            out["raw_latency_us"] = base64.b64encode(rec.latency_us.tobytes()).decode()
            out["raw_error_due_us"] = base64.b64encode(rec.error_due_us.tobytes()).decode()
            out["raw_error_codes"] = rec.error_codes
            out["raw_marked"] = base64.b64encode(rec.marked.tobytes()).decode()
    elif args.concurrency:
        out = closed_loop(args.target, bodies, args.concurrency, args.duration, args.warmup)
    else:
        p.error("give --rate (open loop) or --concurrency (closed loop)")
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
