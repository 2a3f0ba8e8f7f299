"""The feedback desk's rules, door-independent: what supervision may count is what the
clinician was actually shown (docs/reference.md, Feedback)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cds.decisions.memory import DecisionMemory
from cds.decisions.recorder import open_recorder
from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    FeedbackOutcome,
    ItemDecision,
    Order,
    OverrideOption,
    Reason,
)
from cds.metrics import Metrics
from cds.orders.feedback import Feedback, FeedbackDesk, FeedbackRefused, Refusal

OTHER = OverrideOption("OTHER", "其他", True)
CHANGED = OverrideOption("CONDITION_CHANGED", "病情变化", False)
ORDER = Order("req", "H1", "D1", "dr-1", EncounterType.OUTPATIENT, "P1", (), False, "", (), 0)
EVALUATION = Evaluation(
    Decision.BLOCK,
    (
        ItemDecision(
            "recognised",
            "K",
            Decision.WARN,
            (Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "m", (), (CHANGED, OTHER)),),
        ),
        ItemDecision("plain", "NA", Decision.ALLOW, ()),
        ItemDecision(
            "mismatch",
            "EGFR",
            Decision.WARN,
            (Reason("GENE_TEST_INDICATION_MISMATCH", Decision.WARN, "m"),),
        ),
        ItemDecision(
            "fixed", "NTRK", Decision.BLOCK, (Reason("GENE_TEST_NOT_PRICED", Decision.BLOCK, "m"),)
        ),
        ItemDecision(
            "emergency",
            "K",
            Decision.ALLOW,
            (Reason("RECOGNITION_EXEMPT_EMERGENCY", Decision.ALLOW, "m"),),
        ),
    ),
)


class Desk:
    """A desk over a real decision log in a temporary directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "decisions.jsonl"
        self.metrics = Metrics()
        self.memory = DecisionMemory()
        self.memory.remember("d-1", ORDER, EVALUATION, "v1")

    def submit(self, line_id: str, outcome: int, code: str = "", comment: str = "") -> None:
        async def run() -> None:
            recorder = open_recorder(str(self.path), None, self.metrics)
            try:
                desk = FeedbackDesk(self.memory, self.metrics, recorder)
                await desk.submit(Feedback("d-1", line_id, outcome, code, comment, ""), 5.0)
            finally:
                await recorder.close()

        asyncio.run(run())

    def refusal(self, *args: object) -> tuple[Refusal, str]:
        with pytest.raises(FeedbackRefused) as info:
            self.submit(*args)  # type: ignore[arg-type]
        return info.value.kind, info.value.message

    def recorded(self) -> list[dict[str, object]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


ACCEPTED = int(FeedbackOutcome.ACCEPTED)
OVERRIDDEN = int(FeedbackOutcome.OVERRIDDEN)


def test_accepting_a_line_that_showed_no_reason_is_refused_and_not_counted(tmp_path):
    desk = Desk(tmp_path)
    kind, message = desk.refusal("plain", ACCEPTED)
    assert kind is Refusal.NOT_APPLICABLE
    assert message.startswith("line_id: this line showed no reason")
    assert desk.recorded() == []


def test_overriding_a_line_that_showed_no_reason_is_refused(tmp_path):
    kind, message = Desk(tmp_path).refusal("plain", OVERRIDDEN, "", "why not")
    assert kind is Refusal.NOT_APPLICABLE
    assert message.startswith("line_id: this line showed no reason")


def test_a_warning_without_override_options_is_overridden_with_a_comment(tmp_path):
    desk = Desk(tmp_path)
    desk.submit("mismatch", OVERRIDDEN, "", "MDT 讨论后决定检测")
    (record,) = desk.recorded()
    assert (record["line_id"], record["outcome"], record["override_code"]) == (
        "mismatch",
        "OVERRIDDEN",
        "",
    )
    assert record["comment"] == "MDT 讨论后决定检测"


def test_overriding_a_warning_without_options_needs_a_comment(tmp_path):
    kind, message = Desk(tmp_path).refusal("mismatch", OVERRIDDEN, "", "   ")
    assert kind is Refusal.INVALID
    assert message.startswith("comment: required")


def test_overriding_a_warning_without_options_with_a_code_names_the_field(tmp_path):
    kind, message = Desk(tmp_path).refusal("mismatch", OVERRIDDEN, "OTHER", "because")
    assert kind is Refusal.INVALID
    assert message.startswith("override_code: this line offers no override reasons")


def test_a_block_without_options_stays_fixed_at_its_cause(tmp_path):
    kind, message = Desk(tmp_path).refusal("fixed", OVERRIDDEN, "", "please")
    assert kind is Refusal.NOT_APPLICABLE
    assert message.startswith("line_id: none of this line's reasons can be overridden")


def test_a_shown_reason_may_still_be_accepted_or_overridden_as_offered(tmp_path):
    desk = Desk(tmp_path)
    desk.submit("recognised", ACCEPTED)
    desk.submit("recognised", OVERRIDDEN, "OTHER", "复查")
    desk.submit("emergency", ACCEPTED)  # the exemption was shown
    desk.submit("fixed", ACCEPTED)  # the clinician changed the order as the block asked
    assert [(r["line_id"], r["outcome"]) for r in desk.recorded()] == [
        ("recognised", "ACCEPTED"),
        ("recognised", "OVERRIDDEN"),
        ("emergency", "ACCEPTED"),
        ("fixed", "ACCEPTED"),
    ]


def test_live_recognition_feedback_counts_the_latest_and_the_one_it_replaced(tmp_path):
    desk = Desk(tmp_path)
    desk.metrics.set_institutions(frozenset({"H1"}))
    desk.submit("recognised", ACCEPTED)
    desk.submit("recognised", ACCEPTED)  # a retry: not counted again
    desk.submit("recognised", OVERRIDDEN, "OTHER", "复查")
    desk.submit("mismatch", OVERRIDDEN, "", "MDT 讨论后决定检测")  # not a reminder

    def value(name: str, outcome: str, reason: str) -> float | None:
        labels = {"institution": "H1", "outcome": outcome, "reason": reason}
        return desk.metrics.registry.get_sample_value(name, labels)

    fed, replaced = "cds_recognition_feedback_total", "cds_recognition_feedback_replaced_total"
    assert value(fed, "accepted", "") == 1
    assert value(fed, "overridden", "OTHER") == 1
    assert value(replaced, "accepted", "") == 1
    assert value(replaced, "overridden", "OTHER") is None
    assert value(fed, "overridden", "") is None


def test_an_institution_outside_the_catalogue_is_labelled_other(tmp_path):
    desk = Desk(tmp_path)  # no catalogue institutions known to the metrics
    desk.submit("recognised", ACCEPTED)
    labels = {"institution": "other", "outcome": "accepted", "reason": ""}
    assert desk.metrics.registry.get_sample_value("cds_recognition_feedback_total", labels) == 1
