"""Closed-loop throughput from C: h2load (Debian ``nghttp2-client``) speaking gRPC over h2c.

h2load knows nothing of gRPC, so each run POSTs one length-prefixed protobuf body with
``content-type: application/grpc`` and ``te: trailers``; it counts HTTP/2 streams, and a
gRPC error still answers HTTP 200. So its "succeeded" is not proof: the caller checks
``grpc-status`` through the server's own ``grpc_server_handled_total`` (see run.py),
and the bodies are sent once through a real client first.

h2load sends the same body on every stream, so the order mix is run one family at a
time and combined as a weighted harmonic mean (time per request adds up).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.procs import pinned

CHECK_PATH = "/cds.v1.OrderCheckService/Check"


def available() -> bool:
    return shutil.which("h2load") is not None


def run(
    target: str,
    frame_file: Path,
    *,
    duration: float,
    warmup: float,
    clients: int = 4,
    streams: int = 16,
    cpus: str | None = None,
) -> dict[str, Any]:
    cmd = pinned(
        [
            "h2load",
            "-D",
            str(max(1, round(duration))),
            "--warm-up-time",
            str(max(0, round(warmup))),
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-t",
            "1",
            "-d",
            str(frame_file),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://{target}{CHECK_PATH}",
        ],
        cpus,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
    out = proc.stdout
    result = parse(out)
    result["command"] = " ".join(cmd)
    if proc.returncode != 0 or "rps" not in result:
        result["error"] = (proc.stderr or out)[-1000:]
    return result


def parse(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    if m:
        res["rps"] = float(m.group(2))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    if m:
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        res.update({k: int(v) for k, v in zip(keys, m.groups(), strict=True)})
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["request_time_min"], res["request_time_max"], res["request_time_mean"] = m.groups()
    return res


def mix_rps(per_family: list[tuple[str, float, float]]) -> float:
    """Throughput of the mix from each family's (name, share, rps): 1 / Σ share/rps."""
    total_share = sum(share for _, share, _ in per_family)
    cost = sum(share / rps for _, share, rps in per_family if rps > 0)
    return total_share / cost if cost else 0.0
