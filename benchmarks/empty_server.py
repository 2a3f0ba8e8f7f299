"""An empty gRPC server on the same stack as cds: the limit the service is measured against.

It registers ``cds.v1.OrderCheckService/Check`` as a raw-bytes generic handler (no request
parsing, no response building) returning one pre-serialized ``CheckResponse`` of the
size the service typically answers with. Whatever this server cannot exceed, the service
cannot either: the ratio service/empty isolates what cds itself costs per call.

Run: ``python -m benchmarks.empty_server --listen 127.0.0.1:0 --response-bytes 420``;
it prints ``PORT <n>`` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from typing import Any

import grpc

from cds.v1 import order_check_pb2, types_pb2

CHECK_METHOD = "/cds.v1.OrderCheckService/Check"

# The national override reasons (国卫医发〔2022〕6号), as the catalogue offers them on a
# warning: they make up much of a real warning response's bytes.
_OVERRIDES = (
    ("CONDITION_CHANGED", "病情变化", False),
    ("RAPID_CHANGE", "检验结果随疾病进展变化快", False),
    ("MAJOR_PROCEDURE", "手术、输血等重大医疗措施前", False),
    ("EMERGENCY", "急诊、急救等紧急情况", False),
    ("FORENSIC", "司法鉴定、伤残鉴定等", False),
    ("OTHER", "其他原因", True),
)


def typical_response() -> order_check_pb2.CheckResponse:
    """A 3-item lab order where one item has a recognisable prior result (the mix's middle)."""
    resp = order_check_pb2.CheckResponse(
        decision_id="0f6b1c9e8a7d4e2b9c3a5d7f1e2b4c6d",
        decision=types_pb2.DECISION_WARN,
        catalog_version="fj-2025.1",
    )
    for n, code in enumerate(("LAB-GLU", "LAB-ALT", "LAB-CBC"), start=1):
        item = resp.items.add(line_id=str(n), item_code=code, decision=types_pb2.DECISION_ALLOW)
        if n == 3:
            item.decision = types_pb2.DECISION_WARN
            reason = item.reasons.add(
                code="RECOGNIZABLE_RESULT_EXISTS",
                decision=types_pb2.DECISION_WARN,
                message="该患者已有可互认的检验结果，请查看后决定是否重复检查",
                source="国卫医发〔2022〕6号",
            )
            prior = reason.prior_results.add(
                result_id="R000123456", institution_id="FJ-350100-001", item_code=code
            )
            prior.reported_at.FromMicroseconds(1_760_000_000_000_000)
            prior.valid_until.FromMicroseconds(1_760_604_800_000_000)
            for ocode, display, needs_comment in _OVERRIDES:
                reason.override_options.add(
                    code=ocode, display=display, requires_comment=needs_comment
                )
    return resp


def canned_response(size: int | None = None) -> bytes:
    """The typical response, its ``decision_id`` padded or cut so it serializes to ``size``."""
    resp = typical_response()
    if size is None:
        return resp.SerializeToString()
    # Too big: shed the warning's parts, then whole items, until it fits; then pad.
    warned = resp.items[-1]
    while resp.ByteSize() > size and warned.reasons and warned.reasons[0].override_options:
        del warned.reasons[0].override_options[-1]
    while resp.ByteSize() > size and len(resp.items) > 1:
        del resp.items[-1]
    base = resp.decision_id
    for _ in range(8):
        delta = size - resp.ByteSize()
        if delta == 0:
            break
        target = max(0, len(resp.decision_id) + delta)
        resp.decision_id = (base * (target // max(1, len(base)) + 1))[:target]
    return resp.SerializeToString()


def server_options() -> tuple[list[tuple[str, Any]], str]:
    """The channel options cds's own server uses, so both servers run the same stack.

    Taken from ``cds.security.transport.server_options()``; otherwise grpc's defaults,
    which is what a server without options runs. The second value says which, for the
    results file.
    """
    try:
        from cds.security.transport import server_options as cds_server_options
    except ImportError:
        return [], "grpc defaults (cds.security.transport not importable)"
    return list(cds_server_options()), "cds server options"


def max_concurrent_rpcs() -> int | None:
    """cds's default cap on concurrent calls, if it has one, so overload behaves alike."""
    for module in ("cds.config",):
        try:
            mod = __import__(module, fromlist=["_"])
        except ImportError:
            continue
        cap = getattr(mod, "DEFAULT_MAX_CONCURRENT_RPCS", None)
        if isinstance(cap, int):
            return cap
    return None


async def serve(listen: str, payload: bytes) -> None:
    async def check(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return payload

    # No (de)serializers: the request stays bytes, the response is the canned bytes.
    handler = grpc.method_handlers_generic_handler(
        "cds.v1.OrderCheckService",
        {"Check": grpc.unary_unary_rpc_method_handler(check)},
    )
    options, _ = server_options()
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    await server.start()
    gc.freeze()
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--response-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, canned_response(args.response_bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
