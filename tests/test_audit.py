"""The audit trail: pseudonyms, record content, never-blocking decisions, durable feedback."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from cds.decisions.log import DecisionEntry, DecisionLog
from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    FeedbackOutcome,
    ItemCategory,
    ItemDecision,
    Order,
    OrderItem,
    PriorResult,
    Reason,
)
from cds.security.pseudonyms import (
    PSEUDONYM_HEX_CHARS,
    Pseudonymizer,
    PseudonymKeyError,
    new_key_line,
)

ROOT = Path(__file__).resolve().parents[1]
PATIENT = "P-350102199001011234"
CLINICIAN = "DR-7788-ZHANG"
AT_US = 1_750_000_000_123_456  # 2025-06-15T15:06:40.123456Z


def write_keys(path: Path, *lines: str) -> Path:
    path.write_text("# test keys\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def make_order(patient_id: str = PATIENT, clinician_id: str = CLINICIAN) -> Order:
    return Order(
        request_id="req-1",
        institution_id="FJ-H001",
        department_id="ONC",
        clinician_id=clinician_id,
        encounter_type=EncounterType.OUTPATIENT,
        patient_id=patient_id,
        diagnosis_codes=("C34.1",),
        first_oncology_visit=True,
        mdt_record_id="MDT-SECRET-9",
        items=(
            OrderItem("L1", "K", ItemCategory.LAB, "", "", False),
            OrderItem("L2", "EGFR", ItemCategory.GENE_TEST, "", "", False),
            OrderItem("L3", "NA", ItemCategory.LAB, "", "", False),
        ),
        order_time_us=AT_US,
    )


def make_evaluation() -> Evaluation:
    prior = PriorResult("R-9", "FJ-H002", "K", AT_US - 10**9, AT_US + 10**9)
    return Evaluation(
        decision=Decision.BLOCK,
        items=(
            ItemDecision(
                "L1",
                "K",
                Decision.WARN,
                (Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "free text", (prior,)),),
            ),
            ItemDecision(
                "L2",
                "EGFR",
                Decision.BLOCK,
                (Reason("CONSENT_REQUIRED", Decision.BLOCK, "free text"),),
            ),
            ItemDecision("L3", "NA", Decision.ALLOW, ()),
        ),
    )


def feedback_kwargs(**over: object) -> dict:
    kw: dict = {
        "decision_id": "d-1",
        "line_id": "L1",
        "outcome": FeedbackOutcome.OVERRIDDEN,
        "override_code": "CONDITION_CHANGED",
        "comment": "fever since yesterday",
        "clinician_id": CLINICIAN,
        "patient_id": PATIENT,
        "institution_id": "FJ-H001",
        "department_id": "ONC",
        "item_code": "K",
        "reason_codes": ["RECOGNIZABLE_RESULT_EXISTS"],
        "prior_result_ids": ["LIS-88"],
        "catalog_version": "2025.06",
        "at_us": AT_US,
    }
    kw.update(over)
    return kw


def read_records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "keys", new_key_line("k1"))


# -- Pseudonymizer ----------------------------------------------------------------------


def test_pseudonym_is_stable_across_instances_with_the_same_key(keyfile: Path) -> None:
    a, b = Pseudonymizer.from_file(keyfile), Pseudonymizer.from_file(keyfile)
    assert a.patient(PATIENT) == b.patient(PATIENT)
    assert len(a.patient(PATIENT)) == PSEUDONYM_HEX_CHARS
    assert PATIENT not in a.patient(PATIENT)


def test_pseudonym_differs_per_key_and_per_kind(tmp_path: Path) -> None:
    a = Pseudonymizer.from_file(write_keys(tmp_path / "a", new_key_line("k1")))
    b = Pseudonymizer.from_file(write_keys(tmp_path / "b", new_key_line("k1")))
    assert a.patient(PATIENT) != b.patient(PATIENT)
    assert a.patient("X1") != a.clinician("X1")
    assert a.patient("X1") != a.patient("X2")


def test_absent_id_stays_empty_rather_than_a_shared_pseudonym(keyfile: Path) -> None:
    assert Pseudonymizer.from_file(keyfile).clinician("") == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("", "holds no key"),
        ("k1 " + "ab" * 16, "at least 32"),
        ("k1 zz" + "ab" * 32, "not hexadecimal"),
        ("k1", "expected 'KEY_ID HEXKEY'"),
        ("bad/id " + "ab" * 32, "must match"),
        ("k1 " + "ab" * 32 + "\nk1 " + "cd" * 32, "appears twice"),
    ],
)
def test_key_file_problems_are_refused_with_a_clear_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "keys"
    if content is not None:
        write_keys(path, content)
    with pytest.raises(PseudonymKeyError, match=message):
        Pseudonymizer.from_file(path)


def test_rotation_newest_key_signs_and_older_keys_still_find_a_patient(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys", new_key_line("2025-01"))
    old = Pseudonymizer.from_file(path)
    write_keys(path, *path.read_text().splitlines()[1:], new_key_line("2025-06"))
    new = Pseudonymizer.from_file(path)
    assert (old.key_id, new.key_id) == ("2025-01", "2025-06")
    assert new.patient(PATIENT) != old.patient(PATIENT)
    assert new.pseudonyms_of(patient_id=PATIENT) == {
        "2025-01": old.patient(PATIENT),
        "2025-06": new.patient(PATIENT),
    }


def test_without_a_key_file_a_per_process_key_is_used_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cds.security.pseudonyms"):
        a = Pseudonymizer.from_config(None)
    b = Pseudonymizer.ephemeral()
    assert a.key_id.startswith("ephemeral-")
    assert a.patient(PATIENT) != b.patient(PATIENT)
    assert "pseudonym" in caplog.text


# -- DecisionLog ------------------------------------------------------------------------


def test_decision_record_holds_the_audit_fields_and_no_raw_ids(
    tmp_path: Path, keyfile: Path
) -> None:
    pseud = Pseudonymizer.from_file(keyfile)
    path = tmp_path / "audit" / "decisions.jsonl"

    async def run() -> None:
        log = DecisionLog(path, pseud)
        log.start()
        log.log_decision(
            DecisionEntry(
                decision_id="d-1",
                order=make_order(),
                evaluation=make_evaluation(),
                catalog_version="2025.06",
                degraded=("RESULTS_UNAVAILABLE",),
                at_us=AT_US,
            )
        )
        await log.close()

    asyncio.run(run())
    raw = path.read_bytes()
    for secret in (PATIENT, CLINICIAN, "MDT-SECRET-9", "C34.1", "free text", "req-1"):
        assert secret.encode() not in raw
    assert read_records(path) == [
        {
            "schema": "cds.audit/v1",
            "type": "decision",
            "decision_id": "d-1",
            "timestamp": "2025-06-15T15:06:40.123456Z",
            "catalog_version": "2025.06",
            "institution_id": "FJ-H001",
            "department_id": "ONC",
            "encounter_type": "OUTPATIENT",
            "decision": "BLOCK",
            "items": [
                {
                    "line_id": "L1",
                    "item_code": "K",
                    "decision": "WARN",
                    "reasons": [
                        {
                            "code": "RECOGNIZABLE_RESULT_EXISTS",
                            "decision": "WARN",
                            "prior_result_ids": ["R-9"],
                        }
                    ],
                },
                {
                    "line_id": "L2",
                    "item_code": "EGFR",
                    "decision": "BLOCK",
                    "reasons": [
                        {"code": "CONSENT_REQUIRED", "decision": "BLOCK", "prior_result_ids": []}
                    ],
                    # a gene-test line: where it goes and what it is billed as, always
                    "gene_test": True,
                    "sendout_lab_id": "",
                    "price_item_code": "",
                },
            ],
            "degraded": ["RESULTS_UNAVAILABLE"],
            "key_id": "k1",
            "patient": pseud.patient(PATIENT),
            "clinician": pseud.clinician(CLINICIAN),
        }
    ]
    assert path.stat().st_mode & 0o077 == 0


def test_feedback_is_on_disk_when_the_await_returns(tmp_path: Path, keyfile: Path) -> None:
    pseud = Pseudonymizer.from_file(keyfile)
    path = tmp_path / "audit.jsonl"

    async def run() -> list[dict]:
        log = DecisionLog(path, pseud)
        log.start()
        await log.log_feedback(**feedback_kwargs())
        on_disk = read_records(path)  # before close: the ack alone must imply the bytes
        await log.close()
        return on_disk

    records = asyncio.run(run())
    assert PATIENT.encode() not in path.read_bytes()
    assert CLINICIAN.encode() not in path.read_bytes()
    assert records == [
        {
            "schema": "cds.audit/v1",
            "type": "feedback",
            "decision_id": "d-1",
            "line_id": "L1",
            "timestamp": "2025-06-15T15:06:40.123456Z",
            "catalog_version": "2025.06",
            "institution_id": "FJ-H001",
            "department_id": "ONC",
            "item_code": "K",
            "reason_codes": ["RECOGNIZABLE_RESULT_EXISTS"],
            "prior_result_ids": ["LIS-88"],
            "outcome": "OVERRIDDEN",
            "override_code": "CONDITION_CHANGED",
            "comment": "fever since yesterday",
            "key_id": "k1",
            "patient": pseud.patient(PATIENT),
            "clinician": pseud.clinician(CLINICIAN),
        }
    ]


def test_records_name_the_key_that_signed_them_after_a_key_swap(
    tmp_path: Path, keyfile: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    first = Pseudonymizer.from_file(keyfile)
    write_keys(keyfile, *keyfile.read_text().splitlines()[1:], new_key_line("k2"))
    second = Pseudonymizer.from_file(keyfile)

    async def run() -> None:
        log = DecisionLog(path, first)
        log.start()
        await log.log_feedback(**feedback_kwargs())
        log.set_pseudonymizer(second)
        await log.log_feedback(**feedback_kwargs())
        await log.close()

    asyncio.run(run())
    recs = read_records(path)
    assert [(r["key_id"], r["patient"]) for r in recs] == [
        ("k1", first.patient(PATIENT)),
        ("k2", second.patient(PATIENT)),
    ]


def test_log_decision_never_waits_and_reports_each_drop_when_the_queue_is_full(
    tmp_path: Path, keyfile: Path
) -> None:
    drops: list[int] = []
    path = tmp_path / "audit.jsonl"
    log = DecisionLog(
        path,
        Pseudonymizer.from_file(keyfile),
        max_pending_decisions=3,
        on_drop=lambda: drops.append(1),
    )
    # Writer not started: nothing drains the queue, so a blocking design would hang here.
    for i in range(5):
        log.log_decision(
            DecisionEntry(
                decision_id=f"d-{i}",
                order=make_order(),
                evaluation=make_evaluation(),
                catalog_version="v",
                degraded=(),
                at_us=AT_US,
            )
        )
    assert len(drops) == 2
    assert log.pending == 3

    async def drain() -> None:
        log.start()
        await log.close()

    asyncio.run(drain())
    assert [r["decision_id"] for r in read_records(path)] == ["d-0", "d-1", "d-2"]


def test_feedback_waits_for_a_queue_slot_instead_of_being_dropped(
    tmp_path: Path, keyfile: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    drops: list[int] = []
    log = DecisionLog(
        path,
        Pseudonymizer.from_file(keyfile),
        max_pending_feedback=1,
        on_drop=lambda: drops.append(1),
    )

    async def run() -> None:
        first = asyncio.create_task(log.log_feedback(**feedback_kwargs(line_id="L1")))
        second = asyncio.create_task(log.log_feedback(**feedback_kwargs(line_id="L2")))
        for _ in range(10):
            await asyncio.sleep(0)
        assert log.pending == 1  # the second waits for a slot, not in the queue
        assert not first.done() and not second.done()
        log.start()
        await asyncio.gather(first, second)
        await log.close()

    asyncio.run(run())
    assert [r["line_id"] for r in read_records(path)] == ["L1", "L2"]
    assert drops == []


def test_feedback_is_not_acknowledged_when_the_disk_refuses_it(keyfile: Path) -> None:
    # /dev/full accepts open() and fails every write with ENOSPC, like a full disk.
    log = DecisionLog("/dev/full", Pseudonymizer.from_file(keyfile))

    async def run() -> None:
        log.start()
        with pytest.raises(OSError):
            await log.log_feedback(**feedback_kwargs())
        await log.close()

    asyncio.run(run())


def test_rotation_by_size_keeps_exactly_backups_old_files_and_archives_their_feedback(
    tmp_path: Path, keyfile: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    log = DecisionLog(path, Pseudonymizer.from_file(keyfile), max_bytes=1500, backups=2)

    async def run() -> None:
        log.start()
        for i in range(40):
            await log.log_feedback(**feedback_kwargs(decision_id=f"d-{i:02d}"))
        await log.close()

    asyncio.run(run())
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit"))
    assert names == ["audit.feedback.jsonl", "audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    kept: list[str] = []
    for name in reversed(names[1:]):  # oldest first
        assert (tmp_path / name).stat().st_size <= 1500
        kept += [r["decision_id"] for r in read_records(tmp_path / name)]
    # Contiguous and ending with the newest: rotation lost nothing inside what it keeps.
    assert kept == [f"d-{i:02d}" for i in range(40 - len(kept), 40)]
    assert len(kept) < 40
    # What rotation deleted was all feedback, and every one of it is in the archive.
    archived = [r["decision_id"] for r in read_records(tmp_path / "audit.feedback.jsonl")]
    assert archived + kept == [f"d-{i:02d}" for i in range(40)]


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from cds.decisions.log import DecisionLog
    from cds.security.pseudonyms import Pseudonymizer
    from cds.domain import FeedbackOutcome

    async def main():
        log = DecisionLog(sys.argv[1], Pseudonymizer.from_file(sys.argv[2]))
        log.start()
        await log.log_feedback(
            decision_id="d-kill", line_id="L1", outcome=FeedbackOutcome.ACCEPTED,
            override_code="", comment="", clinician_id="DR-1", patient_id="P-1",
            institution_id="H", department_id="D", item_code="K",
            reason_codes=["RECOGNIZABLE_RESULT_EXISTS"], catalog_version="v", at_us=1,
        )
        print("ACK", flush=True)
        time.sleep(60)  # never closes the log: only the ack's guarantee can save the record

    asyncio.run(main())
    """
)


def test_acknowledged_feedback_survives_kill_9(tmp_path: Path, keyfile: Path) -> None:
    path = tmp_path / "audit.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(keyfile)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ACK\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert [r["decision_id"] for r in read_records(path)] == ["d-kill"]


def test_remembered_pseudonyms_are_the_keyed_hashes_and_the_memo_stays_bounded() -> None:
    from cds.security import pseudonyms

    fresh = Pseudonymizer([("2026-01", bytes(32))])
    same_key = Pseudonymizer([("2026-01", bytes(32))])
    assert fresh.patient("P1") == fresh.patient("P1") == same_key.patient("P1")
    assert fresh.clinician("P1") != fresh.patient("P1")  # namespaces stay apart
    for i in range(pseudonyms.PSEUDONYM_MEMO_MAX + 10):
        # pseudonyms_of hashes afresh under every key: the memo must agree with it
        assert fresh.patient(f"P{i}") == fresh.pseudonyms_of(patient_id=f"P{i}")["2026-01"]
    assert len(fresh._memo) <= pseudonyms.PSEUDONYM_MEMO_MAX


def test_record_timestamps_are_utc_to_the_microsecond_in_any_order_and_any_year() -> None:
    import datetime as dt
    import random

    from cds.decisions.log import _rfc3339

    def reference(us: int) -> str:
        seconds, rest = divmod(us, 1_000_000)
        at = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rest:06d}Z"

    rng = random.Random(7)
    edges = [0, 1, 59_999_999, 60_000_000, -1, -60_000_001, 1_700_000_000_123_456]
    edges += [-62_135_596_800_000_000, 253_402_300_799_999_999]  # years 1 and 9999
    minute_runs = [1_780_000_000_000_000 + i * 7_300_000 for i in range(40)]  # in order
    scattered = [
        rng.randrange(-62_135_596_800_000_000, 253_402_300_800_000_000) for _ in range(500)
    ]
    for us in edges + minute_runs + scattered + minute_runs[::-1]:
        assert _rfc3339(us) == reference(us), us
