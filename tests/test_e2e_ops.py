"""What operators rely on: health, reflection, metrics, shutdown, start-up refusal, the CLI."""

from __future__ import annotations

import copy
import json
import signal
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cds.v1 import order_check_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import (
    TEST_CATALOG,
    cds_command,
    load_test_catalog,
    running_server,
    server_env,
    write_catalog,
)

pytestmark = pytest.mark.e2e

SECRET_PATIENT = "PATIENT-SECRET-4711"
SECRET_CLINICIAN = "CLINICIAN-SECRET-0815"

CONTRACT_METRICS = (
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "cds_item_decisions_total",
    "cds_reasons_total",
    "cds_catalog_reloads_total",
    "cds_results_cached",
    "cds_results_ingested_total",
    "cds_results_expired_total",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("ops")) as s:
        yield s


def test_health_is_serving_for_the_server_and_each_service(server):
    for name in ("", "cds.v1.OrderCheckService", "cds.v1.ResultFeedService"):
        assert server.health_status(name) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_three_services(server):
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {
        "cds.v1.OrderCheckService",
        "cds.v1.ResultFeedService",
        "cds.v1.CatalogAdminService",
        "grpc.health.v1.Health",
    } <= names


def test_the_metrics_endpoint_serves_only_get_metrics(server):
    assert server.metrics_status() == 200
    assert server.metrics_status("/") == 404
    assert server.metrics_status("/other") == 404
    assert server.metrics_status(method="OPTIONS") == 405
    assert server.metrics_status(method="POST") == 405


def test_metrics_carry_every_contract_metric_and_no_identifier(server):
    server.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[result("R-m", patient_id=SECRET_PATIENT, reported_at_us=now_us() - DAY_US)]
        ),
        timeout=5,
    )
    response = server.check.Check(
        check_request(
            item("1", "K"),
            item("2", "K"),
            patient_id=SECRET_PATIENT,
            clinician_id=SECRET_CLINICIAN,
        ),
        timeout=5,
    )
    assert response.decision == types_pb2.DECISION_WARN
    server.check.SubmitFeedback(
        order_check_pb2.SubmitFeedbackRequest(
            decision_id=response.decision_id,
            line_id="1",
            outcome=types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN,
            override_code="OTHER",
            comment="free text comment",
            clinician_id=SECRET_CLINICIAN,
        ),
        timeout=5,
    )
    with pytest.raises(grpc.RpcError):
        server.check.Check(check_request(patient_id=""), timeout=5)
    text = server.metrics_text()
    refused = [
        line
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{")
        and 'grpc_code="INVALID_ARGUMENT"' in line
        and 'grpc_method="Check"' in line
    ]
    assert len(refused) == 1
    assert float(refused[0].rsplit(" ", 1)[1]) >= 1
    for name in CONTRACT_METRICS:
        assert f"\n{name}" in text, name
    assert 'cds_item_decisions_total{decision="warn"} ' in text
    assert 'decision="unspecified"' not in text
    # silent="" is how Prometheus stores no label: these are the series {code="..."}.
    assert 'cds_reasons_total{code="RECOGNIZABLE_RESULT_EXISTS",silent=""} ' in text
    assert 'cds_reasons_total{code="DUPLICATE_IN_REQUEST",silent=""} ' in text
    assert 'silent="true"}' not in text  # no silent rule, no silent series
    assert 'grpc_method="Check"' in text
    assert 'grpc_code="OK"' in text
    assert "cds_results_ingested_total 1.0" in text
    for edge in ("0.00025", "0.0005", "0.001", "0.0025"):
        assert f'le="{edge}"' in text
    for secret in (SECRET_PATIENT, SECRET_CLINICIAN, "free text comment"):
        assert secret not in text
        assert secret not in server.log_text()


def test_warnings_and_feedback_reach_the_decision_log_pseudonymised(server):
    server.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[result("R-log", patient_id=SECRET_PATIENT, reported_at_us=now_us() - DAY_US)]
        ),
        timeout=5,
    )
    response = server.check.Check(
        check_request(item("1", "K"), patient_id=SECRET_PATIENT, clinician_id=SECRET_CLINICIAN),
        timeout=5,
    )
    server.check.SubmitFeedback(
        order_check_pb2.SubmitFeedbackRequest(
            decision_id=response.decision_id,
            line_id="1",
            outcome=types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN,
            override_code="CONDITION_CHANGED",
            clinician_id=SECRET_CLINICIAN,
        ),
        timeout=5,
    )
    # The feedback is on disk when the RPC returns; the decision is written just before it.
    records = [
        r for r in server.decision_log_records() if r.get("decision_id") == response.decision_id
    ]
    assert sorted(r["type"] for r in records) == ["decision", "feedback"]
    feedback = next(r for r in records if r["type"] == "feedback")
    assert (feedback["line_id"], feedback["outcome"], feedback["override_code"]) == (
        "1",
        "OVERRIDDEN",
        "CONDITION_CHANGED",
    )
    assert feedback["reason_codes"] == ["RECOGNIZABLE_RESULT_EXISTS"]
    assert feedback["catalog_version"] == "test-1"
    assert len({r["patient"] for r in records}) == 1
    raw = server.decision_log_path.read_text(encoding="utf-8")
    assert SECRET_PATIENT not in raw
    assert SECRET_CLINICIAN not in raw


def test_sigterm_turns_health_not_serving_then_drains_and_exits_0(tmp_path):
    with running_server(tmp_path) as s:
        watch = s.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        s.signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert s.stop() == 0
    assert "stopped" in s.log_text()


def test_serve_with_an_invalid_catalogue_exits_non_zero_printing_every_error(tmp_path):
    bad = copy.deepcopy(load_test_catalog())
    bad["surprise"] = 1
    bad["recognition_items"][0]["validity_days"] = -3
    path = write_catalog(tmp_path / "bad.json", bad)
    done = subprocess.run(
        cds_command(
            "serve",
            "--catalog",
            str(path),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )
    assert done.returncode != 0
    assert "surprise" in done.stderr
    assert "validity_days" in done.stderr


def test_catalog_validate_accepts_a_good_file_with_a_summary():
    done = subprocess.run(
        cds_command("catalog", "validate", str(TEST_CATALOG)),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "test-1" in done.stdout


def test_catalog_validate_rejects_a_bad_file_listing_every_error(tmp_path):
    bad = copy.deepcopy(load_test_catalog())
    bad["surprise"] = 1
    bad["gene_tests"].append(copy.deepcopy(bad["gene_tests"][0]))
    path = write_catalog(tmp_path / "bad.json", bad)
    done = subprocess.run(
        cds_command("catalog", "validate", str(path)),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert "surprise" in done.stderr
    assert "EGFR" in done.stderr or "duplicate" in done.stderr.lower()


def test_cds_catalog_status_and_reload_talk_to_the_server(server):
    env = server_env()
    done = subprocess.run(
        cds_command("catalog", "status", "--server", server.address),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == "test-1"
    done = subprocess.run(
        cds_command(
            "catalog", "reload", "--dry-run", "--format", "json", "--server", server.address
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["activated"], answer["version"]) == (False, "test-1")
    assert answer["impact"]["orders_replayed"] >= 0
