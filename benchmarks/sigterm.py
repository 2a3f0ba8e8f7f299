"""SIGTERM under steady load: how many calls end CANCELLED, the service against the bare stack.

A ``CANCELLED`` call is the one a standard gRPC retry policy will not retry (it retries
``UNAVAILABLE``): an order screen that gets it shows an error. So a shutdown should end
every call either answered or refused ``UNAVAILABLE``. Whatever the bare grpc.aio stack
(``benchmarks/empty_server.py --stack bare``, ``server.stop(grace)`` on SIGTERM) cannot
avoid, the service cannot either; the service should not add to it.

Each run: the server starts, ``--callers`` threads (each its own channel, as that many
EMR connections) call ``Check`` back to back, each call with a deadline; after
``--load-s`` seconds of load the server gets SIGTERM; the callers go on until the process
has exited (and ``--after-s`` more), a failed call followed by a 10 ms pause so a refused
caller does not spin. Every call's status is counted, split into before the SIGTERM and
after it; for the service also how long after the SIGTERM calls were still answered OK
(the drain window: health NOT_SERVING while calls are served) and when the first
UNAVAILABLE came.

``python -m benchmarks.sigterm [--runs 3] [--drain-seconds 1] [--grace 10]``; prints a
table, and the JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.procs import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog" / "catalog.json"
CHECK = "/cds.v1.OrderCheckService/Check"


def request_body() -> bytes:
    """A 3-line lab order from the shipped catalogue, for a patient without results: the
    service's allow path, as most calls are."""
    from cds.v1 import order_check_pb2, types_pb2

    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    codes = [i["code"] for i in catalog["recognition_items"][:3]]
    request = order_check_pb2.CheckRequest(
        request_id="sigterm-bench",
        institution_id=catalog["institutions"][0]["id"],
        department_id="D1",
        clinician_id="C1",
        encounter_type=types_pb2.ENCOUNTER_TYPE_OUTPATIENT,
        patient=types_pb2.Patient(patient_id="P-SIGTERM"),
    )
    for n, code in enumerate(codes, start=1):
        request.items.add(line_id=str(n), item_code=code, category=types_pb2.ITEM_CATEGORY_LAB)
    return request.SerializeToString()


class Caller(threading.Thread):
    """One EMR connection calling Check back to back; records (time, status code)."""

    def __init__(self, address: str, body: bytes, stop: threading.Event, timeout: float):
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address)
        self.call = self.channel.unary_unary(CHECK)  # raw bytes both ways
        self.body = body
        self.stop_event = stop
        self.timeout = timeout
        self.outcomes: list[tuple[float, str]] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.call(self.body, timeout=self.timeout)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            self.outcomes.append((time.monotonic(), code))
            if code != "OK":
                time.sleep(0.01)
        self.channel.close()


def one_run(
    command: list[str], *, kind: str, args: argparse.Namespace, body: bytes, tmp: Path, n: int
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp / f"{kind}-{n}.log"
    with ServerProcess(command, cpus=None, log=log, env=env) as server:
        if kind == "bare":
            port = server.wait_port_line()
        else:
            port = int(command[command.index("--listen") + 1].rpartition(":")[2])
            server.wait_serving(f"127.0.0.1:{port}")
        stop = threading.Event()
        callers = [
            Caller(f"127.0.0.1:{port}", body, stop, args.call_timeout) for _ in range(args.callers)
        ]
        for c in callers:
            c.start()
        time.sleep(args.load_s)
        sent_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=args.grace + args.drain_seconds + 30)
        exited_at = time.monotonic()
        time.sleep(args.after_s)
        stop.set()
        for c in callers:
            c.join()
    before: collections.Counter[str] = collections.Counter()
    after: collections.Counter[str] = collections.Counter()
    last_ok = first_unavailable = None
    for c in callers:
        for at, status in c.outcomes:
            if at < sent_at:
                before[status] += 1
                continue
            after[status] += 1
            if status == "OK":
                last_ok = max(last_ok or at, at)
            elif status == "UNAVAILABLE":
                first_unavailable = min(first_unavailable or at, at)
    return {
        "exit_code": code,
        "before_sigterm": dict(before),
        "after_sigterm": dict(after),
        "cancelled": after["CANCELLED"] + before["CANCELLED"],
        "ok_until_s": None if last_ok is None else round(last_ok - sent_at, 3),
        "first_unavailable_s": (
            None if first_unavailable is None else round(first_unavailable - sent_at, 3)
        ),
        "exit_after_s": round(exited_at - sent_at, 3),
    }


def commands(kind: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    """``bare``: the empty server; ``service``: cds serve with ``--drain-seconds``;
    ``service0``: cds serve with no drain window, refusing at once (what the bare stack
    does, less the CANCELLED)."""
    if kind == "bare":
        return [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
    drain = args.drain_seconds if kind == "service" else 0.0
    return [
        sys.executable, "-m", "cds", "serve", "--catalog", str(CATALOG),
        "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "127.0.0.1:0",
        "--decision-log", str(tmp / "decisions.jsonl"),
        "--grace", str(args.grace), "--drain-seconds", str(drain),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--callers", type=int, default=6)
    p.add_argument("--load-s", type=float, default=2.0, help="load before the SIGTERM")
    p.add_argument("--after-s", type=float, default=0.5, help="load after the exit")
    p.add_argument("--call-timeout", type=float, default=2.0)
    p.add_argument("--drain-seconds", type=float, default=1.0, help="the service's")
    p.add_argument("--grace", type=float, default=10.0, help="the service's")
    p.add_argument("--servers", default="bare,service,service0")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    body = request_body()
    out: dict[str, Any] = {
        "callers": args.callers,
        "load_s": args.load_s,
        "service_flags": {"drain_seconds": args.drain_seconds, "grace": args.grace},
        "runs": {},
    }
    kinds = args.servers.split(",")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cds-sigterm-") as name:
        tmp = Path(name)
        for n in range(args.runs):  # alternating, so drift hits both alike
            for kind in kinds:
                run = one_run(
                    commands(kind, args, tmp), kind=kind, args=args, body=body, tmp=tmp, n=n
                )
                out["runs"].setdefault(kind, []).append(run)
                print(f"run {n + 1} {kind:8s} {json.dumps(run)}", file=sys.stderr, flush=True)
    rows = {
        "bare": "bare grpc.aio (empty_server.py, stop(grace))",
        "service": f"cds serve --drain-seconds {args.drain_seconds:g}",
        "service0": "cds serve --drain-seconds 0",
    }
    print(f"SIGTERM under steady load from {args.callers} callers, {args.runs} runs each, "
          f"alternating; service --grace {args.grace:g}")  # fmt: skip
    out["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    print(
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{out['loadavg']['after'][0]:.2f} after (shared machine)"
    )
    print(
        "per run: calls CANCELLED | refused UNAVAILABLE after the SIGTERM (a refused caller "
        "pauses 10 ms) | answered OK after it | last OK, exit (s after SIGTERM)"
    )
    for kind in kinds:
        runs = out["runs"][kind]

        def col(key: str, runs: list[dict[str, Any]] = runs) -> str:
            return ", ".join(str(r[key]) for r in runs)

        def after(code: str, runs: list[dict[str, Any]] = runs) -> str:
            return ", ".join(str(r["after_sigterm"].get(code, 0)) for r in runs)

        print(f"  {rows.get(kind, kind)}")
        print(f"    CANCELLED {col('cancelled')} (total {sum(r['cancelled'] for r in runs)}) | "
              f"UNAVAILABLE {after('UNAVAILABLE')} | OK {after('OK')} | "
              f"last OK {col('ok_until_s')} | exit {col('exit_after_s')} "
              f"code {col('exit_code')}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
