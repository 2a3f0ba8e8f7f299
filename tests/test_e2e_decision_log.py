"""The decision log of a real `cds serve`: what a record holds, pseudonyms under a key
file and its rotation on SIGHUP, rotation by size from the flags, and an acknowledged
feedback surviving `kill -9`."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from cds.v1 import order_check_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import RunningServer, run_cds, running_server

pytestmark = pytest.mark.e2e

PATIENT = "PAT-LOG-5521"
CLINICIAN = "DOC-LOG-3307"
GENE = types_pb2.ITEM_CATEGORY_GENE_TEST
OVERRIDDEN = types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN
ACCEPTED = types_pb2.FEEDBACK_OUTCOME_ACCEPTED


def cli(*args: str, stdin: str = "") -> str:
    return run_cds(*args, stdin=stdin, timeout=30)


def records(path: Path) -> list[dict[str, Any]]:
    """Decision and feedback records (counts records come on the minute and at exit)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] != "counts"]


def warn_and_feedback(s: RunningServer, patient: str, result_id: str) -> str:
    """A WARN on line 1 (a prior result), acknowledged OVERRIDDEN feedback; the decision id."""
    s.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[result(result_id, patient_id=patient, reported_at_us=now_us() - DAY_US)]
        ),
        timeout=5,
    )
    warned = s.check.Check(
        check_request(item("1", "K"), patient_id=patient, clinician_id=CLINICIAN), timeout=5
    )
    assert warned.decision == types_pb2.DECISION_WARN
    s.check.SubmitFeedback(
        order_check_pb2.SubmitFeedbackRequest(
            decision_id=warned.decision_id,
            line_id="1",
            outcome=OVERRIDDEN,
            override_code="CONDITION_CHANGED",
            clinician_id=CLINICIAN,
        ),
        timeout=5,
    )
    return warned.decision_id


def test_records_hold_every_audit_field_and_keys_rotate_on_sighup(tmp_path):
    keys = tmp_path / "pseudonym.keys"
    cli("audit", "new-key", "2025-06", "--add-to", str(keys))
    args = ["--pseudonym-key", str(keys)]
    with running_server(tmp_path, extra_args=args) as s:
        t0 = dt.datetime.now(dt.UTC)
        s.feed.PutResults(
            result_feed_pb2.PutResultsRequest(
                results=[result("LIS-77", patient_id=PATIENT, reported_at_us=now_us() - DAY_US)]
            ),
            timeout=5,
        )
        common = {
            "patient_id": PATIENT,
            "clinician_id": CLINICIAN,
            "department_id": "CARDIO-2",
            "encounter_type": types_pb2.ENCOUNTER_TYPE_OUTPATIENT,
        }
        warned = s.check.Check(check_request(item("1", "K"), item("2", "NA"), **common), timeout=5)
        blocked = s.check.Check(
            check_request(item("1", "NOPE", category=GENE), **common), timeout=5
        )
        allowed = s.check.Check(check_request(item("1", "NA"), **common), timeout=5)
        assert [r.decision for r in (warned, blocked, allowed)] == [
            types_pb2.DECISION_WARN,
            types_pb2.DECISION_BLOCK,
            types_pb2.DECISION_ALLOW,
        ]
        feedback = order_check_pb2.SubmitFeedbackRequest
        s.check.SubmitFeedback(
            feedback(
                decision_id=warned.decision_id,
                line_id="1",
                outcome=OVERRIDDEN,
                override_code="OTHER",
                comment="复查：患者诉心悸",
                clinician_id=CLINICIAN,
            ),
            timeout=5,
        )
        s.check.SubmitFeedback(
            feedback(decision_id=blocked.decision_id, line_id="1", outcome=ACCEPTED), timeout=5
        )
        t1 = dt.datetime.now(dt.UTC)
        # Acknowledged feedback is on disk, and the decisions queued before it too.
        before = records(s.decision_log_path)

        cli("audit", "new-key", "2025-07", "--add-to", str(keys))
        s.signal(signal.SIGHUP)
        s.wait_for_log("new records are signed with key 2025-07")
        rotated_id = warn_and_feedback(s, PATIENT, "LIS-78")
        after = [r for r in records(s.decision_log_path) if r["decision_id"] == rotated_id]

    by_kind = {(r["type"], r["decision_id"]): r for r in before}
    assert len(before) == 4  # the WARN, the BLOCK and two feedbacks; the ALLOW is not logged
    assert ("decision", allowed.decision_id) not in by_kind
    pseudonyms = json.loads(
        cli("audit", "pseudonyms", "--pseudonym-key", str(keys), "--patient", stdin=PATIENT)
    )
    doctor = json.loads(
        cli("audit", "pseudonyms", "--pseudonym-key", str(keys), "--clinician", stdin=CLINICIAN)
    )
    who = {"key_id": "2025-06", "patient": pseudonyms["2025-06"], "clinician": doctor["2025-06"]}
    place = {"catalog_version": "test-1", "institution_id": "H1", "department_id": "CARDIO-2"}

    warn = by_kind["decision", warned.decision_id]
    assert t0 <= _time(warn["timestamp"]) <= t1
    assert warn | who | place == warn
    assert (warn["schema"], warn["encounter_type"], warn["decision"]) == (
        "cds.audit/v1",
        "OUTPATIENT",
        "WARN",
    )
    assert warn["degraded"] == []
    # Only lines with something to say; NA (no prior result) is left out.
    assert warn["items"] == [
        {
            "line_id": "1",
            "item_code": "K",
            "decision": "WARN",
            "reasons": [
                {
                    "code": "RECOGNIZABLE_RESULT_EXISTS",
                    "decision": "WARN",
                    "prior_result_ids": ["LIS-77"],
                }
            ],
        }
    ]
    block = by_kind["decision", blocked.decision_id]
    assert block | who | place == block
    assert block["decision"] == "BLOCK"
    assert [r["code"] for r in block["items"][0]["reasons"]] == ["GENE_TEST_NOT_IN_CATALOGUE"]

    override = by_kind["feedback", warned.decision_id]
    assert t0 <= _time(override["timestamp"]) <= t1
    assert override | who | place == override
    assert {k: override[k] for k in ("line_id", "item_code", "outcome", "override_code")} == {
        "line_id": "1",
        "item_code": "K",
        "outcome": "OVERRIDDEN",
        "override_code": "OTHER",
    }
    assert override["reason_codes"] == ["RECOGNIZABLE_RESULT_EXISTS"]
    assert override["prior_result_ids"] == ["LIS-77"]
    assert override["comment"] == "复查：患者诉心悸"
    accept = by_kind["feedback", blocked.decision_id]
    # No clinician on the feedback: it is the ordering clinician's.
    assert accept | who | place == accept
    assert (accept["outcome"], accept["override_code"], accept["comment"]) == ("ACCEPTED", "", "")
    assert accept["reason_codes"] == ["GENE_TEST_NOT_IN_CATALOGUE"]

    # After the rotation the new key signs; the old records stay findable with the old key.
    assert {r["key_id"] for r in after} == {"2025-07"}
    assert {r["patient"] for r in after} == {pseudonyms["2025-07"]}
    assert pseudonyms["2025-07"] != pseudonyms["2025-06"]
    raw = s.decision_log_path.read_text(encoding="utf-8")
    assert PATIENT not in raw
    assert CLINICIAN not in raw


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def test_rotation_by_size_keeps_every_acknowledged_feedback_and_survives_kill_9(tmp_path):
    args = ["--decision-log-max-bytes", "3000", "--decision-log-backups", "2"]
    log = tmp_path / "var" / "decisions.jsonl"
    with running_server(tmp_path, extra_args=args) as s:
        ids = [warn_and_feedback(s, f"rot-{i}", f"R-{i}") for i in range(8)]
        s.kill9()  # right after the last acknowledged feedback
    files = [log, log.with_name("decisions.jsonl.1"), log.with_name("decisions.jsonl.2")]
    assert all(f.exists() for f in files)
    assert not log.with_name("decisions.jsonl.3").exists()
    assert all(f.stat().st_size <= 3000 for f in files)
    kept = [r for f in reversed(files) for r in records(f)]
    assert ("feedback", ids[-1]) in {(r["type"], r["decision_id"]) for r in kept}
    # Oldest first across the files: rotation drops only the oldest whole file, in order.
    fed = [r["decision_id"] for r in kept if r["type"] == "feedback"]
    assert 0 < len(fed) < len(ids)
    assert fed == ids[-len(fed) :]
    # What rotation dropped, it dropped but for the feedback: every acknowledged one
    # is still on disk, in the rotated files or, oldest first, in the archive.
    archive = log.with_name("decisions.feedback.jsonl")
    archived = [r["decision_id"] for r in records(archive)]
    assert archived and all(r["type"] == "feedback" for r in records(archive))
    assert archived + fed == ids

    with running_server(tmp_path, extra_args=args) as s:
        assert any(r["decision_id"] == ids[-1] for r in records(log) + records(files[1]))
        later = warn_and_feedback(s, "rot-after", "R-after")
    assert records(log)[-1]["decision_id"] == later  # appended after a restart
