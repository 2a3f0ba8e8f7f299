"""Mutual recognition: validity window to the µs, own vs HR-marked results, scope, emergencies."""

from __future__ import annotations

from cds.domain import Decision, EncounterType, PriorResult, ReasonCode
from cds.rules.common import NATIONAL_RECOGNITION_POLICY
from cds.rules.engine import Engine
from tests.support.snapshots import (
    CHEST_CT,
    DAY,
    HOSP_A,
    HOSP_B,
    HOSP_C,
    HOSP_UNKNOWN,
    NATIONAL_OVERRIDES,
    POTASSIUM,
    at,
    item,
    make_order,
    make_snapshot,
    patient_results,
    recognition_item,
    result,
)

RECOG = ReasonCode.RECOGNIZABLE_RESULT_EXISTS
EXEMPT = ReasonCode.RECOGNITION_EXEMPT_EMERGENCY
ORDER_TIME = at("2025-03-10 09:00")
ENGINE = Engine(make_snapshot())


def check(*results, code=POTASSIUM, order_time_us=ORDER_TIME, engine=ENGINE, **order_kw):
    order = make_order(item(code), order_time_us=order_time_us, **order_kw)
    return engine.evaluate(order, patient_results(*results)).items[0]


def test_own_institution_result_inside_window_warns_with_prior_result_and_options():
    reported = at("2025-03-08 10:30")
    line = check(result("r1", reported, institution_id=HOSP_A))
    assert line.decision == Decision.WARN
    (reason,) = line.reasons
    assert reason.code == RECOG
    assert reason.decision == Decision.WARN
    assert reason.prior_results == (
        PriorResult("r1", HOSP_A, POTASSIUM, reported, reported + 7 * DAY),
    )
    assert reason.override_options == NATIONAL_OVERRIDES
    assert reason.source == NATIONAL_RECOGNITION_POLICY
    assert "血清钾" in reason.message
    assert "1 份" in reason.message
    assert "2025-03-08" in reason.message
    assert "福建省立医院" in reason.message


def test_item_source_from_catalogue_is_cited_instead_of_national_policy():
    snap = make_snapshot(recognition_items=[recognition_item(source="闽卫医政〔2021〕示例号")])
    line = check(result("r1", at("2025-03-09 00:00")), engine=Engine(snap))
    assert line.reasons[0].source == "闽卫医政〔2021〕示例号"


def test_result_reported_exactly_at_order_time_counts():
    line = check(result("r1", ORDER_TIME))
    assert [r.code for r in line.reasons] == [RECOG]


def test_order_exactly_at_valid_until_counts():
    reported = ORDER_TIME - 7 * DAY
    line = check(result("r1", reported))
    assert line.reasons[0].prior_results[0].valid_until_us == ORDER_TIME


def test_order_one_microsecond_after_valid_until_does_not_count():
    line = check(result("r1", ORDER_TIME - 7 * DAY - 1))
    assert line.reasons == ()
    assert line.decision == Decision.ALLOW


def test_result_reported_after_order_time_does_not_count():
    line = check(result("r1", ORDER_TIME + 1))
    assert line.reasons == ()


def test_item_not_in_recognition_list_gets_no_reason_despite_results():
    line = check(result("r1", ORDER_TIME - DAY, item_code="LAB-OTHER"), code="LAB-OTHER")
    assert line.reasons == ()


def test_other_institution_without_mark_does_not_count():
    line = check(result("r1", ORDER_TIME - DAY, institution_id=HOSP_B, mark=False))
    assert line.reasons == ()


def test_own_institution_counts_without_mark_even_when_not_catalogued():
    line = check(
        result("r1", ORDER_TIME - DAY, institution_id=HOSP_UNKNOWN, mark=False),
        institution_id=HOSP_UNKNOWN,
    )
    assert [r.code for r in line.reasons] == [RECOG]


def test_province_scope_counts_marked_result_from_any_institution_even_uncatalogued():
    line = check(
        result("r1", ORDER_TIME - DAY, institution_id=HOSP_C, mark=True),
        result("r2", ORDER_TIME - 2 * DAY, institution_id=HOSP_UNKNOWN, mark=True),
    )
    assert [p.result_id for p in line.reasons[0].prior_results] == ["r1", "r2"]
    assert "厦门大学附属第一医院" in line.reasons[0].message


def test_message_names_uncatalogued_institution_by_its_id():
    line = check(result("r1", ORDER_TIME - DAY, institution_id=HOSP_UNKNOWN, mark=True))
    assert HOSP_UNKNOWN in line.reasons[0].message


def test_group_scope_counts_marked_result_from_institution_sharing_a_group():
    line = check(
        result("r1", ORDER_TIME - DAY, item_code=CHEST_CT, institution_id=HOSP_B, mark=True),
        code=CHEST_CT,
    )
    assert [r.code for r in line.reasons] == [RECOG]


def test_group_scope_ignores_marked_result_from_institution_in_another_group():
    line = check(
        result("r1", ORDER_TIME - DAY, item_code=CHEST_CT, institution_id=HOSP_C, mark=True),
        code=CHEST_CT,
    )
    assert line.reasons == ()


def test_group_scope_ignores_marked_result_from_uncatalogued_institution():
    line = check(
        result("r1", ORDER_TIME - DAY, item_code=CHEST_CT, institution_id=HOSP_UNKNOWN, mark=True),
        code=CHEST_CT,
    )
    assert line.reasons == ()


def test_group_scope_ignores_other_results_when_ordering_institution_is_uncatalogued():
    line = check(
        result("r1", ORDER_TIME - DAY, item_code=CHEST_CT, institution_id=HOSP_A, mark=True),
        code=CHEST_CT,
        institution_id=HOSP_UNKNOWN,
    )
    assert line.reasons == ()


def test_group_scope_still_counts_own_unmarked_result():
    line = check(
        result("r1", ORDER_TIME - DAY, item_code=CHEST_CT, institution_id=HOSP_C, mark=False),
        code=CHEST_CT,
        institution_id=HOSP_C,
    )
    assert [r.code for r in line.reasons] == [RECOG]


def test_prior_results_listed_newest_first_whatever_the_store_order():
    line = check(
        result("old", ORDER_TIME - 5 * DAY),
        result("other-inst", ORDER_TIME - 3 * DAY, institution_id=HOSP_B),  # no mark: skipped
        result("newest", ORDER_TIME - 1 * DAY, institution_id=HOSP_B, mark=True),
        result("expired", ORDER_TIME - 8 * DAY),
        result("middle", ORDER_TIME - 2 * DAY),
    )
    (reason,) = line.reasons
    assert [p.result_id for p in reason.prior_results] == ["newest", "middle", "old"]
    assert "3 份" in reason.message
    assert "福州市第一医院" in reason.message  # the newest one's institution


def test_emergency_is_exempt_shown_with_same_prior_results_without_options():
    results = (result("r1", ORDER_TIME - DAY), result("r2", ORDER_TIME - 2 * DAY))
    normal = check(*results)
    line = check(*results, encounter_type=EncounterType.EMERGENCY)
    (reason,) = line.reasons
    assert reason.code == EXEMPT
    assert reason.decision == Decision.ALLOW
    assert line.decision == Decision.ALLOW
    assert reason.prior_results == normal.reasons[0].prior_results
    assert reason.override_options == ()
    assert "急诊" in reason.message


def test_emergency_without_counted_result_gets_no_reason():
    line = check(encounter_type=EncounterType.EMERGENCY)
    assert line.reasons == ()


def test_many_prior_results_list_the_newest_ten_and_count_the_rest():
    # One result an hour for 25 hours: all inside the 7-day window.
    results = [result(f"r{h:02d}", ORDER_TIME - (h + 1) * 3600 * 1_000_000) for h in range(25)]
    (reason,) = check(*results).reasons
    assert [p.result_id for p in reason.prior_results] == [f"r{h:02d}" for h in range(10)]
    assert reason.prior_results_omitted == 15
    assert "25 份" in reason.message  # the message counts every one that counted


def test_a_reason_with_few_prior_results_omits_none():
    (reason,) = check(result("r1", at("2025-03-09 00:00"))).reasons
    assert reason.prior_results_omitted == 0
    assert len(reason) == len(type(reason)._fields)  # built whole, not a short tuple
