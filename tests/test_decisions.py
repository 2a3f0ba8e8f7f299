"""Recent decisions are remembered for feedback: bounded, expiring, uniquely named."""

from __future__ import annotations

import gc

from cds.decisions.memory import (
    DecisionIds,
    DecisionMemory,
    FeedbackKey,
    find_line,
    offered_overrides,
)
from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    ItemDecision,
    Order,
    OverrideOption,
    PriorResult,
    Reason,
)

OPT_A = OverrideOption("A", "病情变化", False)
OPT_B = OverrideOption("B", "其他", True)


def _order(patient_id: str = "P1") -> Order:
    return Order(
        "req", "H1", "dept", "dr", EncounterType.OUTPATIENT, patient_id, (), False, "", (), 0
    )


EVALUATION = Evaluation(
    Decision.WARN,
    (
        ItemDecision(
            "1",
            "K",
            Decision.WARN,
            (Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "m", (), (OPT_A, OPT_B)),),
        ),
        ItemDecision("2", "NA", Decision.ALLOW, ()),
    ),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_unique_within_a_process():
    ids = DecisionIds()
    assert len({ids() for _ in range(10_000)}) == 10_000


def test_ids_of_two_processes_differ():
    assert DecisionIds()() != DecisionIds()()


def test_a_remembered_decision_is_recalled_with_what_feedback_needs():
    memory = DecisionMemory()
    memory.remember("d1", _order("P9"), EVALUATION, "v3")
    remembered = memory.recall("d1")
    assert remembered is not None
    assert remembered.patient_id == "P9"
    assert remembered.institution_id == "H1"
    assert remembered.department_id == "dept"
    assert remembered.catalog_version == "v3"
    assert find_line(remembered, "2") == EVALUATION.items[1]
    assert find_line(remembered, "9") is None


def test_an_unknown_decision_is_not_recalled():
    assert DecisionMemory().recall("nope") is None


def test_decisions_are_kept_for_the_ttl_and_forgotten_after():
    clock = FakeClock()
    memory = DecisionMemory(ttl_seconds=3600, timer=clock)
    memory.remember("d1", _order(), EVALUATION, "v")
    clock.now = 3599.0
    assert memory.recall("d1") is not None
    clock.now = 3601.0
    assert memory.recall("d1") is None


def test_the_bound_drops_the_oldest_decision_first():
    memory = DecisionMemory(max_decisions=3)
    for i in range(4):
        memory.remember(f"d{i}", _order(), EVALUATION, "v")
    assert len(memory) == 3
    assert memory.recall("d0") is None
    assert all(memory.recall(f"d{i}") is not None for i in (1, 2, 3))


def test_a_recalled_decision_keeps_what_feedback_reads_and_no_clinician_text():
    prior = PriorResult("R1", "H2", "K", 10, 20)
    reason = Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "m", (prior,), (OPT_B,), "src")
    evaluation = Evaluation(Decision.WARN, (ItemDecision("1", "K", Decision.WARN, (reason,)),))
    memory = DecisionMemory()
    memory.remember("d1", _order(), evaluation, "v")
    remembered = memory.recall("d1")
    assert remembered is not None
    (line,) = remembered.evaluation.items
    assert (line.line_id, line.item_code, line.decision) == ("1", "K", Decision.WARN)
    (back,) = line.reasons
    assert back.code == "RECOGNIZABLE_RESULT_EXISTS"
    assert back.decision is Decision.WARN
    assert [(o.code, o.requires_comment) for o in back.override_options] == [("B", True)]
    assert [p.result_id for p in back.prior_results] == ["R1"]  # the feedback record's ids
    # Not kept: the message, the source, the options' texts (data minimisation, bytes).
    assert (back.message, back.source, back.override_options[0].display) == ("", "", "")


def _huge_evaluation() -> Evaluation:
    """100 lines, each with a reason listing ten 128-character prior result ids."""
    priors = tuple(PriorResult(f"{k:03d}" + "R" * 125, "H2", "K", 10, 20) for k in range(10))
    reason = Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "m" * 300, priors, (OPT_A,))
    items = tuple(ItemDecision(f"{n}", "K" * 128, Decision.WARN, (reason,)) for n in range(100))
    return Evaluation(Decision.WARN, items)


def test_the_memory_is_bounded_in_bytes_the_oldest_going_first():
    memory = DecisionMemory(max_decisions=1000, max_bytes=1_000_000)
    for i in range(50):
        memory.remember(f"d{i}", _order(), _huge_evaluation(), "v")
    assert memory.bytes <= 1_000_000
    assert 0 < len(memory) < 50  # ~145 KB each: the bytes bound, not the count, holds
    kept = len(memory)
    assert memory.recall(f"d{49}") is not None
    assert memory.recall(f"d{49 - kept}") is None and memory.recall(f"d{50 - kept}") is not None
    # Small decisions fill what is left again, counted exactly.
    for i in range(50, 60):
        memory.remember(f"d{i}", _order(), EVALUATION, "v")
    assert memory.bytes <= 1_000_000


def test_a_remembered_decision_of_a_few_lines_costs_a_few_hundred_bytes():
    memory = DecisionMemory()
    memory.remember("0123456789abcdef-1", _order(), EVALUATION, "v")
    assert memory.bytes < 500  # the record (~130 B) and the entry's fixed cost


def test_remembered_decisions_add_nothing_for_the_garbage_collector_to_walk():
    """A full collection must not walk the last hundred thousand decisions."""
    memory = DecisionMemory()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(5_000):
        memory.remember(f"d{i}", _order(f"P{i}"), EVALUATION, "v")
    gc.collect()
    assert len(memory) == 5_000
    assert len(gc.get_objects()) - before < 50


def test_offered_overrides_are_those_shown_on_the_line():
    assert offered_overrides(EVALUATION.items[0]) == {"A": OPT_A, "B": OPT_B}
    assert offered_overrides(EVALUATION.items[1]) == {}


def test_the_last_recorded_feedback_of_a_line_is_what_a_change_of_mind_replaces():
    memory = DecisionMemory()
    key = FeedbackKey(2, "A", "", "dr")
    assert memory.last_recorded("d1", "1") is None
    memory.mark_recorded("d1", "1", key)
    assert memory.last_recorded("d1", "1") == key
    assert memory.last_recorded("d1", "2") is None
    changed = FeedbackKey(1, "", "", "dr")
    memory.mark_recorded("d1", "1", changed)
    assert memory.last_recorded("d1", "1") == changed
