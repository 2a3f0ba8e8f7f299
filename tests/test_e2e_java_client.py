"""The Java client example (examples/java), built with Debian's jars and run against the real
server: what an EMR vendor copies must work as the README says, and fail open when it must."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from cds.security.auth import new_token, token_entry
from cds.v1 import result_feed_pb2, types_pb2
from tests.support.server import REPO_ROOT, RunningServer, running_server
from tests.support.tls_certs import Authority

pytestmark = pytest.mark.e2e

EXAMPLE = REPO_ROOT / "examples" / "java"
BUILD = EXAMPLE / "build.sh"
SHIPPED_CATALOG = REPO_ROOT / "catalog" / "catalog.json"
EXAMPLE_RESULTS = REPO_ROOT / "examples" / "results.jsonl"
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 60
CLIENT_ENV = ("CDS_SERVER", "CDS_TOKEN", "CDS_TLS_CA", "CDS_DEADLINE_MS", "BUILD_DIR")


@pytest.fixture(scope="session")
def java_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example compiled once per session, into a temporary directory."""
    check = subprocess.run(["bash", str(BUILD), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        why = f"Java example not buildable here: {check.stderr.strip()}"
        if os.environ.get("CI") == "true":  # .ci/run installs it all: a skip would hide that
            pytest.fail(why)
        pytest.skip(why)
    build_dir = tmp_path_factory.mktemp("java-build")
    done = subprocess.run(
        ["bash", str(BUILD)],
        env=client_env(build_dir),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr}"
    return build_dir


def client_env(build_dir: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    return {**base, "BUILD_DIR": str(build_dir), **env}


def run_example(build_dir: Path, target: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUILD), "run", target],
        env=client_env(build_dir, **env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT_S,
    )


def put_example_results(server: RunningServer) -> None:
    """examples/results.jsonl, reported yesterday, as the README's walk-through feeds it."""
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = EXAMPLE_RESULTS.read_text(encoding="utf-8").replace("REPORTED_AT", yesterday)
    results = [json_format.Parse(line, types_pb2.Result()) for line in text.splitlines()]
    request = result_feed_pb2.PutResultsRequest(results=results)
    assert server.feed.PutResults(request, timeout=5).accepted == len(results)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """What `make run` serves: the shipped catalogue, plaintext on loopback."""
    with running_server(tmp_path_factory.mktemp("java"), catalog=SHIPPED_CATALOG) as s:
        yield s


def test_the_java_client_shows_the_warning_and_its_feedback_is_recorded(java_build, server):
    put_example_results(server)

    done = run_example(java_build, server.address)

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "line 1 2823-3: WARN\n  WARN RECOGNIZABLE_RESULT_EXISTS: " in out
    assert "    prior result DEMO-R-1 from FJ-XH, reported " in out
    assert "    override CONDITION_CHANGED: 因病情变化" in out
    assert "    override OTHER: 其他确需重新检查的情形（请注明原因） (comment required)\n" in out
    assert "line 2 4548-4: WARN\n" in out
    assert "line 3 2951-2: ALLOW\n" in out  # another hospital's result without the HR mark
    assert "feedback line 1 OVERRIDDEN CONDITION_CHANGED: acknowledged\n" in out
    decision_id = re.search(r"^order WARN \(decision (\S+), catalogue ", out, re.M)
    assert decision_id, out

    # Acknowledged means on disk: the server's decision log has the override.
    feedback = [
        r
        for r in server.decision_log_records()
        if r["type"] == "feedback" and r["decision_id"] == decision_id.group(1)
    ]
    assert [(r["line_id"], r["outcome"], r["override_code"]) for r in feedback] == [
        ("1", "OVERRIDDEN", "CONDITION_CHANGED")
    ]


def test_with_nobody_listening_the_order_proceeds_at_once_with_a_visible_note(java_build):
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{bound.getsockname()[1]}"
        start = time.monotonic()
        done = run_example(java_build, target)
        elapsed = time.monotonic() - start

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r"^CDS unavailable \(UNAVAILABLE after \d+ ms\): order proceeds without decision support$",
        done.stdout,
        re.M,
    ), done.stdout
    assert "cds Check failed open: UNAVAILABLE" in done.stderr  # logged for the operator
    assert elapsed < 5, f"{elapsed:.1f} s, JVM start included"


def test_a_server_that_never_answers_is_given_up_on_at_the_deadline(java_build):
    with socket.socket() as silent:  # the kernel accepts connections, nobody speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        done = run_example(java_build, f"127.0.0.1:{silent.getsockname()[1]}")

    assert done.returncode == 0, done.stdout + done.stderr
    waited = re.search(r"^CDS unavailable \(DEADLINE_EXCEEDED after (\d+) ms\)", done.stdout, re.M)
    assert waited, done.stdout
    assert 250 <= int(waited.group(1)) < 1000  # the default 300 ms deadline, not a hang


EMR_TOKEN = new_token()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """TLS and bearer tokens, as the README's step-by-step sets them up; and the CA file."""
    workdir = tmp_path_factory.mktemp("java-tls")
    ca = Authority()
    pem = ca.issue("localhost", server=True)
    (workdir / "server.crt").write_bytes(pem.cert)
    (workdir / "server.key").write_bytes(pem.key)
    (workdir / "ca.crt").write_bytes(ca.cert_pem)
    tokens = workdir / "auth.json"
    tokens.write_text(json.dumps({"tokens": [token_entry("his-emr-1", "emr", EMR_TOKEN)]}))
    args = ["--tls-cert", str(workdir / "server.crt"), "--tls-key", str(workdir / "server.key")]
    args += ["--auth-tokens", str(tokens)]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
    with running_server(
        workdir, catalog=SHIPPED_CATALOG, extra_args=args, channel_credentials=credentials
    ) as s:
        yield s, workdir / "ca.crt"


def test_over_tls_the_token_from_the_environment_is_sent(java_build, tls_server):
    server, ca_file = tls_server

    done = run_example(java_build, server.address, CDS_TLS_CA=str(ca_file), CDS_TOKEN=EMR_TOKEN)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "line 1 2823-3: ALLOW\n" in done.stdout  # answered: nothing is known of the patient


def test_a_refusal_other_than_unavailable_is_shown_as_an_error(java_build, tls_server):
    server, ca_file = tls_server

    done = run_example(java_build, server.address, CDS_TLS_CA=str(ca_file))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "CDS error UNAUTHENTICATED: " in done.stdout
    assert "CDS unavailable" not in done.stdout
