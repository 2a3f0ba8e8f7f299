"""CDS Hooks with ``--hooks-jwt-issuers``: a real server, real signed tokens over HTTP.

Every call needs a trusted client's JWT for exactly the URL called; the token's
``tenant`` is the institution. Each kind of fault is refused 401 and counted.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import jwt
import pytest

from cds.security.auth import new_token, token_entry
from tests.support.cds_clients import CdsClient, issuers_file
from tests.support.server import TEST_CATALOG, cds_command, running_server, server_env
from tests.support.tls_certs import Authority

pytestmark = pytest.mark.e2e

ES = CdsClient("https://emr-es.hospital.example/", "ES384")
RS = CdsClient("https://emr-rs.hospital.example/", "RS384")
SIGN = "/cds-services/cds-order-sign"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hooks-jwt")
    issuers = issuers_file(workdir, ES, RS, tenants={RS.iss: ["H2"]})
    args = ["--hooks-listen", "127.0.0.1:0", "--hooks-jwt-issuers", str(issuers)]
    with running_server(workdir, extra_args=args) as s:
        yield s


def tokens_file(directory):
    path = directory / "tokens.json"
    path.write_text(json.dumps({"tokens": [token_entry("emr", "emr", new_token())]}))
    return path


def request(patient="P-JWT"):
    line = {
        "resourceType": "ServiceRequest",
        "id": "sr",
        "code": {"coding": [{"system": "urn:cds:item", "code": "NTRK"}]},
    }
    return {
        "hook": "order-sign",
        "hookInstance": "h",
        "context": {
            "patientId": patient,
            "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": line}]},
        },
    }


def logged_institution(server, body) -> str:
    """The institution the decision log recorded for the answer's decision (written off
    the answer's path, so it is waited for)."""
    decision_id = body["cards"][0]["extension"]["cds.decision"]["decision_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.decision_log_path.exists():
            for record in server.decision_log_records():
                if record["decision_id"] == decision_id:
                    return record["institution_id"]
        time.sleep(0.05)
    raise AssertionError(f"{decision_id} not in the decision log")


def test_es384_and_rs384_clients_are_served_as_the_institution_their_tenant_names(server):
    aud = server.hooks_url + SIGN
    status, body = server.hooks(SIGN, request(), headers=ES.bearer(aud, tenant="H1"))
    assert status == 200 and logged_institution(server, body) == "H1"
    status, body = server.hooks(SIGN, request(), headers=RS.bearer([aud], tenant="H2"))
    assert status == 200 and logged_institution(server, body) == "H2"
    status, _ = server.hooks("/cds-services", headers=ES.bearer(server.hooks_url + "/cds-services"))
    assert status == 200


def refused(server, headers, path=SIGN):
    status, body = server.hooks(path, request() if path == SIGN else None, headers=headers)
    assert status == 401, body
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def test_every_kind_of_bad_token_is_refused_401_and_counted(server):
    aud = server.hooks_url + SIGN
    past = int(time.time()) - 3600
    now = int(time.time())
    hs256 = jwt.encode(
        {"iss": ES.iss, "aud": aud, "iat": now, "exp": now + 60, "jti": "x", "tenant": "H1"},
        "thirty-two bytes of shared secret!",
        algorithm="HS256",
    )
    replayed = ES.token(aud, tenant="H1")
    assert server.hooks(SIGN, request(), headers={"Authorization": f"Bearer {replayed}"})[0] == 200
    stranger = CdsClient("https://stranger.example/")
    faults = {
        "audience": ES.bearer(server.hooks_url + "/cds-services/cds-order-select", tenant="H1"),
        "expired": ES.bearer(aud, iat=past - 60, exp=past, tenant="H1"),
        "replayed": {"Authorization": f"Bearer {replayed}"},
        "algorithm": {"Authorization": f"Bearer {hs256}"},
        "issuer": stranger.bearer(aud, tenant="H1"),
        "missing": {},
        "tenant": RS.bearer(aud, tenant="H1"),
    }
    before = server.metrics_text()
    messages = {kind: refused(server, headers) for kind, headers in faults.items()}
    assert messages["audience"] == f"Authorization: aud must be {aud}"
    assert messages["algorithm"].startswith("Authorization: alg 'HS256' not allowed")
    assert refused(server, {}, "/cds-services").startswith("Authorization: Bearer <JWT>")
    after = server.metrics_text()
    for kind in faults:
        line = f'cds_hooks_jwt_refused_total{{reason="{kind}"}}'
        count = [float(x.split()[-1]) for x in after.splitlines() if x.startswith(line)]
        was = [float(x.split()[-1]) for x in before.splitlines() if x.startswith(line)]
        assert count and count[0] >= (was[0] if was else 0) + 1, kind


def test_a_token_without_tenant_and_no_hooks_institution_is_412(server):
    status, body = server.hooks(SIGN, request(), headers=ES.bearer(server.hooks_url + SIGN))
    assert status == 412
    assert body["issue"][0]["diagnostics"].startswith("institution: the JWT has no tenant")


def test_no_token_ever_appears_in_the_log(server):
    token = ES.token(server.hooks_url + SIGN, tenant="H1")
    server.hooks(SIGN, request(), headers={"Authorization": f"Bearer {token}"})
    server.hooks(SIGN, request(), headers={"Authorization": f"Bearer {token}"})  # refused
    assert token not in server.log_text()
    assert token.split(".")[2] not in server.metrics_text()


def test_a_reachable_hooks_address_without_tls_and_jwt_is_refused_at_start(tmp_path):
    command = cds_command(
        "serve", "--catalog", str(TEST_CATALOG), "--listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0", "--hooks-listen", "0.0.0.0:0",
        "--hooks-institution", "H1", "--no-decision-log",
    )  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env=server_env(), timeout=60, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 without TLS (--tls-cert/--tls-key) and JWT " in (
        done.stderr
    )


def test_with_the_grpc_certificate_the_hooks_door_speaks_https_only(tmp_path):
    ca = Authority()
    pem = ca.issue("127.0.0.1", server=True)
    (tmp_path / "server.crt").write_bytes(pem.cert)
    (tmp_path / "server.key").write_bytes(pem.key)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    issuers = issuers_file(tmp_path, ES)
    args = [
        "--tls-cert", str(tmp_path / "server.crt"), "--tls-key", str(tmp_path / "server.key"),
        "--auth-tokens", str(tokens_file(tmp_path)),
        "--hooks-listen", "127.0.0.1:0", "--hooks-jwt-issuers", str(issuers),
    ]  # fmt: skip
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
    with running_server(tmp_path, extra_args=args, channel_credentials=credentials) as s:
        assert s.hooks_url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        url = s.hooks_url + "/cds-services"
        headers = ES.bearer(url)
        call = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(call, context=context, timeout=10) as answer:
            assert answer.status == 200
        plain = urllib.request.Request(url.replace("https:", "http:"), headers=ES.bearer(url))
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(plain, timeout=10)
