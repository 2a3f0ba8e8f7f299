"""Roles end to end: every RPC x every caller against a real `cds serve`, by token and by
client certificate, with certificates generated here; tokens reloaded on SIGHUP.

Token mode runs over server-only TLS (how an integrator deploys tokens); certificate
mode over mutual TLS. One server per mode serves the whole matrix.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cds.security.auth import (
    PERMISSION_DENIED_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    new_token,
    token_entry,
)
from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2
from tests.support.protos import check_request
from tests.support.server import cds_command, running_server, server_env
from tests.support.tls_certs import Authority, Pem

pytestmark = pytest.mark.e2e

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

TOKENS = {role: new_token() for role in ("emr", "feed", "admin")}
TOKEN_NAMES = {"emr": "his-emr-gateway-7", "feed": "lis-feed-3", "admin": "ops-console-1"}
CERT_NAMES = {"emr": "emr-gateway.test", "feed": "lis-feed.test", "admin": "ops-console.test"}
ORG = "Fujian Test Hospital"


def _rpc(method: str, request: Any, response_type: Any) -> Callable[..., Any]:
    def call(channel: grpc.Channel, metadata: Any) -> Any:
        stub = channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return stub(request, timeout=10, metadata=metadata)

    return call


# Each RPC with a request its own role may send; (role, the code that role gets).
# SubmitFeedback for an unknown decision is NOT_FOUND: the handler ran, auth let it by.
RPCS: dict[str, tuple[Callable[..., Any], str, grpc.StatusCode]] = {
    "Check": (
        _rpc("/cds.v1.OrderCheckService/Check", check_request(), order_check_pb2.CheckResponse),
        "emr",
        OK,
    ),
    "SubmitFeedback": (
        _rpc(
            "/cds.v1.OrderCheckService/SubmitFeedback",
            order_check_pb2.SubmitFeedbackRequest(decision_id="no-such", line_id="1"),
            order_check_pb2.SubmitFeedbackResponse,
        ),
        "emr",
        grpc.StatusCode.NOT_FOUND,
    ),
    "PutResults": (
        _rpc(
            "/cds.v1.ResultFeedService/PutResults",
            result_feed_pb2.PutResultsRequest(),
            result_feed_pb2.PutResultsResponse,
        ),
        "feed",
        OK,
    ),
    "WithdrawResults": (
        _rpc(
            "/cds.v1.ResultFeedService/WithdrawResults",
            result_feed_pb2.WithdrawResultsRequest(),
            result_feed_pb2.WithdrawResultsResponse,
        ),
        "feed",
        OK,
    ),
    "ReloadCatalog": (
        _rpc(
            "/cds.v1.CatalogAdminService/ReloadCatalog",
            catalog_admin_pb2.ReloadCatalogRequest(dry_run=True),
            catalog_admin_pb2.ReloadCatalogResponse,
        ),
        "admin",
        OK,
    ),
    "GetCatalogStatus": (
        _rpc(
            "/cds.v1.CatalogAdminService/GetCatalogStatus",
            catalog_admin_pb2.GetCatalogStatusRequest(),
            catalog_admin_pb2.GetCatalogStatusResponse,
        ),
        "admin",
        OK,
    ),
}


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return OK, ""


def expected(rpc: str, caller: str) -> grpc.StatusCode:
    _, role, allowed = RPCS[rpc]
    if caller == role:
        return allowed
    return DENIED if caller in TOKENS else UNAUTHENTICATED


def assert_reveals_nothing(code: grpc.StatusCode, details: str) -> None:
    """A refusal carries the same fixed text for everyone: no token, name, subject, role."""
    if code in (UNAUTHENTICATED, DENIED):
        fixed = UNAUTHENTICATED_MESSAGE if code == UNAUTHENTICATED else PERMISSION_DENIED_MESSAGE
        assert details == fixed
        secrets = [*TOKENS.values(), *TOKEN_NAMES.values(), *CERT_NAMES.values(), ORG]
        for text in (*secrets, "emr", "feed", "admin"):
            assert text not in details


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca = Authority()
    return {
        "ca": ca,
        "server": ca.issue("localhost", server=True),
        **{role: ca.issue(cn, org=ORG) for role, cn in CERT_NAMES.items()},
        "stranger": ca.issue("stranger.test", org=ORG),
        "foreign": Authority("another CA").issue(CERT_NAMES["emr"], org=ORG),
    }


def write_pem(workdir: Path, name: str, pem: Pem) -> tuple[str, str]:
    (workdir / f"{name}.crt").write_bytes(pem.cert)
    (workdir / f"{name}.key").write_bytes(pem.key)
    return str(workdir / f"{name}.crt"), str(workdir / f"{name}.key")


def credentials(pki: dict[str, Any], client: str | None = None) -> grpc.ChannelCredentials:
    pem = pki[client] if client else None
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].cert_pem,
        private_key=pem.key if pem else None,
        certificate_chain=pem.cert if pem else None,
    )


def tls_args(workdir: Path, pki: dict[str, Any], *, mutual: bool) -> list[str]:
    cert, key = write_pem(workdir, "server", pki["server"])
    (workdir / "ca.crt").write_bytes(pki["ca"].cert_pem)
    args = ["--tls-cert", cert, "--tls-key", key]
    return [*args, "--tls-client-ca", str(workdir / "ca.crt")] if mutual else args


# -- bearer tokens over TLS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("roles-tokens")
    tokens = workdir / "tokens.json"
    entries = [token_entry(TOKEN_NAMES[r], r, t) for r, t in TOKENS.items()]
    tokens.write_text(json.dumps({"tokens": entries}))
    args = [*tls_args(workdir, pki, mutual=False), "--auth-tokens", str(tokens)]
    with running_server(workdir, extra_args=args, channel_credentials=credentials(pki)) as s:
        yield s


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


TOKEN_CALLERS = {
    **{role: bearer(t) for role, t in TOKENS.items()},
    "none": None,
    "unknown-token": bearer(new_token()),
    "not-bearer": (("authorization", f"Basic {TOKENS['admin']}"),),
}


@pytest.mark.parametrize("caller", list(TOKEN_CALLERS))
@pytest.mark.parametrize("rpc", list(RPCS))
def test_token_roles_each_rpc_each_caller(token_server, rpc, caller):
    call, _, _ = RPCS[rpc]
    code, details = status_of(lambda: call(token_server.channel, TOKEN_CALLERS[caller]))
    assert code == expected(rpc, caller), details
    assert_reveals_nothing(code, details)


def test_health_and_reflection_need_no_token(token_server):
    assert token_server.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert "cds.v1.OrderCheckService" in reflected_services(token_server.channel)


def test_cds_check_over_tls_with_a_token(token_server, pki, tmp_path):
    (tmp_path / "ca.crt").write_bytes(pki["ca"].cert_pem)
    base = ["check", "--server", token_server.address, "--tls-ca", str(tmp_path / "ca.crt")]
    ok = run_cli([*base, "--token", TOKENS["emr"], "-"], CLI_REQUEST)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["decision"] == "DECISION_ALLOW"
    denied = run_cli([*base, "--token", TOKENS["feed"], "-"], CLI_REQUEST)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr


CLI_REQUEST = json.dumps(
    {
        "institution_id": "H1",
        "patient": {"patient_id": "P"},
        "items": [{"line_id": "1", "item_code": "K"}],
    }
)


def run_cli(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cds_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=30,
    )


def reflected_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return {s.name for s in response.list_services_response.service}


# -- client certificates (mutual TLS) -----------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("roles-mtls")
    roles = workdir / "roles.json"
    roles.write_text(
        json.dumps(
            {
                "tokens": [token_entry(TOKEN_NAMES["emr"], "emr", TOKENS["emr"])],
                "certificates": [
                    {"common_name": CERT_NAMES["emr"], "role": "emr"},
                    # the whole subject, as `openssl x509 -noout -subject -nameopt RFC2253`
                    {"subject": f"O={ORG},CN={CERT_NAMES['feed']}", "role": "feed"},
                    {"common_name": CERT_NAMES["admin"], "role": "admin"},
                ],
            }
        )
    )
    args = [*tls_args(workdir, pki, mutual=True), "--auth-tokens", str(roles)]
    creds = credentials(pki, "stranger")
    with running_server(workdir, extra_args=args, channel_credentials=creds) as s:
        channels = {
            c: grpc.secure_channel(s.address, credentials(pki, c))
            for c in ("emr", "feed", "admin", "stranger")
        }
        s.client_channels = channels  # type: ignore[attr-defined]
        yield s
        for channel in channels.values():
            channel.close()


@pytest.mark.parametrize("caller", ["emr", "feed", "admin", "stranger"])
@pytest.mark.parametrize("rpc", list(RPCS))
def test_certificate_roles_each_rpc_each_caller(mtls_server, rpc, caller):
    call, _, _ = RPCS[rpc]
    code, details = status_of(lambda: call(mtls_server.client_channels[caller], None))
    # "stranger" holds a valid certificate of the CA that maps to no role.
    assert code == expected(rpc, caller), details
    assert_reveals_nothing(code, details)


@pytest.mark.parametrize("client", [None, "foreign"])
def test_without_a_certificate_of_the_client_ca_the_handshake_fails(mtls_server, pki, client):
    with grpc.secure_channel(mtls_server.address, credentials(pki, client)) as channel:
        call, _, _ = RPCS["GetCatalogStatus"]
        assert status_of(lambda: call(channel, None))[0] == grpc.StatusCode.UNAVAILABLE


def test_a_token_over_mutual_tls_decides_whatever_the_certificate(mtls_server):
    channel = mtls_server.client_channels["stranger"]
    call, _, _ = RPCS["Check"]
    assert status_of(lambda: call(channel, bearer(TOKENS["emr"])))[0] == OK
    channel = mtls_server.client_channels["admin"]
    assert status_of(lambda: call(channel, bearer(new_token())))[0] == UNAUTHENTICATED


def test_health_and_reflection_open_to_any_certificate_of_the_ca(mtls_server):
    # mtls_server.channel presents the "stranger" certificate, which has no role.
    assert mtls_server.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert "cds.v1.CatalogAdminService" in reflected_services(mtls_server.channel)


def test_cds_check_with_a_client_certificate(mtls_server, pki, tmp_path):
    (tmp_path / "ca.crt").write_bytes(pki["ca"].cert_pem)
    cert, key = write_pem(tmp_path, "emr", pki["emr"])
    args = ["--server", mtls_server.address, "--tls-ca", str(tmp_path / "ca.crt")]
    done = run_cli(["check", *args, "--tls-cert", cert, "--tls-key", key, "-"], CLI_REQUEST)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] == "DECISION_ALLOW"


# -- the tokens file reloaded on SIGHUP ---------------------------------------------------


def test_sighup_reloads_tokens_and_a_bad_file_keeps_the_old_set(tmp_path):
    kept, revoked, added = new_token(), new_token(), new_token()
    tokens = tmp_path / "tokens.json"

    def write(*entries: dict[str, str]) -> None:
        tokens.write_text(json.dumps({"tokens": list(entries)}))

    write(token_entry("kept", "emr", kept), token_entry("revoked", "emr", revoked))
    call, _, _ = RPCS["Check"]
    with running_server(tmp_path, extra_args=["--auth-tokens", str(tokens)]) as s:

        def code(token: str) -> grpc.StatusCode:
            return status_of(lambda: call(s.channel, bearer(token)))[0]

        assert (code(kept), code(revoked), code(added)) == (OK, OK, UNAUTHENTICATED)

        write(token_entry("kept", "emr", kept), token_entry("added", "emr", added))
        s.signal(signal.SIGHUP)
        s.wait_for_log("credentials reloaded")
        assert (code(kept), code(revoked), code(added)) == (OK, UNAUTHENTICATED, OK)

        tokens.write_text('{"tokens": [{"name": "x", "role": "emr", "sha256": "not hex"}]}')
        s.signal(signal.SIGHUP)
        s.wait_for_log("tokens file not reloaded, the old credentials stay")
        assert (code(kept), code(revoked), code(added)) == (OK, UNAUTHENTICATED, OK)
        assert "$.tokens[0].sha256" in s.log_text()  # the operator is told what is wrong
    for token in (kept, revoked, added):
        assert token not in s.log_text()
