"""What the decision log records for supervision: the checker's choice of what to log,
its counts, and the record format (a real checker over the test catalogue, a real
decision log in a temporary directory)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cds.decisions.log import CountsEntry, DecisionEntry, DecisionLog
from cds.decisions.memory import DecisionMemory
from cds.decisions.recorder import AuditRecorder
from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    ItemCategory,
    ItemDecision,
    Order,
    OrderItem,
    Reason,
    SilentReason,
    StoredResult,
)
from cds.metrics import Metrics
from cds.orders.checker import OrderChecker
from cds.results.base import StoredRow
from cds.results.memory import MemoryResultStore
from cds.rollout.state import CatalogState
from cds.security.pseudonyms import Pseudonymizer
from tests.support.server import TEST_CATALOG

NOW = 1_780_000_000_000_000
DAY = 86_400_000_000
LAB, GENE = ItemCategory.LAB, ItemCategory.GENE_TEST


def line(n: str, code: str, category: ItemCategory = LAB, **kw: Any) -> OrderItem:
    return OrderItem(n, code, category, kw.get("price", ""), kw.get("lab", ""), True)


def order(*items: OrderItem, patient: str = "P-new", **kw: Any) -> Order:
    return Order(
        "req",
        kw.get("institution", "H2"),
        kw.get("department", "ONCO"),
        "DOC-7",
        kw.get("encounter", EncounterType.OUTPATIENT),
        patient,
        ("C34.1",),
        False,
        "",
        items,
        NOW,
    )


class Session:
    """A checker writing to a real decision log; ``close()`` returns the records."""

    def __init__(self, tmp_path: Path, **checker_kw: Any) -> None:
        self.path = tmp_path / "decisions.jsonl"
        self.log = DecisionLog(self.path, Pseudonymizer.from_config(None))
        self.log.start()
        metrics = Metrics()
        store = MemoryResultStore(1000, clock=lambda: NOW / 1e6)
        prior = StoredResult("R-K", "K", "H2", NOW - DAY, True)
        asyncio.run(store.put_many([StoredRow("P-prior", prior, NOW + 7 * DAY)]))
        self.checker = OrderChecker(
            CatalogState.load(str(TEST_CATALOG)),
            store,
            DecisionMemory(),
            metrics,
            AuditRecorder(self.log),
            now_us=NOW - 60_000_000,
            **checker_kw,
        )

    def check(self, o: Order) -> Decision:
        coro = self.checker.check(o, NOW)
        try:
            coro.send(None)
        except StopIteration as done:
            return Decision(done.value.evaluation.decision)
        raise AssertionError("the in-process check suspended")

    def close(self) -> list[dict[str, Any]]:
        entry = self.checker.take_counts(NOW)
        if entry is not None:
            self.log.log_counts(entry)
        asyncio.run(self.log.close())
        return [json.loads(x) for x in self.path.read_text().splitlines()]


def decisions(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "decision"]


def test_an_allowed_gene_test_is_logged_with_its_sendout_lab_and_price_item(tmp_path):
    s = Session(tmp_path)
    approved = line("1", "EGFR", GENE, lab="LAB1", price="P-EGFR")
    assert s.check(order(approved, line("2", "HBA1C"))) == Decision.ALLOW
    (record,) = decisions(s.close())
    assert record["decision"] == "ALLOW"
    # Only the gene-test line: the plain lab line has nothing to say.
    assert record["items"] == [
        {
            "line_id": "1",
            "item_code": "EGFR",
            "decision": "ALLOW",
            "reasons": [],
            "gene_test": True,
            "sendout_lab_id": "LAB1",
            "price_item_code": "P-EGFR",
        }
    ]
    assert record["clinician"] and "DOC-7" not in json.dumps(record)


def test_an_emergency_exemption_alone_is_logged_and_a_plain_allow_is_not(tmp_path):
    s = Session(tmp_path)
    emergency = order(line("1", "K"), patient="P-prior", encounter=EncounterType.EMERGENCY)
    assert s.check(emergency) == Decision.ALLOW
    assert s.check(order(line("1", "K"), line("2", "HBA1C"))) == Decision.ALLOW
    (record,) = decisions(s.close())
    (exempt,) = record["items"]
    assert [r["code"] for r in exempt["reasons"]] == ["RECOGNITION_EXEMPT_EMERGENCY"]
    assert exempt["reasons"][0]["prior_result_ids"] == ["R-K"]
    assert "gene_test" not in exempt


def test_counts_have_every_line_by_institution_department_item_and_decision(tmp_path):
    s = Session(tmp_path)
    s.check(order(line("1", "K"), line("2", "K"), patient="P-prior"))  # WARN, WARN (dup)
    s.check(order(line("1", "K"), department="ER"))
    s.check(order(line("1", "NTRK", GENE), institution="H1"))  # BLOCK: not priced
    counts = [r for r in s.close() if r["type"] == "counts"]
    assert len(counts) == 1
    record = counts[0]
    assert (record["from"], record["to"]) == (
        "2026-05-28T20:25:40.000000Z",
        "2026-05-28T20:26:40.000000Z",
    )
    rows = {
        (r["institution_id"], r["department_id"], r["item_code"], r["decision"]): r["n"]
        for r in record["lines"]
    }
    assert rows == {
        ("H2", "ONCO", "K", "WARN"): 2,
        ("H2", "ER", "K", "ALLOW"): 1,
        ("H1", "ONCO", "NTRK", "BLOCK"): 1,
    }
    assert {o["institution_id"]: o["n"] for o in record["orders"]} == {"H2": 2, "H1": 1}
    assert record["folded"] == {"lines": 0, "orders": 0}
    assert "P-prior" not in json.dumps(record) and "DOC-7" not in json.dumps(record)


def test_count_keys_beyond_the_bound_fold_into_other_and_are_counted(tmp_path):
    s = Session(tmp_path, max_count_keys=3)  # H2, D0 and its row fill it
    for i in range(5):  # an attacker's endless new departments
        s.check(order(line("1", "HBA1C"), department=f"D{i}", institution="H2"))
    s.check(order(line("1", "HBA1C"), department="X", institution="NOT-CATALOGUED"))
    s.check(order(line("1", "HBA1C"), department="Y", institution="ALSO-NOT"))
    (record,) = [r for r in s.close() if r["type"] == "counts"]
    rows = {
        (r["institution_id"], r["department_id"], r["item_code"], r["decision"]): r["n"]
        for r in record["lines"]
    }
    assert rows == {
        ("H2", "D0", "HBA1C", "ALLOW"): 1,
        ("H2", None, None, "ALLOW"): 4,  # a catalogued institution keeps its id
        (None, None, None, "ALLOW"): 2,
    }
    orders = {o["institution_id"]: o["n"] for o in record["orders"]}
    assert orders == {"H2": 5, None: 2}
    assert record["folded"] == {"lines": 6, "orders": 2}


def test_a_gene_test_folded_into_other_is_still_logged(tmp_path):
    s = Session(tmp_path, max_count_keys=3)
    s.check(order(line("1", "HBA1C")))
    assert s.check(order(line("1", "EGFR", GENE, lab="LAB1"))) == Decision.ALLOW
    (record,) = decisions(s.close())
    assert record["items"][0]["item_code"] == "EGFR"


def test_nothing_checked_writes_no_counts_record(tmp_path):
    s = Session(tmp_path)
    assert s.checker.take_counts(NOW) is None
    assert s.close() == []


def test_silent_reasons_are_recorded_marked_silent_and_shown_ones_carry_no_flag(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl", Pseudonymizer.from_config(None))
    log.start()
    shown = Reason("GENE_TEST_REPEATED", Decision.WARN, "m")
    hidden = Reason("SENDOUT_AVAILABLE_IN_HOUSE", Decision.WARN, "m", silent=True)
    o = order(line("1", "EGFR", GENE, lab="LAB1"), line("2", "K"))
    evaluation = Evaluation(
        Decision.WARN,
        (
            ItemDecision("1", "EGFR", Decision.WARN, (shown,)),
            ItemDecision("2", "K", Decision.ALLOW, ()),
        ),
        silent=(SilentReason(1, hidden),),  # what the engine's silent rules found on line "2"
    )
    entry = DecisionEntry("d-1", o, evaluation, "v", (), NOW, frozenset({"EGFR"}))
    log.log_decision(entry)
    log.log_counts(CountsEntry(NOW - 1, NOW, {"H2": [1, {}]}))
    asyncio.run(log.close())
    record, counts = (json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines())
    assert [(i["line_id"], i["reasons"]) for i in record["items"]] == [
        ("1", [{"code": "GENE_TEST_REPEATED", "decision": "WARN", "prior_result_ids": []}]),
        (
            "2",
            [
                {
                    "code": "SENDOUT_AVAILABLE_IN_HOUSE",
                    "decision": "WARN",
                    "prior_result_ids": [],
                    "silent": True,
                }
            ],
        ),
    ]
    assert counts["type"] == "counts" and counts["orders"] == [{"institution_id": "H2", "n": 1}]


def test_a_record_after_a_torn_last_line_gets_a_line_of_its_own(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"schema":"cds.audit/v1","type":"decision"}\n{"schema":"cds.au')
    log = DecisionLog(path, Pseudonymizer.from_config(None))
    log.start()
    log.log_counts(CountsEntry(NOW - 1, NOW, {"H2": [1, {}]}))
    asyncio.run(log.close())
    _first, torn, counts = path.read_bytes().split(b"\n")[:3]
    assert torn == b'{"schema":"cds.au'
    assert json.loads(counts)["type"] == "counts"


def _oversized_entry(lines: int, code: str) -> DecisionEntry:
    from cds.domain import PriorResult

    priors = tuple(
        PriorResult("R" * 120 + f"{k:08d}", "H2", code, NOW - DAY, NOW + DAY) for k in range(10)
    )
    reason = Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "m", priors, (), "", False, 5)
    items = tuple(OrderItem(f"L{n:03d}", code, LAB, "", "", True) for n in range(lines))
    evaluation = Evaluation(
        Decision.WARN,
        tuple(ItemDecision(i.line_id, code, Decision.WARN, (reason,)) for i in items),
    )
    return DecisionEntry("d-big", order(*items), evaluation, "v1", (), NOW)


def test_a_decision_record_over_64_kib_gives_up_its_prior_ids_and_stays_one_json_line(tmp_path):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, Pseudonymizer.from_config(None))
    log.start()
    log.log_decision(_oversized_entry(100, "K" * 128))  # ~190 KB as it was
    log.log_decision(_oversized_entry(2, "K"))  # small: untouched
    asyncio.run(log.close())
    raw = path.read_bytes().splitlines()
    assert all(len(r) <= 64 * 1024 for r in raw)
    big, small = (json.loads(r) for r in raw)
    assert big["truncated"] == ["prior_result_ids"]
    assert len(big["items"]) == 100
    for item in big["items"]:
        (reason,) = item["reasons"]
        assert reason["prior_result_ids"] == []
        assert reason["prior_results_omitted"] == 15  # the 10 ids dropped, plus 5 before
    assert "truncated" not in small
    assert len(small["items"][0]["reasons"][0]["prior_result_ids"]) == 10
    assert small["items"][0]["reasons"][0]["prior_results_omitted"] == 5


def test_a_record_too_long_even_without_ids_keeps_the_lines_that_fit_and_counts_the_rest(
    tmp_path,
):
    from cds.decisions import log as decision_log

    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, Pseudonymizer.from_config(None))
    log.start()
    original = decision_log.MAX_DECISION_RECORD_BYTES
    decision_log.MAX_DECISION_RECORD_BYTES = 4096  # 100 lines without ids are ~15 KB
    try:
        log.log_decision(_oversized_entry(100, "K" * 64))
        asyncio.run(log.close())
    finally:
        decision_log.MAX_DECISION_RECORD_BYTES = original
    (raw,) = path.read_bytes().splitlines()
    assert len(raw) <= 4096
    record = json.loads(raw)
    assert record["truncated"] == ["prior_result_ids", "items"]
    assert 0 < len(record["items"]) < 100
    assert len(record["items"]) + record["items_omitted"] == 100
    assert [i["line_id"] for i in record["items"]] == [
        f"L{n:03d}" for n in range(len(record["items"]))
    ]
