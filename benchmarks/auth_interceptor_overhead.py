"""Per-call cost of the auth interceptor on real grpc.aio servers, with and without it.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/auth_interceptor_overhead.py [calls]``

Each variant is a real server in its own process; one client drives them in turn with
sequential unary Check calls. Wall-clock latency on a small shared machine varies by
more than the effect, so the figure reported is the **server process's CPU time per
call** (user+system of all its threads, from /proc), which is what an interceptor adds
and what bounds throughput. Variants are interleaved round by round; medians reported.
A last figure times ``intercept_service`` alone, without gRPC.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import orjson

from cds.security.auth import Authenticator, AuthInterceptor, Role, new_token, token_entry
from cds.service.rpcs import METHOD_ROLES
from cds.v1 import order_check_pb2, order_check_pb2_grpc

CHECK = "/cds.v1.OrderCheckService/Check"
VARIANTS = ("none", "pass-through", "auth")
TICK = os.sysconf("SC_CLK_TCK")


class Trivial(order_check_pb2_grpc.OrderCheckServiceServicer):
    async def Check(self, request: Any, context: Any) -> Any:
        return order_check_pb2.CheckResponse()


class PassThrough(grpc.aio.ServerInterceptor):
    """Separates grpc.aio's cost of having any interceptor from our checks."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


async def serve(variant: str, auth_path: str) -> None:
    interceptors: list[Any] = {
        "none": [],
        "pass-through": [PassThrough()],
        "auth": [AuthInterceptor(Authenticator(auth_path), METHOD_ROLES)],
    }[variant]
    server = grpc.aio.server(interceptors=interceptors)
    order_check_pb2_grpc.add_OrderCheckServiceServicer_to_server(Trivial(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await server.stop(None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


async def drive(channel: grpc.aio.Channel, calls: int, metadata: Any) -> float:
    stub = order_check_pb2_grpc.OrderCheckServiceStub(channel)
    request = order_check_pb2.CheckRequest(request_id="r")
    t0 = time.perf_counter()
    for _ in range(calls):
        await stub.Check(request, metadata=metadata)
    return (time.perf_counter() - t0) / calls * 1e6


async def main(calls: int) -> None:
    token = new_token()
    # Twenty tokens, as a hospital with several EMR instances and feeds might have.
    entries = [token_entry(f"c{i}", Role.EMR, new_token()) for i in range(19)]
    entries.append(token_entry("emr", Role.EMR, token))
    metadata = (("authorization", f"Bearer {token}"),)
    with tempfile.TemporaryDirectory() as tmp:
        auth_path = str(Path(tmp, "auth.json"))
        Path(auth_path).write_bytes(orjson.dumps({"tokens": entries}))
        procs = {
            v: subprocess.Popen(
                [sys.executable, __file__, "--serve", v, auth_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=os.environ,
            )
            for v in VARIANTS
        }
        channels = {}
        try:
            for v, p in procs.items():
                assert p.stdout is not None
                port = int(p.stdout.readline())
                channels[v] = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                await drive(channels[v], 300, metadata)  # warm up
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(5):
                for v in VARIANTS:
                    before = cpu_seconds(procs[v].pid)
                    wall[v].append(await drive(channels[v], calls, metadata))
                    cpu[v].append((cpu_seconds(procs[v].pid) - before) / calls * 1e6)
        finally:
            for ch in channels.values():
                await ch.close()
            for p in procs.values():
                p.communicate(timeout=30)

    base = statistics.median(cpu["none"])
    low = min(cpu["none"])
    print(f"{calls} sequential unary Check calls per round, 5 rounds")
    print("  variant       server CPU/call: median (vs none)  min (vs none)  | latency | rounds")
    for v in VARIANTS:
        med, mn = statistics.median(cpu[v]), min(cpu[v])
        print(
            f"  {v:13s} {med:7.1f} ({med - base:+6.1f})  {mn:7.1f} ({mn - low:+6.1f}) us"
            f"  | {statistics.median(wall[v]):6.1f} us | " + " ".join(f"{x:.0f}" for x in cpu[v])
        )

    interceptor = AuthInterceptor(Authenticator(_write_tmp(entries)), METHOD_ROLES)
    handler = object()

    async def continuation(_: Any) -> Any:
        return handler

    class Details:
        method = CHECK
        invocation_metadata = metadata

    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        await interceptor.intercept_service(continuation, Details)
    alone = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        await continuation(Details)
    print(f"intercept_service alone: {alone - (time.perf_counter() - t0) / n * 1e6:.2f} us/call")


def _write_tmp(entries: list[dict[str, str]]) -> str:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.write(fd, orjson.dumps({"tokens": entries}))
    os.close(fd)
    return path


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
