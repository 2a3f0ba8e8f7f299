"""Nothing identifiable anywhere the service writes: a whole session against a real
`cds serve` at INFO and at DEBUG, then every log line, every decision-log line and the
metrics text are scanned for the raw identifiers the session sent.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cds.security.auth import new_token, token_entry
from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2, types_pb2
from tests.support.cds_clients import CdsClient, issuers_file
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import cds_command, load_test_catalog, running_server, server_env

pytestmark = pytest.mark.e2e

PATIENT = "PAT-PRIV-7a61e3"
OTHER_PATIENT = "PAT-PRIV-b20c94"
CLINICIAN = "DOC-PRIV-55f0d2"
DIAGNOSIS = "C34.PRIV9"
MDT_RECORD = "MDT-PRIV-0c3e"
REQUEST_ID = "REQ-PRIV-e91b"
COMMENT = "COMMENT-PRIV free text about the patient"
# Never anywhere the service writes (the comment is the decision log's to keep).
RAW_IDS = (PATIENT, OTHER_PATIENT, CLINICIAN, DIAGNOSIS, MDT_RECORD, REQUEST_ID)
TOKENS = {role: new_token() for role in ("emr", "feed", "admin")}
EMR_CLIENT = CdsClient("https://emr.privacy.example/")
JWTS: list[str] = []  # every JWT the session sent: never anywhere the service writes


def bearer(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[role]}"),)


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def run_session(s: Any) -> list[tuple[grpc.StatusCode, str]]:
    """Checks (allow, warn, block), feedback, results put/withdraw, a dry run replaying
    the session's orders, a reload with a silent rule, a failed reload, refused
    credentials and bad input, all with the identifiers above; the answers to scan."""
    emr, feed, admin = bearer("emr"), bearer("feed"), bearer("admin")
    ids = {"clinician_id": CLINICIAN, "request_id": REQUEST_ID}
    yesterday = now_us() - DAY_US
    s.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[
                result("R-p1", patient_id=PATIENT, reported_at_us=yesterday),
                result("R-p2", patient_id=PATIENT, item_code="HBA1C", reported_at_us=yesterday),
            ]
        ),
        timeout=5,
        metadata=feed,
    )
    s.feed.WithdrawResults(
        result_feed_pb2.WithdrawResultsRequest(
            results=[types_pb2.ResultRef(patient_id=PATIENT, result_id="R-p2")]
        ),
        timeout=5,
        metadata=feed,
    )
    allow = s.check.Check(
        check_request(item("1", "NA"), patient_id=OTHER_PATIENT, **ids), timeout=5, metadata=emr
    )
    warn = s.check.Check(
        check_request(item("1", "K"), patient_id=PATIENT, diagnosis_codes=(DIAGNOSIS,), **ids),
        timeout=5,
        metadata=emr,
    )
    # A gene test with a substituted price item: BLOCK, with diagnosis and MDT record.
    gene = item("1", "EGFR", category=types_pb2.ITEM_CATEGORY_GENE_TEST, price_item_code="P-X")
    patient = types_pb2.Patient(
        patient_id=PATIENT,
        diagnosis_codes=[DIAGNOSIS],
        first_oncology_visit=True,
        mdt_record_id=MDT_RECORD,
    )
    block = s.check.Check(
        order_check_pb2.CheckRequest(institution_id="H1", patient=patient, items=[gene], **ids),
        timeout=5,
        metadata=emr,
    )
    decisions = [r.decision for r in (allow, warn, block)]
    assert decisions == [
        types_pb2.DECISION_ALLOW,
        types_pb2.DECISION_WARN,
        types_pb2.DECISION_BLOCK,
    ]
    feedback = order_check_pb2.SubmitFeedbackRequest
    s.check.SubmitFeedback(
        feedback(
            decision_id=warn.decision_id,
            line_id="1",
            outcome=types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN,
            override_code="OTHER",
            comment=COMMENT,
            clinician_id=CLINICIAN,
        ),
        timeout=5,
        metadata=emr,
    )
    s.check.SubmitFeedback(
        feedback(decision_id=block.decision_id, line_id="1", outcome=1, clinician_id=CLINICIAN),
        timeout=5,
        metadata=emr,
    )

    # A dry run replays the orders above, which the server keeps in memory for it, and a
    # real reload switches a rule on silently, whose firings are logged.
    preview = copy.deepcopy(load_test_catalog())
    preview["version"] = "test-priv-2"
    preview["policy"] = {
        "severity": {"RECOGNIZABLE_RESULT_EXISTS": "BLOCK", "PRICE_ITEM_MISMATCH": "SILENT"}
    }
    body = json.dumps(preview).encode()
    dry_run = s.admin.ReloadCatalog(
        catalog_admin_pb2.ReloadCatalogRequest(dry_run=True, candidate=body),
        timeout=30,
        metadata=admin,
    )
    assert dry_run.impact.orders_replayed >= 3
    assert dry_run.impact.lines_changed >= 2  # K: WARN -> BLOCK; EGFR's price reason hushed
    s.write_catalog(preview)
    reloaded = s.admin.ReloadCatalog(
        catalog_admin_pb2.ReloadCatalogRequest(), timeout=30, metadata=admin
    )
    hushed = s.check.Check(
        order_check_pb2.CheckRequest(institution_id="H1", patient=patient, items=[gene], **ids),
        timeout=5,
        metadata=emr,
    )
    assert "PRICE_ITEM_MISMATCH" not in str(hushed)
    # The answers are scanned like the refusals below.
    replies = [(grpc.StatusCode.OK, str(r)) for r in (dry_run, reloaded)]

    # A catalogue that fails validation, by RPC and by SIGHUP.
    bad = copy.deepcopy(load_test_catalog())
    bad["recognition_items"][0]["validity_days"] = -1
    s.write_catalog(bad)
    refusals = [
        *replies,
        refused(
            lambda: s.admin.ReloadCatalog(
                catalog_admin_pb2.ReloadCatalogRequest(), timeout=5, metadata=admin
            )
        ),
    ]
    s.signal(signal.SIGHUP)
    s.wait_for_log("credentials reloaded")  # the SIGHUP's last step has run

    # Bad input carrying the identifiers, and refused credentials.
    too_long = CLINICIAN + "x" * 128
    bad_checks = [
        check_request(*(item(str(i)) for i in range(101)), patient_id=PATIENT, **ids),
        check_request(item("1"), item("1"), patient_id=PATIENT, **ids),
        check_request(item("1", ""), patient_id=PATIENT, **ids),
        check_request(patient_id=PATIENT, clinician_id=too_long),
        check_request(patient_id=PATIENT + "y" * 128),
        check_request(patient_id=PATIENT, institution_id="", clinician_id=CLINICIAN),
    ]
    refusals += [refused(lambda r=r: s.check.Check(r, timeout=5, metadata=emr)) for r in bad_checks]
    bad_feedback = [
        feedback(decision_id=warn.decision_id, line_id="1", outcome=2, override_code=PATIENT),
        feedback(decision_id=warn.decision_id, line_id="1", outcome=2, clinician_id=too_long),
        feedback(decision_id=warn.decision_id, line_id=PATIENT, outcome=1),
        feedback(decision_id=PATIENT, line_id="1", outcome=1),
    ]
    refusals += [
        refused(lambda r=r: s.check.SubmitFeedback(r, timeout=5, metadata=emr))
        for r in bad_feedback
    ]
    refusals += [
        refused(lambda: s.check.Check(check_request(patient_id=PATIENT), timeout=5)),
        refused(lambda: s.check.Check(check_request(patient_id=PATIENT), timeout=5, metadata=feed)),
    ]
    refusals += hooks_session(s)
    answer = s.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[
                result("", patient_id=PATIENT),
                result("R-x", patient_id=PATIENT + "z" * 128),
                result(PATIENT, patient_id=PATIENT, reported_at_us=None),
            ]
        ),
        timeout=5,
        metadata=feed,
    )
    assert answer.rejected == 3
    refusals += [(grpc.StatusCode.OK, error) for error in answer.errors]
    return refusals


def hooks_session(s: Any) -> list[tuple[grpc.StatusCode, str]]:
    """The same identifiers through the CDS Hooks door: a call with cards, feedback with
    the comment, and bad requests carrying the identifiers; the refusals' wording."""

    def call(path: str, body: Any, **claims: Any) -> tuple[int, Any]:
        token = EMR_CLIENT.token(s.hooks_url + path, tenant="H1", **claims)
        JWTS.append(token)
        return s.hooks(path, body, headers={"Authorization": f"Bearer {token}"})

    def order(patient_id: str, request_id: str = REQUEST_ID) -> dict[str, Any]:
        lines = [("sr-k", "K"), ("sr-g", "EGFR")]  # EGFR without consent: a block
        return {
            "hook": "order-sign",
            "hookInstance": request_id,
            "context": {
                "patientId": patient_id,
                "userId": f"Practitioner/{CLINICIAN}",
                "draftOrders": {
                    "resourceType": "Bundle",
                    "entry": [
                        {"resource": {"resourceType": "ServiceRequest", "id": sr,
                                      "code": {"coding": [{"system": "urn:cds:item",
                                                           "code": code}]}}}
                        for sr, code in lines
                    ],
                },
            },
            "prefetch": {
                "conditions": {
                    "resourceType": "Condition",
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                         "code": DIAGNOSIS}]},
                }
            },
            "extension": {"urn:cds:first-oncology-visit": True,
                          "urn:cds:mdt-record-id": MDT_RECORD},
        }  # fmt: skip

    sign = "/cds-services/cds-order-sign"
    status, body = call(sign, order(PATIENT))
    assert status == 200 and len(body["cards"]) == 2, body
    card = next(c for c in body["cards"] if c["extension"]["cds.decision"]["line_id"] == "sr-k")
    reason = {"reason": {"system": "urn:cds:override-reason", "code": "OTHER"},
              "userComment": COMMENT}  # fmt: skip
    entry = {"card": card["uuid"], "outcome": "overridden", "overrideReason": reason}
    assert call(sign + "/feedback", {"feedback": [entry]}) == (200, {})
    bad = [
        call(sign, order(PATIENT + "y" * 128)),
        call(sign, order(PATIENT, REQUEST_ID + "z" * 128)),
        call(sign + "/feedback", {"feedback": [{"card": PATIENT, "outcome": "accepted"}]}),
        call(sign, order(PATIENT), exp=int(now_us() // 1_000_000) - 3600),
    ]
    assert [status for status, _ in bad] == [400, 400, 404, 401]
    return [(grpc.StatusCode.OK, issue["diagnostics"]) for _, b in bad for issue in b["issue"]]


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_no_raw_identifier_in_logs_decision_log_metrics_or_error_messages(tmp_path, level):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [token_entry(r, r, t) for r, t in TOKENS.items()]}))
    issuers = issuers_file(tmp_path, EMR_CLIENT)
    args = ["--auth-tokens", str(tokens), "--log-level", level]
    args += ["--hooks-listen", "127.0.0.1:0", "--hooks-jwt-issuers", str(issuers)]
    with running_server(tmp_path, extra_args=args) as s:
        refusals = run_session(s)
        metrics = s.metrics_text()
    log = s.log_text()
    decision_log = s.decision_log_path.read_text(encoding="utf-8")
    # The supervision report over that log, in every format, is scanned too.
    reports = {
        fmt: subprocess.run(
            cds_command("report", "--format", fmt, str(s.decision_log_path)),
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=120,
            check=True,
        ).stdout
        for fmt in ("json", "csv", "html")
    }

    # The session did what it claims: it was refused, recorded and logged.
    codes = {code for code, _ in refusals}
    assert {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} <= codes
    assert {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED} <= codes
    assert "validity_days" in log  # the failed SIGHUP reload is reported
    assert COMMENT in decision_log  # the one free text the decision log keeps, by design
    assert decision_log.count('"type":"feedback"') == 3  # two by gRPC, one by CDS Hooks
    assert decision_log.count('"type":"counts"') >= 1  # written at shutdown
    # one reminder through gRPC, one through CDS Hooks (the same patient, the same item)
    assert json.loads(reports["json"])["recognition"]["reminded"] == 2
    assert '"silent":true' in decision_log  # the silent rule's firing, pseudonymised too
    assert "recent orders answered differently" in log  # the reload's impact, counts only
    if level == "DEBUG":
        assert " DEBUG " in log

    for code, details in refusals:
        for raw in RAW_IDS:
            assert raw not in details, (code, details)
    outputs = [("server log", log), ("decision log", decision_log), ("metrics", metrics)]
    outputs += [(f"{fmt} report", text) for fmt, text in reports.items()]
    for where, text in outputs:
        for raw in RAW_IDS:
            lines = [line for line in text.splitlines() if raw in line]
            assert not lines, f"{raw} in the {where}: {lines[:3]}"
    for where, text in [("server log", log), ("metrics", metrics), *outputs[3:]]:
        assert "COMMENT-PRIV" not in text, where
        for token in (*TOKENS.values(), *JWTS):
            assert token not in text, where
    assert JWTS
