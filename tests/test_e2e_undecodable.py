"""A body that is not the message it claims to be: a client fault, answered and counted.

Anyone who can reach the port can send one, so it must cost the server no more than
a good call: no ERROR traceback per call (they once filled 291 MB of log in 400k
calls), one WARNING per interval with the count, and the call in the RPC metrics.
"""

from __future__ import annotations

import re

import grpc
import pytest

from cds.service.rpcs import RPCS
from cds.v1 import types_pb2
from tests.support.protos import check_request
from tests.support.server import running_server

pytestmark = pytest.mark.e2e

# Field 31, wire type 7: no such wire type, so no message of any schema parses it.
GARBAGE = b"\xff\xff\xff\xff"
CALLS_PER_RPC = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("undecodable")) as s:
        yield s


def _raw(server, path: str):
    return server.channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def _handled(metrics: str, method: str, code: str) -> float:
    pattern = (
        rf'^grpc_server_handled_total\{{[^}}]*grpc_code="{code}"[^}}]*'
        rf'grpc_method="{method}"[^}}]*\}} (\S+)$'
    )
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.method)
def test_an_undecodable_body_is_invalid_argument_naming_the_message(server, rpc):
    with pytest.raises(grpc.RpcError) as info:
        _raw(server, rpc.path)(GARBAGE, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"cannot decode {rpc.request.DESCRIPTOR.full_name}"


def test_undecodable_bodies_are_counted_logged_once_per_interval_and_serving_goes_on(server):
    before = server.metrics_text()
    for rpc in RPCS:
        call = _raw(server, rpc.path)
        for _ in range(CALLS_PER_RPC):
            with pytest.raises(grpc.RpcError):
                call(GARBAGE, timeout=5)
    after = server.metrics_text()
    for rpc in RPCS:
        counted = _handled(after, rpc.method, "INVALID_ARGUMENT") - _handled(
            before, rpc.method, "INVALID_ARGUMENT"
        )
        assert counted == CALLS_PER_RPC, rpc.method
    # A truncated real request is refused the same way, and a whole one still answers.
    whole = check_request().SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        _raw(server, RPCS[0].path)(whole[: len(whole) // 2], timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.check.Check(check_request(), timeout=5).decision == types_pb2.DECISION_ALLOW
    log = server.log_text()
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "cannot decode" in line]
    # The first fault is logged at once; the rest of this burst waits for the interval.
    assert 1 <= len(warnings) <= 2, warnings
    assert all("WARNING" in line for line in warnings)
