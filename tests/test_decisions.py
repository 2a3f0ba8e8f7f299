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


def test_a_recalled_decision_equals_the_one_answered_prior_results_and_all():
    prior = PriorResult("R1", "H2", "K", 10, 20)
    reason = Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "m", (prior,), (OPT_A,), "src")
    evaluation = Evaluation(Decision.WARN, (ItemDecision("1", "K", Decision.WARN, (reason,)),))
    memory = DecisionMemory()
    memory.remember("d1", _order(), evaluation, "v")
    remembered = memory.recall("d1")
    assert remembered is not None
    assert remembered.evaluation == evaluation
    assert remembered.evaluation.items[0].reasons[0].decision is Decision.WARN


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
