"""An empty gRPC server: the limit of the stack, which the service is measured against.

It registers ``cds.v1.OrderCheckService/Check`` as a raw-bytes generic handler (no request
parsing, no response building) returning one pre-serialized ``CheckResponse`` of the
size the service answers with. Whatever this server cannot exceed, the service cannot
either: the ratio service/empty isolates what cds itself costs per call.

Two stacks (``--stack``). ``bare`` (the default, and the baseline of every ratio) is
``grpc.aio.server()`` with no arguments at all, as the smallest server a user could
write: the stack's own limit. ``matched`` passes cds's channel options and its
``maximum_concurrent_rpcs`` cap, so the cost of those settings shows as a row of its own
instead of hiding inside the baseline (issue 12).

Run: ``python -m benchmarks.empty_server --listen 127.0.0.1:0 --response-bytes 420``;
it prints ``PORT <n>`` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from cds.v1 import order_check_pb2, types_pb2

CHECK_METHOD = "/cds.v1.OrderCheckService/Check"
ROOT = Path(__file__).resolve().parent.parent

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
    """The channel options cds's own server passes to ``grpc.aio.server``, for the
    options-matched server (the second row; the baseline is the bare server)."""
    from cds.security.transport import server_options as cds_server_options

    return list(cds_server_options()), "cds.security.transport.server_options()"


def max_concurrent_rpcs() -> int:
    """cds's default cap on concurrent calls, so overload behaves alike."""
    from cds.config import DEFAULT_MAX_CONCURRENT_RPCS

    return DEFAULT_MAX_CONCURRENT_RPCS


def stack_settings(stack: str) -> dict[str, Any]:
    """What ``grpc.aio.server`` is given for a stack, for the server and the results file.

    ``bare``: nothing at all, grpc's defaults, as the smallest grpc.aio server is built;
    it is the baseline every ratio is computed against. ``matched``: cds's own channel
    options and concurrency cap, to show what those settings cost by themselves."""
    if stack == "bare":
        return {"stack": "bare", "options": [], "from": "grpc defaults", "cap": None}
    opts, where = server_options()
    return {"stack": "matched", "options": opts, "from": where, "cap": max_concurrent_rpcs()}


def load_class_responses(path: str | None) -> dict[bytes, bytes]:
    """``--class-responses FILE``: a JSON list of ``{"request_b64", "response_bytes"}``,
    each order class's representative request and the size of the service's answer to
    it. The empty server answers that exact request with a canned response of that size,
    so a class's row (the all-WARN class answers far more bytes than the mix's mean)
    compares replies of the same size; any other request gets the default response."""
    if not path:
        return {}
    entries = json.loads(Path(path).read_text())
    return {
        base64.b64decode(e["request_b64"]): canned_response(int(e["response_bytes"]))
        for e in entries
    }


async def serve(
    listen: str, payload: bytes, stack: str = "bare", by_request: dict[bytes, bytes] | None = None
) -> None:
    if by_request:
        # One dict lookup on the request's bytes (a hash of ~200 bytes, ~0.1 µs against a
        # call's ~150 µs): the reply is as large as the service's for that class.
        get = by_request.get

        async def check(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
            return get(request, payload)

    else:

        async def check(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
            return payload

    # No (de)serializers: the request stays bytes, the response is the canned bytes.
    handler = grpc.method_handlers_generic_handler(
        "cds.v1.OrderCheckService",
        {"Check": grpc.unary_unary_rpc_method_handler(check)},
    )
    settings = stack_settings(stack)
    if stack == "bare":
        server = grpc.aio.server()
    else:
        server = grpc.aio.server(
            options=settings["options"], maximum_concurrent_rpcs=settings["cap"]
        )
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
    parser.add_argument(
        "--stack",
        choices=("bare", "matched"),
        default="bare",
        help="bare: grpc.aio.server() with grpc's defaults; matched: cds's options and cap",
    )
    parser.add_argument(
        "--class-responses",
        default=None,
        help="JSON file: per class request, the response size to answer it with",
    )
    args = parser.parse_args(argv)
    by_request = load_class_responses(args.class_responses)
    asyncio.run(
        serve(args.listen, canned_response(args.response_bytes), args.stack, by_request or None)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
