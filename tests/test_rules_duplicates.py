"""The same item twice or more in one request: every line after the first is flagged."""

from __future__ import annotations

from cds.domain import Decision, ReasonCode
from cds.rules.engine import Engine
from tests.support.snapshots import (
    CHEST_CT,
    DAY,
    POTASSIUM,
    at,
    lines,
    make_order,
    make_snapshot,
    patient_results,
    result,
)

C = ReasonCode
ENGINE = Engine(make_snapshot())
ORDER_TIME = at("2025-03-10 09:00")


def evaluate(*codes, results=()):
    order = make_order(*lines(*codes), order_time_us=ORDER_TIME)
    return ENGINE.evaluate(order, patient_results(*results))


def test_three_lines_of_one_code_give_two_duplicate_reasons_naming_the_first_line():
    ev = evaluate(POTASSIUM, CHEST_CT, POTASSIUM, POTASSIUM)
    assert [[r.code for r in line.reasons] for line in ev.items] == [
        [],
        [],
        [C.DUPLICATE_IN_REQUEST],
        [C.DUPLICATE_IN_REQUEST],
    ]
    dup = ev.items[2].reasons[0]
    assert dup.decision == Decision.WARN
    assert "血清钾" in dup.message
    assert "明细 1" in dup.message
    assert ev.items[2].decision == Decision.WARN
    assert ev.decision == Decision.WARN


def test_distinct_codes_are_not_duplicates():
    ev = evaluate(POTASSIUM, CHEST_CT, "LAB-NA")
    assert all(line.reasons == () for line in ev.items)


def test_duplicate_of_an_uncatalogued_code_is_flagged_by_its_code():
    ev = evaluate("LAB-NA", "LAB-NA")
    (dup,) = ev.items[1].reasons
    assert dup.code == C.DUPLICATE_IN_REQUEST
    assert "LAB-NA" in dup.message


def test_duplicate_line_also_gets_the_recognition_reason():
    ev = evaluate(POTASSIUM, POTASSIUM, results=[result("r1", ORDER_TIME - DAY)])
    assert [r.code for r in ev.items[0].reasons] == [C.RECOGNIZABLE_RESULT_EXISTS]
    assert [r.code for r in ev.items[1].reasons] == [
        C.DUPLICATE_IN_REQUEST,
        C.RECOGNIZABLE_RESULT_EXISTS,
    ]
