"""Engine-wide behaviour: policy severities, item and overall decisions, override options."""

from __future__ import annotations

from cds.catalog.snapshot import Snapshot
from cds.domain import (
    OVERRIDABLE_CODES,
    Decision,
    EncounterType,
    ReasonCode,
)
from cds.rules.engine import Engine
from tests.support.snapshots import (
    CHEST_CT,
    DAY,
    EGFR,
    HOSP_A,
    NATIONAL_OVERRIDES,
    POTASSIUM,
    at,
    gene_test,
    item,
    lines,
    make_order,
    make_snapshot,
    patient_results,
    result,
    sendout_lab,
)

C = ReasonCode
ORDER_TIME = at("2025-03-10 09:00")
RECENT_K = result("k1", ORDER_TIME - DAY)


def evaluate(engine, *items, results=(), **order_kw):
    order = make_order(*items, order_time_us=ORDER_TIME, **order_kw)
    return engine.evaluate(order, patient_results(*results))


def test_engine_keeps_the_snapshot_it_was_built_from():
    snap = make_snapshot()
    assert Engine(snap).snapshot is snap


def test_order_without_reasons_is_allowed_line_by_line():
    ev = evaluate(Engine(make_snapshot()), *lines(POTASSIUM, CHEST_CT, "LAB-NA"))
    assert ev.decision == Decision.ALLOW
    assert [(i.line_id, i.item_code, i.decision, i.reasons) for i in ev.items] == [
        ("1", POTASSIUM, Decision.ALLOW, ()),
        ("2", CHEST_CT, Decision.ALLOW, ()),
        ("3", "LAB-NA", Decision.ALLOW, ()),
    ]


def test_overall_decision_is_the_most_severe_item_and_lines_keep_request_order():
    engine = Engine(make_snapshot())
    ev = evaluate(
        engine,
        item(CHEST_CT, "a"),
        item(EGFR, "b", consent_signed=False),
        item(POTASSIUM, "c"),
        results=[RECENT_K],
    )
    assert [(i.line_id, i.decision) for i in ev.items] == [
        ("a", Decision.ALLOW),
        ("b", Decision.BLOCK),
        ("c", Decision.WARN),
    ]
    assert ev.decision == Decision.BLOCK
    warn_only = evaluate(engine, item(CHEST_CT, "a"), item(POTASSIUM, "c"), results=[RECENT_K])
    assert warn_only.decision == Decision.WARN


def test_item_decision_is_its_most_severe_reason():
    line = evaluate(
        Engine(make_snapshot()),
        item(EGFR, consent_signed=False),
        diagnosis_codes=(),  # WARN indication mismatch + BLOCK consent
    ).items[0]
    assert [r.decision for r in line.reasons] == [Decision.WARN, Decision.BLOCK]
    assert line.decision == Decision.BLOCK


def test_policy_can_make_recognition_a_block_for_item_and_order():
    engine = Engine(make_snapshot(severity={C.RECOGNIZABLE_RESULT_EXISTS: Decision.BLOCK}))
    ev = evaluate(engine, item(POTASSIUM), results=[RECENT_K])
    assert ev.items[0].reasons[0].decision == Decision.BLOCK
    assert ev.items[0].decision == Decision.BLOCK
    assert ev.decision == Decision.BLOCK


def test_policy_can_turn_a_warning_into_allow_while_the_reason_is_still_shown():
    engine = Engine(make_snapshot(severity={C.RECOGNIZABLE_RESULT_EXISTS: Decision.ALLOW}))
    ev = evaluate(engine, item(POTASSIUM), results=[RECENT_K])
    (reason,) = ev.items[0].reasons
    assert reason.code == C.RECOGNIZABLE_RESULT_EXISTS
    assert reason.decision == Decision.ALLOW
    assert ev.items[0].decision == Decision.ALLOW
    assert ev.decision == Decision.ALLOW


def test_policy_can_make_a_block_an_allow():
    engine = Engine(make_snapshot(severity={C.CONSENT_REQUIRED: Decision.ALLOW}))
    ev = evaluate(engine, item(EGFR, consent_signed=False))
    assert [(r.code, r.decision) for r in ev.items[0].reasons] == [
        (C.CONSENT_REQUIRED, Decision.ALLOW)
    ]
    assert ev.decision == Decision.ALLOW


def test_policy_can_make_the_emergency_exemption_a_block():
    engine = Engine(make_snapshot(severity={C.RECOGNITION_EXEMPT_EMERGENCY: Decision.BLOCK}))
    ev = evaluate(
        engine, item(POTASSIUM), results=[RECENT_K], encounter_type=EncounterType.EMERGENCY
    )
    assert ev.items[0].reasons[0].code == C.RECOGNITION_EXEMPT_EMERGENCY
    assert ev.decision == Decision.BLOCK


def test_policy_applies_to_duplicates_and_gene_rules_alike():
    engine = Engine(
        make_snapshot(
            severity={
                C.DUPLICATE_IN_REQUEST: Decision.BLOCK,
                C.GENE_TEST_INDICATION_MISMATCH: Decision.BLOCK,
            }
        )
    )
    assert evaluate(engine, *lines("LAB-NA", "LAB-NA")).decision == Decision.BLOCK
    assert evaluate(engine, item(EGFR), diagnosis_codes=()).decision == Decision.BLOCK


def test_override_options_stay_on_overridable_reasons_whatever_the_policy():
    for decision in (Decision.ALLOW, Decision.BLOCK):
        engine = Engine(
            make_snapshot(
                gene_tests=[gene_test(repeat_interval_days=90)],
                severity={
                    C.RECOGNIZABLE_RESULT_EXISTS: decision,
                    C.GENE_TEST_REPEATED: decision,
                },
            )
        )
        ev = evaluate(
            engine,
            *lines(POTASSIUM, EGFR),
            results=[RECENT_K, result("e1", ORDER_TIME - DAY, item_code=EGFR)],
        )
        (recog,) = ev.items[0].reasons
        (repeated,) = ev.items[1].reasons
        assert (recog.code, recog.decision) == (C.RECOGNIZABLE_RESULT_EXISTS, decision)
        assert (repeated.code, repeated.decision) == (C.GENE_TEST_REPEATED, decision)
        assert recog.override_options == NATIONAL_OVERRIDES
        assert repeated.override_options == NATIONAL_OVERRIDES


def test_every_reason_code_fires_and_only_the_overridable_ones_offer_options():
    engine = Engine(
        make_snapshot(
            gene_tests=[
                gene_test(in_house=[HOSP_A], repeat_interval_days=90),
                gene_test("GENE-NOPRICE", "未定价检测", price_item_code=None),
            ],
            sendout_labs=[sendout_lab(valid_until="2025-01-31", approved=[])],
        )
    )
    results = [RECENT_K, result("e1", ORDER_TIME - DAY, item_code=EGFR)]
    ev = evaluate(
        engine,
        item(POTASSIUM, "1"),
        item(POTASSIUM, "2"),
        item("GENE-UNLISTED", "3"),
        item("GENE-NOPRICE", "4"),
        item(
            EGFR, "5", price_item_code="FJ-OTHER", consent_signed=False, sendout_lab_id="LAB-OUT-1"
        ),
        results=results,
        diagnosis_codes=(),
        first_oncology_visit=True,
    )
    emergency = evaluate(
        engine, item(POTASSIUM), results=results, encounter_type=EncounterType.EMERGENCY
    )
    fired = [r for line in ev.items for r in line.reasons] + list(emergency.items[0].reasons)
    assert {r.code for r in fired} == set(ReasonCode)
    for reason in fired:
        if reason.code in OVERRIDABLE_CODES:
            assert reason.override_options == NATIONAL_OVERRIDES, reason.code
        else:
            assert reason.override_options == (), reason.code
        assert reason.message, reason.code
        assert reason.source, reason.code


def test_reasons_of_one_line_do_not_leak_into_the_next():
    engine = Engine(make_snapshot())
    ev = evaluate(engine, item(EGFR, "1", consent_signed=False), item(CHEST_CT, "2"))
    assert ev.items[1].reasons == ()
    assert ev.items[1].decision == Decision.ALLOW


def test_evaluation_is_repeatable_on_a_shared_engine():
    engine = Engine(make_snapshot())
    args = (item(POTASSIUM, "1"), item(EGFR, "2", consent_signed=False))
    first = evaluate(engine, *args, results=[RECENT_K])
    assert evaluate(engine, *args, results=[RECENT_K]) == first


def test_code_on_both_lists_gets_recognition_and_gene_reasons():
    both = gene_test(POTASSIUM, "血钾基因检测示例", indications=())
    engine = Engine(make_snapshot(gene_tests=[both]))
    line = evaluate(engine, item(POTASSIUM, consent_signed=False), results=[RECENT_K]).items[0]
    assert [r.code for r in line.reasons] == [C.RECOGNIZABLE_RESULT_EXISTS, C.CONSENT_REQUIRED]


def test_empty_catalogue_only_refuses_declared_gene_tests():
    engine = Engine(Snapshot.create(version="empty"))
    ev = evaluate(engine, *lines(POTASSIUM, EGFR), results=[RECENT_K])
    assert [[r.code for r in i.reasons] for i in ev.items] == [[], [C.GENE_TEST_NOT_IN_CATALOGUE]]


def test_every_reason_the_rules_build_positionally_has_every_field():
    """``new_tuple(Reason, (...))`` skips NamedTuple defaults: a short tuple would build a
    Reason whose last fields raise IndexError only when some caller reads them."""
    import ast
    from pathlib import Path

    import cds.rules
    from cds.domain import Reason

    found = 0
    for path in Path(cds.rules.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "new_tuple"
                and getattr(node.args[0], "id", "") == "Reason"
            ):
                found += 1
                fields = node.args[1]
                assert isinstance(fields, ast.Tuple), f"{path.name}:{node.lineno}"
                assert len(fields.elts) == len(Reason._fields), f"{path.name}:{node.lineno}"
    assert found >= 8
