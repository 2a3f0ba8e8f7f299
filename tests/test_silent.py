"""Silent rules: evaluated, counted and logged, never answered, and no line's decision."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from cds.catalog.diff import diff_snapshots, summarize
from cds.catalog.load import CatalogError, parse_catalog
from cds.decisions.log import DecisionEntry, DecisionLog
from cds.decisions.memory import DecisionMemory
from cds.decisions.recorder import NoRecorder
from cds.domain import Decision, EncounterType, ReasonCode, SilentReason
from cds.metrics import Metrics
from cds.orders.checker import OrderChecker
from cds.results.memory import MemoryResultStore
from cds.rollout.state import CatalogState
from cds.rules.engine import Engine
from cds.security.pseudonyms import Pseudonymizer
from tests.support.snapshots import (
    DAY,
    EGFR,
    HOSP_A,
    HOSP_C,
    LAB_1,
    POTASSIUM,
    at,
    gene_test,
    item,
    lines,
    make_order,
    make_snapshot,
    patient_results,
    recognition_item,
    result,
)

C = ReasonCode
ORDER_TIME = at("2025-03-10 09:00")
RECENT_K = result("k1", ORDER_TIME - DAY)


def evaluate(snapshot, *items, results=(), **order_kw):
    order = make_order(*items, order_time_us=ORDER_TIME, **order_kw)
    return Engine(snapshot).evaluate(order, patient_results(*results))


def codes(evaluation):
    return [[r.code for r in line.reasons] for line in evaluation.items]


def silent_codes(evaluation):
    return [(s.line, s.reason.code) for s in evaluation.silent]


# --------------------------------------------------------------------------- engine


def test_a_silent_code_is_evaluated_but_not_answered_and_leaves_the_line_allowed():
    snapshot = make_snapshot(severity={}, silent_codes=[C.RECOGNIZABLE_RESULT_EXISTS])
    ev = evaluate(snapshot, item(POTASSIUM), results=[RECENT_K])
    assert ev.decision == Decision.ALLOW
    assert codes(ev) == [[]]
    assert ev.items[0].decision == Decision.ALLOW
    ((line, reason),) = ev.silent
    assert line == 0
    assert reason.code == C.RECOGNIZABLE_RESULT_EXISTS
    assert reason.silent is True
    assert reason.decision == Decision.WARN  # what it would decide, switched on
    assert [p.result_id for p in reason.prior_results] == ["k1"]


def test_a_silent_code_is_silent_for_every_entry_and_other_codes_still_answer():
    snapshot = make_snapshot(silent_codes=[C.CONSENT_REQUIRED])
    ev = evaluate(snapshot, item(EGFR, consent_signed=False), first_oncology_visit=True)
    assert codes(ev) == [[C.MDT_REQUIRED]]
    assert ev.items[0].decision == Decision.BLOCK
    assert silent_codes(ev) == [(0, C.CONSENT_REQUIRED)]


def test_a_silent_recognition_item_hushes_its_reasons_only():
    silent_k = recognition_item(POTASSIUM, "血清钾", validity_days=7)._replace(silent=True)
    snapshot = make_snapshot(recognition_items=[silent_k])
    ev = evaluate(snapshot, *lines(POTASSIUM, POTASSIUM), results=[RECENT_K])
    # the duplicate is the request's, not the item's: still answered
    assert codes(ev) == [[], [C.DUPLICATE_IN_REQUEST]]
    assert [i.decision for i in ev.items] == [Decision.ALLOW, Decision.WARN]
    assert silent_codes(ev) == [
        (0, C.RECOGNIZABLE_RESULT_EXISTS),
        (1, C.RECOGNIZABLE_RESULT_EXISTS),
    ]


def test_a_silent_gene_test_hushes_every_reason_of_it_send_out_included():
    test = gene_test(repeat_interval_days=180)._replace(silent=True)
    snapshot = make_snapshot(gene_tests=[test])
    ev = evaluate(
        snapshot,
        item(EGFR, consent_signed=False, sendout_lab_id=LAB_1),
        results=[result("g1", ORDER_TIME - 10 * DAY, item_code=EGFR)],
        institution_id=HOSP_C,
        diagnosis_codes=("E11",),
    )
    assert ev.decision == Decision.ALLOW
    assert codes(ev) == [[]]
    assert silent_codes(ev) == [
        (0, C.GENE_TEST_INDICATION_MISMATCH),
        (0, C.CONSENT_REQUIRED),
        (0, C.SENDOUT_LAB_NOT_APPROVED),
        (0, C.GENE_TEST_REPEATED),
    ]


def test_a_line_with_silent_and_answered_reasons_is_decided_by_the_answered_ones():
    snapshot = make_snapshot(silent_codes=[C.MDT_REQUIRED])
    ev = evaluate(snapshot, item(EGFR), first_oncology_visit=True, diagnosis_codes=("E11",))
    assert codes(ev) == [[C.GENE_TEST_INDICATION_MISMATCH]]
    assert ev.items[0].decision == Decision.WARN  # the silent block does not raise it
    assert silent_codes(ev) == [(0, C.MDT_REQUIRED)]


def test_an_emergency_exemption_can_be_silent_by_code():
    snapshot = make_snapshot(silent_codes=[C.RECOGNITION_EXEMPT_EMERGENCY])
    ev = evaluate(
        snapshot, item(POTASSIUM), results=[RECENT_K], encounter_type=EncounterType.EMERGENCY
    )
    assert codes(ev) == [[]]
    assert silent_codes(ev) == [(0, C.RECOGNITION_EXEMPT_EMERGENCY)]


def test_without_silent_rules_nothing_is_silent():
    ev = evaluate(make_snapshot(), item(POTASSIUM), results=[RECENT_K])
    assert ev.silent == ()
    assert codes(ev) == [[C.RECOGNIZABLE_RESULT_EXISTS]]


# --------------------------------------------------------------------------- catalogue


def doc(**extra):
    base = {
        "version": "s-1",
        "recognition_items": [
            {"code": "K", "name": "血清钾", "category": "LAB", "validity_days": 7}
        ],
        "gene_tests": [{"code": "EGFR", "name": "EGFR", "indications": [], "price_item_code": "P"}],
    }
    base.update(extra)
    return base


def test_the_catalogue_accepts_silent_as_a_policy_and_on_entries():
    d = doc(policy={"severity": {"GENE_TEST_REPEATED": "SILENT"}})
    d["recognition_items"][0]["silent"] = True
    d["gene_tests"][0]["silent"] = True
    snapshot = parse_catalog(orjson.dumps(d))
    assert snapshot.silent_codes == {"GENE_TEST_REPEATED"}
    assert snapshot.severity["GENE_TEST_REPEATED"] == Decision.WARN
    assert snapshot.recognition_items["K"].silent is True
    assert snapshot.gene_tests["EGFR"].silent is True
    assert "policy: GENE_TEST_REPEATED=SILENT" in summarize(snapshot)
    assert "silent entries: 2" in summarize(snapshot)


def test_entries_are_not_silent_unless_marked():
    snapshot = parse_catalog(orjson.dumps(doc()))
    assert not snapshot.recognition_items["K"].silent
    assert not snapshot.gene_tests["EGFR"].silent
    assert snapshot.silent_codes == frozenset()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            lambda d: d["recognition_items"][0].update(silent="yes"),
            "$.recognition_items[0].silent: expected boolean, got string",
        ),
        (
            lambda d: d["gene_tests"][0].update(silent=1),
            "$.gene_tests[0].silent: expected boolean, got number",
        ),
        (
            lambda d: d.update(policy={"severity": {"MDT_REQUIRED": "silent"}}),
            "$.policy.severity.MDT_REQUIRED: ",
        ),
    ],
)
def test_a_malformed_silent_marking_is_refused_with_its_path(change, error):
    d = doc()
    change(d)
    with pytest.raises(CatalogError) as refused:
        parse_catalog(orjson.dumps(d))
    assert refused.value.errors[0].startswith(error), refused.value.errors


def test_the_diff_says_when_a_rule_goes_silent_or_comes_back():
    before = parse_catalog(orjson.dumps(doc()))
    d = doc(version="s-2", policy={"severity": {"MDT_REQUIRED": "SILENT"}})
    d["recognition_items"][0]["silent"] = True
    after = parse_catalog(orjson.dumps(d))
    assert diff_snapshots(before, after) == [
        "version: s-1 -> s-2",
        "recognition item K (血清钾): silent false -> true",
        "policy severity MDT_REQUIRED: BLOCK -> SILENT",
    ]
    assert "policy severity MDT_REQUIRED: SILENT -> BLOCK" in diff_snapshots(after, before)


# --------------------------------------------------------------------------- counted, logged


class Capture(NoRecorder):
    def __init__(self):
        self.entries: list[DecisionEntry] = []

    def decision(self, entry: DecisionEntry) -> None:
        self.entries.append(entry)


def checked(snapshot, *items, results=(), **order_kw):
    """One Check through the OrderChecker: (metrics, what reached the recorder)."""
    store = MemoryResultStore(100, clock=lambda: ORDER_TIME / 1e6)
    metrics = Metrics()
    capture = Capture()
    checker = OrderChecker(
        CatalogState("catalog.json", snapshot), store, DecisionMemory(), metrics, capture
    )
    order = make_order(*items, order_time_us=ORDER_TIME, **order_kw)

    async def run():
        from cds.results.base import StoredRow

        await store.put_many(
            [StoredRow(order.patient_id, r, ORDER_TIME + 30 * DAY) for r in results]
        )
        return await checker.check(order, ORDER_TIME)

    checked_ = asyncio.run(run())
    metrics.fold()
    return checked_, metrics, capture.entries


def sample(metrics, code, silent):
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "cds_reasons_total" and s.labels == {"code": code, "silent": silent}:
                return s.value
    return None


def test_a_check_whose_only_reasons_are_silent_is_counted_as_silent_and_logged():
    snapshot = make_snapshot(silent_codes=[C.RECOGNIZABLE_RESULT_EXISTS])
    done, metrics, entries = checked(snapshot, item(POTASSIUM), results=[RECENT_K])
    assert done.evaluation.decision == Decision.ALLOW
    assert sample(metrics, C.RECOGNIZABLE_RESULT_EXISTS, "true") == 1
    assert sample(metrics, C.RECOGNIZABLE_RESULT_EXISTS, "") == 0
    (entry,) = entries
    assert entry.evaluation.silent == done.evaluation.silent


def test_an_allowed_check_without_silent_reasons_is_not_logged():
    _, metrics, entries = checked(make_snapshot(), item(POTASSIUM))
    assert entries == []
    assert sample(metrics, C.RECOGNIZABLE_RESULT_EXISTS, "true") is None


def test_the_decision_record_marks_silent_reasons_and_only_them(tmp_path):
    snapshot = make_snapshot(silent_codes=[C.MDT_REQUIRED])
    order_kw = {"first_oncology_visit": True, "diagnosis_codes": ("E11",)}
    done, _, (entry,) = checked(snapshot, item(POTASSIUM), item(EGFR, "2"), **order_kw)
    assert done.evaluation.silent == (SilentReason(1, done.evaluation.silent[0].reason),)

    async def write():
        log = DecisionLog(tmp_path / "d.jsonl", Pseudonymizer([("k1", b"k" * 32)]))
        log.start()
        log.log_decision(entry)
        await log.close()

    asyncio.run(write())
    (record,) = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    (line,) = record["items"]  # the potassium line had nothing to say
    assert line["line_id"] == "2"
    assert line["decision"] == "WARN"
    assert line["reasons"] == [
        {"code": "GENE_TEST_INDICATION_MISMATCH", "decision": "WARN", "prior_result_ids": []},
        {"code": "MDT_REQUIRED", "decision": "BLOCK", "prior_result_ids": [], "silent": True},
    ]
    assert record["institution_id"] == HOSP_A
