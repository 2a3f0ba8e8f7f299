"""Gene-test rules: list, price item, indication, MDT, consent, repeat interval."""

from __future__ import annotations

from cds.domain import Decision, ItemCategory, PriorResult, ReasonCode
from cds.rules.engine import Engine
from tests.support.snapshots import (
    DAY,
    EGFR,
    EGFR_PRICE,
    HOSP_A,
    HOSP_C,
    NATIONAL_OVERRIDES,
    POTASSIUM,
    at,
    gene_test,
    item,
    make_order,
    make_snapshot,
    patient_results,
    result,
)

C = ReasonCode
ORDER_TIME = at("2025-03-10 09:00")
ENGINE = Engine(make_snapshot())


def evaluate(line=None, *, engine=ENGINE, results=(), **order_kw):
    order = make_order(line or item(EGFR), order_time_us=ORDER_TIME, **order_kw)
    return engine.evaluate(order, patient_results(*results)).items[0]


def codes(line):
    return [r.code for r in line.reasons]


def engine_with(**test_kw):
    return Engine(make_snapshot(gene_tests=[gene_test(**test_kw)]))


def test_compliant_gene_test_order_is_allowed():
    line = evaluate(item(EGFR, price_item_code=EGFR_PRICE, consent_signed=True))
    assert line.reasons == ()
    assert line.decision == Decision.ALLOW


def test_gene_test_category_with_unknown_code_is_blocked_and_gets_no_other_gene_reason():
    line = evaluate(
        item("GENE-UNLISTED", consent_signed=False, sendout_lab_id="nowhere"),
        first_oncology_visit=True,
        diagnosis_codes=(),
    )
    assert codes(line) == [C.GENE_TEST_NOT_IN_CATALOGUE]
    assert line.decision == Decision.BLOCK
    assert "GENE-UNLISTED" in line.reasons[0].message
    assert "test-1" in line.reasons[0].source  # cites the catalogue version


def test_unknown_code_of_another_category_gets_no_gene_reason():
    line = evaluate(item("LAB-UNLISTED", category=ItemCategory.LAB, consent_signed=False))
    assert line.reasons == ()


def test_gene_test_category_on_a_recognition_item_is_not_in_gene_catalogue():
    line = evaluate(item(POTASSIUM, category=ItemCategory.GENE_TEST))
    assert codes(line) == [C.GENE_TEST_NOT_IN_CATALOGUE]


def test_gene_rules_apply_by_code_whatever_the_category():
    line = evaluate(item(EGFR, category=ItemCategory.LAB, consent_signed=False))
    assert codes(line) == [C.CONSENT_REQUIRED]


def test_unpriced_test_is_blocked_as_not_priced():
    line = evaluate(engine=engine_with(price_item_code=None))
    assert codes(line) == [C.GENE_TEST_NOT_PRICED]
    assert line.decision == Decision.BLOCK
    assert "EGFR基因突变检测" in line.reasons[0].message


def test_not_priced_suppresses_price_item_mismatch():
    line = evaluate(
        item(EGFR, price_item_code="FJ-OTHER"), engine=engine_with(price_item_code=None)
    )
    assert codes(line) == [C.GENE_TEST_NOT_PRICED]


def test_substituted_price_item_is_a_mismatch():
    line = evaluate(item(EGFR, price_item_code="FJ-OTHER"))
    assert codes(line) == [C.PRICE_ITEM_MISMATCH]
    assert line.decision == Decision.BLOCK
    assert EGFR_PRICE in line.reasons[0].message


def test_empty_or_matching_price_item_is_no_mismatch():
    assert evaluate(item(EGFR, price_item_code="")).reasons == ()
    assert evaluate(item(EGFR, price_item_code=EGFR_PRICE)).reasons == ()


def test_diagnosis_outside_indications_warns():
    line = evaluate(diagnosis_codes=("C18.7", "I10"))
    assert codes(line) == [C.GENE_TEST_INDICATION_MISMATCH]
    assert line.decision == Decision.WARN
    assert "C34" in line.reasons[0].message


def test_no_diagnosis_is_an_indication_mismatch():
    assert codes(evaluate(diagnosis_codes=())) == [C.GENE_TEST_INDICATION_MISMATCH]


def test_any_diagnosis_starting_with_any_listed_prefix_matches():
    engine = engine_with(indications=("C18", "C19", "C20"))
    assert evaluate(engine=engine, diagnosis_codes=("I10", "C20.x00")).reasons == ()
    assert codes(evaluate(engine=engine, diagnosis_codes=("C21",))) == [
        C.GENE_TEST_INDICATION_MISMATCH
    ]


def test_indication_prefix_matches_case_insensitively():
    assert evaluate(diagnosis_codes=("c34.1",)).reasons == ()


def test_test_without_indications_is_never_a_mismatch():
    assert evaluate(engine=engine_with(indications=()), diagnosis_codes=()).reasons == ()


def test_first_oncology_visit_without_mdt_record_is_blocked():
    line = evaluate(first_oncology_visit=True, mdt_record_id="")
    assert codes(line) == [C.MDT_REQUIRED]
    assert line.decision == Decision.BLOCK


def test_mdt_record_or_follow_up_visit_satisfies_mdt():
    assert evaluate(first_oncology_visit=True, mdt_record_id="MDT-7").reasons == ()
    assert evaluate(first_oncology_visit=False, mdt_record_id="").reasons == ()


def test_test_not_requiring_mdt_ignores_first_visit():
    engine = engine_with(requires_mdt_first_visit=False)
    assert evaluate(engine=engine, first_oncology_visit=True).reasons == ()


def test_unsigned_consent_is_blocked_when_required():
    line = evaluate(item(EGFR, consent_signed=False))
    assert codes(line) == [C.CONSENT_REQUIRED]
    assert line.decision == Decision.BLOCK


def test_unsigned_consent_is_fine_when_not_required():
    engine = engine_with(requires_consent=False)
    assert evaluate(item(EGFR, consent_signed=False), engine=engine).reasons == ()


def test_line_gets_every_gene_reason_that_applies_in_contract_order():
    line = evaluate(
        item(EGFR, price_item_code="FJ-OTHER", consent_signed=False),
        diagnosis_codes=(),
        first_oncology_visit=True,
    )
    assert codes(line) == [
        C.PRICE_ITEM_MISMATCH,
        C.GENE_TEST_INDICATION_MISMATCH,
        C.MDT_REQUIRED,
        C.CONSENT_REQUIRED,
    ]
    assert line.decision == Decision.BLOCK


def test_gene_reasons_cite_the_test_source_or_the_catalogue():
    assert evaluate(item(EGFR, consent_signed=False)).reasons[0].source.startswith("CSCO")
    line = evaluate(item(EGFR, consent_signed=False), engine=engine_with(source=""))
    assert line.reasons[0].source == "肿瘤基因检测推荐目录（版本 test-1）"


REPEAT = engine_with(repeat_interval_days=180)


def egfr_result(result_id, reported, institution_id=HOSP_A, mark=False):
    return result(result_id, reported, item_code=EGFR, institution_id=institution_id, mark=mark)


def test_result_inside_repeat_interval_from_any_institution_warns_with_options():
    older = ORDER_TIME - 100 * DAY
    newer = ORDER_TIME - 10 * DAY
    line = evaluate(
        engine=REPEAT,
        results=[egfr_result("old", older), egfr_result("new", newer, HOSP_C, mark=False)],
    )
    (reason,) = line.reasons
    assert reason.code == C.GENE_TEST_REPEATED
    assert reason.decision == Decision.WARN
    assert reason.prior_results == (
        PriorResult("new", HOSP_C, EGFR, newer, newer + 180 * DAY),
        PriorResult("old", HOSP_A, EGFR, older, older + 180 * DAY),
    )
    assert reason.override_options == NATIONAL_OVERRIDES
    assert "2 份" in reason.message
    assert "180 天" in reason.message


def test_repeat_interval_is_inclusive_at_both_ends():
    at_end = evaluate(engine=REPEAT, results=[egfr_result("r", ORDER_TIME - 180 * DAY)])
    assert at_end.reasons[0].prior_results[0].valid_until_us == ORDER_TIME
    at_start = evaluate(engine=REPEAT, results=[egfr_result("r", ORDER_TIME)])
    assert codes(at_start) == [C.GENE_TEST_REPEATED]


def test_result_just_outside_repeat_interval_or_after_order_is_ignored():
    line = evaluate(
        engine=REPEAT,
        results=[
            egfr_result("too-old", ORDER_TIME - 180 * DAY - 1),
            egfr_result("future", ORDER_TIME + 1),
        ],
    )
    assert line.reasons == ()


def test_no_repeat_interval_means_no_repeat_check():
    line = evaluate(results=[egfr_result("r", ORDER_TIME - DAY)])
    assert line.reasons == ()
