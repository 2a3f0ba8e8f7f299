"""Bad Check requests are refused with the field named exactly as the contract lists it."""

from __future__ import annotations

import pytest

from cds.domain import BACKDATE_LIMIT_US
from cds.orders.validation import (
    FUTURE_SKEW_US,
    TIMESTAMP_MAX_NANOS,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    InvalidRequest,
    result_error,
)
from cds.service.convert import checked_order
from cds.v1 import order_check_pb2
from tests.support.protos import check_request, item

NOW_US = 1_750_000_000_000_000
LONG = "x" * 129


def request_error(request: order_check_pb2.CheckRequest) -> str | None:
    """What the Check handler refuses the request with, or None."""
    try:
        checked_order(request, NOW_US)
    except InvalidRequest as e:
        return str(e)
    return None


def test_a_well_formed_request_passes():
    request = check_request(item("1", "K"), item("2", "NA"), diagnosis_codes=("C34.1",))
    assert request_error(request) is None


def test_strings_of_exactly_128_characters_pass():
    s = "y" * 128
    request = check_request(
        item(s, s, price_item_code=s, sendout_lab_id=s),
        patient_id=s,
        institution_id=s,
        request_id=s,
        department_id=s,
        clinician_id=s,
        diagnosis_codes=(s,),
    )
    assert request_error(request) is None


def test_one_hundred_items_and_fifty_diagnoses_pass():
    request = check_request(*(item(str(i), "K") for i in range(100)), diagnosis_codes=("C34",) * 50)
    assert request_error(request) is None


def _without_items() -> order_check_pb2.CheckRequest:
    request = check_request()
    del request.items[:]
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (check_request(patient_id=""), "patient.patient_id: required"),
        (check_request(institution_id=""), "institution_id: required"),
        (_without_items(), "items: "),
        (check_request(*(item(str(i)) for i in range(101))), "items: at most 100"),
        (check_request(item("")), "items[0].line_id: required"),
        (check_request(item("1"), item("2"), item("1")), "items[2].line_id: repeats items[0]"),
        (check_request(item("1"), item("2", "")), "items[1].item_code: required"),
        (check_request(diagnosis_codes=("C34",) * 51), "patient.diagnosis_codes: at most 50"),
        (check_request(patient_id=LONG), "patient.patient_id: longer than 128"),
        (check_request(institution_id=LONG), "institution_id: longer than 128"),
        (check_request(request_id=LONG), "request_id: longer than 128"),
        (check_request(department_id=LONG), "department_id: longer than 128"),
        (check_request(clinician_id=LONG), "clinician_id: longer than 128"),
        (check_request(diagnosis_codes=("C34", LONG)), "patient.diagnosis_codes[1]: longer"),
        (check_request(item(LONG)), "items[0].line_id: longer than 128"),
        (check_request(item("1"), item("2", LONG)), "items[1].item_code: longer than 128"),
        (check_request(item("1", price_item_code=LONG)), "items[0].price_item_code: longer"),
        (check_request(item("1", sendout_lab_id=LONG)), "items[0].sendout_lab_id: longer"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_request_names_the_field(request_, field):
    error = request_error(request_)
    assert error is not None
    assert error.startswith(field)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        # the order's own fields before any line, in the contract's order
        (check_request(item(""), clinician_id=LONG), "clinician_id: longer"),
        (check_request(item("1", ""), patient_id=""), "patient.patient_id: required"),
        (check_request(institution_id="", patient_id=LONG), "institution_id: required"),
        (check_request(item("1"), item(LONG), diagnosis_codes=(LONG,)), "patient.diagnosis"),
        # lines in order, each line's fields in order, repeats last
        (check_request(item("1", price_item_code=LONG), item("")), "items[0].price_item_code"),
        (check_request(item("1"), item("1"), item("2", "")), "items[2].item_code: required"),
        (check_request(item(LONG, "")), "items[0].item_code: required"),
        (check_request(item("1"), item("2", LONG), item("1")), "items[1].item_code: longer"),
        (check_request(*(item(str(i)) for i in range(101)), patient_id=""), "items: at most"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_of_several_problems_the_first_in_the_contracts_order_is_named(request_, field):
    error = request_error(request_)
    assert error is not None
    assert error.startswith(field)


def test_mdt_record_id_longer_than_128_is_refused():
    request = check_request()
    request.patient.mdt_record_id = LONG
    assert request_error(request) == "patient.mdt_record_id: longer than 128 characters"


def test_long_strings_are_counted_in_characters_not_bytes():
    # 128 Chinese characters are 384 UTF-8 bytes and still within the limit.
    assert request_error(check_request(department_id="科" * 128)) is None


def _result_error(**overrides):
    fields = {
        "result_id": "R1",
        "patient_id": "P1",
        "item_code": "K",
        "institution_id": "H1",
        "reported_at_us": NOW_US,
        "now_us": NOW_US,
    }
    fields.update(overrides)
    us = fields.pop("reported_at_us")
    if "reported_at" not in fields:
        fields["reported_at"] = None if us is None else (us // 1_000_000, us % 1_000_000 * 1000)
    return result_error(**fields)


@pytest.mark.parametrize("field", ["result_id", "patient_id", "item_code", "institution_id"])
def test_result_missing_a_required_string_is_refused(field):
    assert _result_error(**{field: ""}) == f"{field}: required"


@pytest.mark.parametrize("field", ["result_id", "patient_id", "item_code", "institution_id"])
def test_result_with_a_string_over_128_characters_is_refused(field):
    assert _result_error(**{field: LONG}) == f"{field}: longer than 128 characters"


def test_an_order_time_a_day_before_the_clock_is_accepted_to_the_microsecond():
    at_limit = NOW_US - BACKDATE_LIMIT_US
    assert checked_order(check_request(order_time_us=at_limit), NOW_US).order_time_us == at_limit


def test_an_order_time_more_than_a_day_before_the_clock_is_refused_naming_order_time():
    request = check_request(order_time_us=NOW_US - BACKDATE_LIMIT_US - 1)
    assert request_error(request) == "order_time: more than 24 hours before the server's clock"


def test_an_order_time_up_to_five_minutes_ahead_of_the_clock_is_accepted():
    assert request_error(check_request(order_time_us=NOW_US + FUTURE_SKEW_US)) is None


def test_an_order_time_more_than_five_minutes_ahead_of_the_clock_is_refused():
    request = check_request(order_time_us=NOW_US + FUTURE_SKEW_US + 1)
    assert request_error(request) == "order_time: more than 5 minutes after the server's clock"


def test_result_without_reported_at_is_refused():
    assert _result_error(reported_at_us=None) == "reported_at: required"


def test_result_reported_up_to_five_minutes_ahead_of_the_clock_is_accepted():
    assert _result_error(reported_at_us=NOW_US + FUTURE_SKEW_US) is None


def test_result_reported_more_than_five_minutes_ahead_of_the_clock_is_refused():
    error = _result_error(reported_at_us=NOW_US + FUTURE_SKEW_US + 1)
    assert error is not None
    assert error.startswith("reported_at: more than 5 minutes")


@pytest.mark.parametrize("table", ["ORDER", "LINE", "FEEDBACK", "RESULT"])
def test_the_fast_check_and_the_wording_come_from_one_table(table):
    from cds.orders import validation

    strings = getattr(validation, table)
    good = ["x" for _ in strings.fields]
    assert strings.ok(good) and strings.error(good) is None
    for i, f in enumerate(strings.fields):
        at_limit = list(good)
        at_limit[i] = "y" * f.max_chars
        assert strings.ok(at_limit), f.name
        too_long = list(good)
        too_long[i] = "y" * (f.max_chars + 1)
        assert not strings.ok(too_long)
        assert strings.error(too_long, "p.") == f"p.{f.name}: longer than {f.max_chars} characters"
        empty = list(good)
        empty[i] = ""
        if f.required:
            assert not strings.ok(empty)
            assert strings.error(empty) == f"{f.name}: required"
        else:
            assert strings.ok(empty) and strings.error(empty) is None


_SECONDS_RANGE = "reported_at: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z"
_NANOS_RANGE = "reported_at: nanos outside 0..999999999"


@pytest.mark.parametrize(
    ("seconds", "nanos", "error"),
    [
        (-(2**63), 0, _SECONDS_RANGE),
        (TIMESTAMP_MIN_SECONDS - 1, 0, _SECONDS_RANGE),
        (TIMESTAMP_MAX_SECONDS + 1, 0, _SECONDS_RANGE),
        (2**63 - 1, 0, _SECONDS_RANGE),
        (NOW_US // 1_000_000, -1, _NANOS_RANGE),
        (NOW_US // 1_000_000, 10**9, _NANOS_RANGE),
        (NOW_US // 1_000_000, -(2**31), _NANOS_RANGE),
    ],
)
def test_result_with_a_reported_at_outside_the_timestamp_range_is_refused(seconds, nanos, error):
    assert _result_error(reported_at=(seconds, nanos)) == error


def test_result_reported_at_the_ends_of_the_timestamp_range_is_not_malformed():
    assert _result_error(reported_at=(TIMESTAMP_MIN_SECONDS, 0)) is None
    assert _result_error(reported_at=(NOW_US // 1_000_000, TIMESTAMP_MAX_NANOS)) is None
