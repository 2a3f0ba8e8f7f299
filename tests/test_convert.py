"""proto <-> domain conversion: times, enums, responses and result rows."""

from __future__ import annotations

from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    ItemCategory,
    ItemDecision,
    OverrideOption,
    PriorResult,
    Reason,
)
from cds.orders.validation import FUTURE_SKEW_US
from cds.service.convert import (
    ResponseBuilder,
    checked_order,
    refs_from_withdraw,
    rows_from_results,
    timestamp_us,
    us_timestamp,
)
from cds.v1 import result_feed_pb2, types_pb2
from tests.support.protos import check_request, item, result

NOW_US = 1_750_000_000_123_456
DAY_US = 86_400_000_000


def test_unset_order_time_is_the_servers_clock():
    order = checked_order(check_request(), NOW_US)
    assert order.order_time_us == NOW_US


def test_order_time_keeps_microseconds():
    order = checked_order(check_request(order_time_us=NOW_US - 654_321), NOW_US)
    assert order.order_time_us == NOW_US - 654_321


def test_an_order_time_with_nanos_out_of_range_is_refused_not_shifted():
    import pytest

    from cds.orders.validation import InvalidRequest

    for nanos in (-1, 1_000_000_000):
        request = check_request(order_time_us=NOW_US)
        request.order_time.nanos = nanos
        with pytest.raises(InvalidRequest, match=r"^order_time: nanos outside 0\.\.999999999$"):
            checked_order(request, NOW_US)


def test_timestamps_round_trip_before_and_after_the_epoch():
    for us in (0, 1, 1_700_000_000_654_321, -1, -1_500_000):
        assert timestamp_us(us_timestamp(us)) == us


def test_order_fields_are_carried_over():
    request = check_request(
        item(
            "L1",
            "EGFR",
            category=3,
            price_item_code="P9",
            sendout_lab_id="LAB",
            consent_signed=True,
        ),
        patient_id="P7",
        institution_id="H2",
        diagnosis_codes=("C34.1", "I10"),
        request_id="req",
        department_id="onc",
        clinician_id="dr",
        encounter_type=3,
    )
    request.patient.first_oncology_visit = True
    request.patient.mdt_record_id = "MDT1"
    order = checked_order(request, NOW_US)
    assert order.patient_id == "P7"
    assert order.institution_id == "H2"
    assert order.request_id == "req"
    assert order.department_id == "onc"
    assert order.clinician_id == "dr"
    assert order.encounter_type is EncounterType.EMERGENCY
    assert order.diagnosis_codes == ("C34.1", "I10")
    assert order.first_oncology_visit is True
    assert order.mdt_record_id == "MDT1"
    (line,) = order.items
    assert line.line_id == "L1"
    assert line.item_code == "EGFR"
    assert line.category is ItemCategory.GENE_TEST
    assert line.price_item_code == "P9"
    assert line.sendout_lab_id == "LAB"
    assert line.consent_signed is True


def test_enum_numbers_unknown_to_this_server_become_unspecified():
    request = check_request(item("1", "K", category=42), encounter_type=17)
    order = checked_order(request, NOW_US)
    assert order.encounter_type is EncounterType.UNSPECIFIED
    assert order.items[0].category is ItemCategory.UNSPECIFIED


OPTION = OverrideOption("CONDITION_CHANGED", "病情变化", False)
STATIC = Reason("CONSENT_REQUIRED", Decision.BLOCK, "需签署知情同意书", source="doc")
PRIOR = PriorResult("R1", "H1", "K", 1_700_000_000_000_000, 1_700_000_000_000_000 + 7 * DAY_US)
WITH_PRIOR = Reason(
    "RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, "已有可互认结果", (PRIOR,), (OPTION,), "src"
)


def _evaluation() -> Evaluation:
    return Evaluation(
        Decision.BLOCK,
        (
            ItemDecision("1", "K", Decision.WARN, (WITH_PRIOR,)),
            ItemDecision("2", "EGFR", Decision.BLOCK, (STATIC,)),
            ItemDecision("3", "NA", Decision.ALLOW, ()),
        ),
    )


def test_response_carries_every_field_of_the_evaluation():
    response = ResponseBuilder().response("d-1", "v7", _evaluation(), ("RESULTS_UNAVAILABLE",))
    assert response.decision_id == "d-1"
    assert response.catalog_version == "v7"
    assert response.decision == types_pb2.DECISION_BLOCK
    assert list(response.degraded) == ["RESULTS_UNAVAILABLE"]
    assert [(i.line_id, i.item_code, i.decision) for i in response.items] == [
        ("1", "K", types_pb2.DECISION_WARN),
        ("2", "EGFR", types_pb2.DECISION_BLOCK),
        ("3", "NA", types_pb2.DECISION_ALLOW),
    ]
    (warn,) = response.items[0].reasons
    assert (warn.code, warn.decision, warn.message, warn.source) == (
        "RECOGNIZABLE_RESULT_EXISTS",
        types_pb2.DECISION_WARN,
        "已有可互认结果",
        "src",
    )
    (prior,) = warn.prior_results
    assert (prior.result_id, prior.institution_id, prior.item_code) == ("R1", "H1", "K")
    assert timestamp_us(prior.reported_at) == PRIOR.reported_at_us
    assert timestamp_us(prior.valid_until) == PRIOR.valid_until_us
    (option,) = warn.override_options
    assert (option.code, option.display, option.requires_comment) == (
        "CONDITION_CHANGED",
        "病情变化",
        False,
    )
    (block,) = response.items[1].reasons
    assert (block.code, block.message, block.source) == (
        "CONSENT_REQUIRED",
        "需签署知情同意书",
        "doc",
    )
    assert len(response.items[2].reasons) == 0


def test_reasons_sharing_a_template_keep_their_own_message_and_prior_results():
    builder = ResponseBuilder()
    other_prior = PriorResult("R2", "H2", "K", 1_600_000_000_000_001, 1_600_000_000_000_002)
    other = WITH_PRIOR._replace(message="另一条", prior_results=(other_prior, PRIOR))
    first = builder.response("d-1", "v", _evaluation(), ())
    second = builder.response(
        "d-2",
        "v",
        Evaluation(Decision.WARN, (ItemDecision("1", "K", Decision.WARN, (other,)),)),
        (),
    )
    third = builder.response("d-1", "v", _evaluation(), ())
    (reason,) = second.items[0].reasons
    assert reason.message == "另一条"
    assert [p.result_id for p in reason.prior_results] == ["R2", "R1"]
    assert timestamp_us(reason.prior_results[0].reported_at) == other_prior.reported_at_us
    assert len(reason.override_options) == 1
    assert first == third


def test_reasons_without_prior_results_are_built_once():
    builder = ResponseBuilder()
    assert builder.reason(STATIC) is builder.reason(STATIC)


def test_reasons_with_prior_results_are_built_per_call():
    builder = ResponseBuilder()
    assert builder.reason(WITH_PRIOR) is not builder.reason(WITH_PRIOR)


def _retention(code: str) -> int:
    return {"K": 7 * DAY_US}.get(code, 30 * DAY_US)


def test_valid_rows_expire_when_their_longest_window_ends():
    rows, errors, rejected, _ = rows_from_results(
        [result("R1", item_code="K"), result("R2", item_code="OTHER", recognition_mark=False)],
        NOW_US,
        _retention,
    )
    assert (errors, rejected) == ([], 0)
    reported = 1_700_000_000_000_000
    assert [(r.patient_id, r.result.result_id, r.expires_at_us) for r in rows] == [
        ("P1", "R1", reported + 7 * DAY_US),
        ("P1", "R2", reported + 30 * DAY_US),
    ]
    assert rows[0].result.recognition_mark is True
    assert rows[1].result.recognition_mark is False
    assert rows[0].result.reported_at_us == reported


def test_bad_rows_are_rejected_by_index_and_field_and_good_rows_kept():
    rows, errors, rejected, _ = rows_from_results(
        [
            result("R1"),
            result(""),
            result("R3", reported_at_us=None),
            result("R4", reported_at_us=NOW_US + FUTURE_SKEW_US + 1),
            result("R5", institution_id="H" * 129),
        ],
        NOW_US,
        _retention,
    )
    assert [r.result.result_id for r in rows] == ["R1"]
    assert rejected == 4
    assert errors == [
        "results[1].result_id: required",
        "results[2].reported_at: required",
        "results[3].reported_at: more than 5 minutes after the server's clock",
        "results[4].institution_id: longer than 128 characters",
    ]


def test_at_most_one_hundred_errors_are_listed_but_every_bad_row_is_counted():
    rows, errors, rejected, _ = rows_from_results(
        [result(f"R{i}", patient_id="") for i in range(150)], NOW_US, _retention
    )
    assert rows == []
    assert rejected == 150
    assert len(errors) == 100
    assert errors[-1] == "results[99].patient_id: required"


def test_rows_past_their_expiry_are_counted_expired_and_still_handed_to_the_store():
    reported = 1_700_000_000_000_000
    ends = reported + 7 * DAY_US  # K's retention in _retention
    for now, expired in [(ends - 1, 0), (ends, 1), (ends + DAY_US, 1)]:
        out = rows_from_results([result("R1", item_code="K")], now, _retention)
        assert (out.rejected, out.expired) == (0, expired), now
        # The store needs it: an expired row removes a stored row with its key.
        assert [r.expires_at_us for r in out.rows] == [ends]


def test_reported_at_outside_the_timestamp_range_is_rejected_naming_the_field():
    rows = [result(f"R{i}") for i in range(5)]
    rows[1].reported_at.seconds = -(2**63)
    rows[2].reported_at.nanos = -1
    rows[3].reported_at.nanos = 10**9
    rows[4].reported_at.seconds = -62_135_596_801
    out = rows_from_results(rows, NOW_US, _retention)
    assert [r.result.result_id for r in out.rows] == ["R0"]
    assert out.rejected == 4
    assert out.errors == [
        "results[1].reported_at: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z",
        "results[2].reported_at: nanos outside 0..999999999",
        "results[3].reported_at: nanos outside 0..999999999",
        "results[4].reported_at: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z",
    ]


def test_reported_at_at_the_start_of_the_timestamp_range_is_a_valid_expired_row():
    first = result("R1")
    first.reported_at.seconds = -62_135_596_800
    first.reported_at.nanos = 999_999_999
    out = rows_from_results([first], NOW_US, _retention)
    assert (out.rejected, out.expired, len(out.rows)) == (0, 1, 1)


def test_withdraw_refs_skip_pairs_that_cannot_name_a_result():
    request = result_feed_pb2.WithdrawResultsRequest(
        results=[
            types_pb2.ResultRef(patient_id="P1", result_id="R1"),
            types_pb2.ResultRef(patient_id="", result_id="R2"),
            types_pb2.ResultRef(patient_id="P3", result_id=""),
        ]
    )
    assert refs_from_withdraw(request) == [("P1", "R1")]
