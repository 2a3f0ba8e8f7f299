"""The security flags are wired into `cds serve`: protected mode and roles by token."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cds.security.auth import new_token, token_entry
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


def serve_briefly(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cds_command(
            "serve",
            "--catalog",
            str(TEST_CATALOG),
            "--metrics-listen",
            "127.0.0.1:0",
            "--no-decision-log",
            *args,
        ),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )


def test_a_non_loopback_listen_without_tls_and_tokens_is_refused_at_start():
    done = serve_briefly("--listen", "0.0.0.0:0")
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 without TLS" in done.stderr
    assert "and authentication (--auth-tokens)" in done.stderr
    assert "--insecure" in done.stderr  # the way out is named, as is the risk


def test_tokens_without_tls_are_still_refused_off_loopback(tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [token_entry("emr-1", "emr", EMR_TOKEN)]}))
    done = serve_briefly("--listen", "[::]:0", "--auth-tokens", str(tokens))
    assert done.returncode == 1
    assert "without TLS (--tls-cert/--tls-key):" in done.stderr


def _a_name_for_loopback_only() -> str:
    """A host name (not "localhost") that resolves to loopback addresses only: protected
    mode treats any name as reachable, while the test still binds nothing outside."""
    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        try:
            infos = socket.getaddrinfo(name, 0, proto=socket.IPPROTO_TCP)
        except OSError:
            continue
        if infos and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
            return name
    pytest.skip("no host name here resolves to loopback only")


def test_insecure_lets_a_non_loopback_listen_start_with_a_warning(tmp_path):
    name = _a_name_for_loopback_only()
    with running_server(tmp_path, extra_args=["--listen", f"{name}:0", "--insecure"]) as s:
        assert s.health_status() == health_pb2.HealthCheckResponse.SERVING
        assert _check(s).decision == types_pb2.DECISION_ALLOW
    log = s.log_text()
    assert re.search(rf"WARNING cds\.[a-z.]+: --insecure: listening on {name}:0 without TLS", log)


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
