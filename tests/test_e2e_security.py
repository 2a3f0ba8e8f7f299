"""The security flags are wired into `cds serve`: protected mode and roles by token."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cds.auth import new_token, token_entry
from cds.v1 import order_check_pb2_grpc, types_pb2
from tests.support.protos import check_request
from tests.support.server import TEST_CATALOG, cds_command, running_server, server_env

pytestmark = pytest.mark.e2e

EMR_TOKEN = new_token()
FEED_TOKEN = new_token()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("security")
    tokens = workdir / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    token_entry("emr-1", "emr", EMR_TOKEN),
                    token_entry("feed-1", "feed", FEED_TOKEN),
                ]
            }
        )
    )
    with running_server(workdir, extra_args=["--auth-tokens", str(tokens)]) as s:
        yield s


def _check(server, token=None):
    stub = order_check_pb2_grpc.OrderCheckServiceStub(server.channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return stub.Check(check_request(), timeout=5, metadata=metadata)


def test_a_non_loopback_listen_without_tls_and_tokens_is_refused_at_start():
    done = subprocess.run(
        cds_command(
            "serve",
            "--catalog",
            str(TEST_CATALOG),
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--no-decision-log",
        ),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0:0" in done.stderr


def test_check_needs_a_token(server):
    with pytest.raises(grpc.RpcError) as info:
        _check(server)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_emr_token_may_check(server):
    assert _check(server, EMR_TOKEN).decision == types_pb2.DECISION_ALLOW


def test_the_feed_token_may_not_check(server):
    with pytest.raises(grpc.RpcError) as info:
        _check(server, FEED_TOKEN)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_stays_open(server):
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING


def test_cds_check_sends_the_token(server):
    request = {
        "institution_id": "H1",
        "patient": {"patient_id": "P"},
        "items": [{"line_id": "1", "item_code": "K"}],
    }
    env = server_env()
    env["CDS_TOKEN"] = EMR_TOKEN
    done = subprocess.run(
        cds_command("check", "--server", server.address, "-"),
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] == "DECISION_ALLOW"
