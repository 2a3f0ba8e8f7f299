"""Send-out of gene tests: approved labs, qualification date in Asia/Shanghai, in-house tests."""

from __future__ import annotations

from cds.domain import Decision, ReasonCode
from cds.rules.engine import Engine
from tests.support.snapshots import (
    EGFR,
    HOSP_A,
    HOSP_B,
    LAB_1,
    at,
    gene_test,
    item,
    make_order,
    make_snapshot,
    sendout_lab,
)

C = ReasonCode
KRAS = "GENE-KRAS"
SNAP = make_snapshot(
    gene_tests=[
        gene_test(in_house=[HOSP_B]),
        gene_test(KRAS, "KRAS基因突变检测", indications=()),
    ],
    sendout_labs=[sendout_lab(valid_until="2025-12-31", approved=[(HOSP_A, EGFR), (HOSP_B, EGFR)])],
)
ENGINE = Engine(SNAP)


def sent(code=EGFR, lab=LAB_1, *, institution_id=HOSP_A, when="2025-03-10 09:00"):
    order = make_order(
        item(code, sendout_lab_id=lab), institution_id=institution_id, order_time_us=at(when)
    )
    return ENGINE.evaluate(order, {}).items[0]


def codes(line):
    return [r.code for r in line.reasons]


def test_approved_lab_with_valid_qualification_is_allowed():
    assert sent().reasons == ()


def test_in_house_line_gets_no_sendout_reason():
    assert sent(lab="").reasons == ()


def test_unknown_lab_is_not_approved_and_has_no_qualification_to_check():
    line = sent(lab="LAB-NOWHERE", when="2030-01-01 00:00")
    assert codes(line) == [C.SENDOUT_LAB_NOT_APPROVED]
    assert line.decision == Decision.BLOCK
    assert "LAB-NOWHERE" in line.reasons[0].message


def test_lab_not_approved_for_this_institution():
    line = sent(institution_id="H-C")
    assert codes(line) == [C.SENDOUT_LAB_NOT_APPROVED]
    assert "示例医学检验实验室" in line.reasons[0].message


def test_lab_not_approved_for_this_test():
    line = sent(KRAS)
    assert codes(line) == [C.SENDOUT_LAB_NOT_APPROVED]
    assert "KRAS基因突变检测" in line.reasons[0].message


def test_qualification_covers_its_last_day_to_the_last_microsecond_local_time():
    assert sent(when="2025-12-31 23:59:59.999999").reasons == ()


def test_qualification_expired_from_the_first_instant_of_the_next_local_day():
    line = sent(when="2026-01-01 00:00")
    assert codes(line) == [C.SENDOUT_LAB_QUALIFICATION_EXPIRED]
    assert line.decision == Decision.BLOCK
    assert "2025-12-31" in line.reasons[0].message


def test_unapproved_and_expired_lab_gets_both_reasons():
    line = sent(KRAS, when="2026-02-01 08:00")
    assert codes(line) == [C.SENDOUT_LAB_NOT_APPROVED, C.SENDOUT_LAB_QUALIFICATION_EXPIRED]


def test_sending_out_a_test_the_institution_performs_warns():
    line = sent(institution_id=HOSP_B)
    assert codes(line) == [C.SENDOUT_AVAILABLE_IN_HOUSE]
    assert line.decision == Decision.WARN
    assert "EGFR基因突变检测" in line.reasons[0].message


def test_in_house_warning_also_accompanies_an_unknown_lab():
    line = sent(lab="LAB-NOWHERE", institution_id=HOSP_B)
    assert codes(line) == [C.SENDOUT_LAB_NOT_APPROVED, C.SENDOUT_AVAILABLE_IN_HOUSE]


def test_test_performed_in_house_and_kept_in_house_is_fine():
    assert sent(lab="", institution_id=HOSP_B).reasons == ()
