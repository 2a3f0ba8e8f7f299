"""The catalogue's wording: every placeholder renders, bad templates are refused whole."""

from __future__ import annotations

import orjson
import pytest

from cds.catalog.load import CatalogError, parse_catalog
from cds.catalog.messages import BUILT_IN, PLACEHOLDERS
from cds.domain import EncounterType, ReasonCode
from cds.rules.engine import Engine
from tests.support.snapshots import (
    DAY,
    EGFR,
    HOSP_A,
    HOSP_B,
    HOSP_C,
    LAB_1,
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
NTRK = "GENE-NTRK"
OLD_LAB = "LAB-OLD"

GENE_TESTS = (
    gene_test(in_house=(HOSP_B,), repeat_interval_days=180),
    gene_test(NTRK, "NTRK融合基因检测", indications=(), price_item_code=None),
)
LABS = (
    sendout_lab(),
    sendout_lab(OLD_LAB, "旧检测所", valid_until="2025-03-01", approved=((HOSP_A, EGFR),)),
)

# code -> (the order's lines and settings, the patient's results, the values expected)
SCENARIOS = {
    C.RECOGNIZABLE_RESULT_EXISTS: (
        {"items": (item(POTASSIUM),)},
        (result("k1", at("2025-03-09 10:00"), institution_id=HOSP_B, mark=True),),
        {"item_code": POTASSIUM, "item_name": "血清钾", "validity_days": "7", "count": "1",
         "latest_date": "2025-03-09", "latest_institution": "福州市第一医院"},
    ),
    C.RECOGNITION_EXEMPT_EMERGENCY: (
        {"items": (item(POTASSIUM),), "encounter_type": EncounterType.EMERGENCY},
        (result("k1", ORDER_TIME - DAY), result("k2", ORDER_TIME - 3 * DAY)),
        {"item_code": POTASSIUM, "item_name": "血清钾", "validity_days": "7", "count": "2",
         "latest_date": "2025-03-09", "latest_institution": "福建省立医院"},
    ),
    C.DUPLICATE_IN_REQUEST: (
        {"items": lines(POTASSIUM, POTASSIUM)},
        (),
        {"item_code": POTASSIUM, "item_name": "血清钾", "first_line_id": "1"},
    ),
    C.GENE_TEST_NOT_IN_CATALOGUE: (
        {"items": (item("GENE-UNLISTED"),)},
        (),
        {"item_code": "GENE-UNLISTED"},
    ),
    C.GENE_TEST_NOT_PRICED: (
        {"items": (item(NTRK),)},
        (),
        {"item_code": NTRK, "item_name": "NTRK融合基因检测"},
    ),
    C.PRICE_ITEM_MISMATCH: (
        {"items": (item(EGFR, price_item_code="OTHER-PRICE"),)},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测", "price_item_code": "FJ-EGFR-001"},
    ),
    C.GENE_TEST_INDICATION_MISMATCH: (
        {"items": (item(EGFR),), "diagnosis_codes": ("E11.9",)},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测", "indications": "C34"},
    ),
    C.MDT_REQUIRED: (
        {"items": (item(EGFR),), "first_oncology_visit": True},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测"},
    ),
    C.CONSENT_REQUIRED: (
        {"items": (item(EGFR, consent_signed=False),)},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测"},
    ),
    C.SENDOUT_LAB_NOT_APPROVED: (
        {"items": (item(EGFR, sendout_lab_id=LAB_1),), "institution_id": HOSP_C},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测", "lab_id": LAB_1,
         "lab_name": "示例医学检验实验室"},
    ),
    C.SENDOUT_LAB_QUALIFICATION_EXPIRED: (
        {"items": (item(EGFR, sendout_lab_id=OLD_LAB),)},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测", "lab_id": OLD_LAB,
         "lab_name": "旧检测所", "qualification_date": "2025-03-01"},
    ),
    C.SENDOUT_AVAILABLE_IN_HOUSE: (
        {"items": (item(EGFR, sendout_lab_id=LAB_1),), "institution_id": HOSP_B},
        (),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测"},
    ),
    C.GENE_TEST_REPEATED: (
        {"items": (item(EGFR),)},
        (result("g1", at("2025-02-28 16:30"), item_code=EGFR, institution_id=HOSP_C),),
        {"item_code": EGFR, "item_name": "EGFR基因突变检测", "repeat_interval_days": "180",
         "count": "1", "latest_date": "2025-02-28", "latest_institution": "厦门大学附属第一医院"},
    ),
}  # fmt: skip


def reason_of(code, messages=None):
    order_kw, results, _ = SCENARIOS[code]
    engine = Engine(make_snapshot(gene_tests=GENE_TESTS, sendout_labs=LABS, messages=messages))
    order = make_order(*order_kw.pop("items"), order_time_us=ORDER_TIME, **order_kw)
    order_kw["items"] = order.items  # SCENARIOS is shared by every test
    evaluation = engine.evaluate(order, patient_results(*results))
    found = [r for i in evaluation.items for r in i.reasons if r.code == code]
    assert found, f"{code} did not fire"
    return found[-1]


def test_every_reason_code_has_a_scenario_and_a_built_in_template():
    assert set(SCENARIOS) == set(ReasonCode) == set(PLACEHOLDERS) == set(BUILT_IN)


@pytest.mark.parametrize("code", list(SCENARIOS), ids=str)
def test_a_catalogue_template_renders_each_placeholder_of_its_code(code):
    names = PLACEHOLDERS[code]
    template = "；".join(f"{name}={{{name}}}" for name in names)
    expected = SCENARIOS[code][2]
    assert set(expected) == set(names)
    message = reason_of(code, {code: template}).message
    assert message == "；".join(f"{name}={expected[name]}" for name in names)


@pytest.mark.parametrize("code", list(SCENARIOS), ids=str)
def test_without_a_catalogue_template_a_code_keeps_its_built_in_text(code):
    other = C.CONSENT_REQUIRED if code != C.CONSENT_REQUIRED else C.MDT_REQUIRED
    reworded = reason_of(code, {other: "改写的文字"})
    assert reworded.message == reason_of(code).message
    assert "改写的文字" not in reworded.message


def test_the_built_in_recognition_text_names_the_item_window_count_date_and_institution():
    assert reason_of(C.RECOGNIZABLE_RESULT_EXISTS).message == (
        "「血清钾」有 1 份可互认的既往结果（互认有效期 7 天），"
        "最近一次为 2025-03-09（福州市第一医院），请优先互认；如需复查，请选择不予互认的理由。"
    )


def test_a_template_without_placeholders_and_with_literal_braces_is_shown_as_written():
    message = reason_of(C.CONSENT_REQUIRED, {C.CONSENT_REQUIRED: "请签署{{知情同意书}}"}).message
    assert message == "请签署{知情同意书}"


def test_a_placeholder_may_appear_twice_or_not_at_all():
    template = "{latest_date}、{latest_date}"
    message = reason_of(C.RECOGNIZABLE_RESULT_EXISTS, {C.RECOGNIZABLE_RESULT_EXISTS: template})
    assert message.message == "2025-03-09、2025-03-09"


def test_an_unknown_lab_fills_lab_name_with_the_id_as_ordered():
    template = {C.SENDOUT_LAB_NOT_APPROVED: "{lab_id}/{lab_name}"}
    engine = Engine(make_snapshot(messages=template))
    order = make_order(item(EGFR, sendout_lab_id="LAB-NOBODY"), order_time_us=ORDER_TIME)
    (reason,) = [r for r in engine.evaluate(order, {}).items[0].reasons if r.code in template]
    assert reason.message == "LAB-NOBODY/LAB-NOBODY"


# --------------------------------------------------------------------------- refused


def doc(messages):
    return orjson.dumps({"version": "m-1", "messages": messages})


BAD = {
    "unknown code": (
        {"RESULT_EXISTS": "x"},
        "$.messages.RESULT_EXISTS: not a reason code of the contract",
    ),
    "unknown placeholder": (
        {"CONSENT_REQUIRED": "「{item_name}」须在 {lab_name} 签字"},
        "$.messages.CONSENT_REQUIRED: unknown placeholder {lab_name}; CONSENT_REQUIRED offers "
        "{item_code}, {item_name}",
    ),
    "placeholder of another code": (
        {"MDT_REQUIRED": "{count} 份"},
        "$.messages.MDT_REQUIRED: unknown placeholder {count};",
    ),
    "unclosed brace": ({"MDT_REQUIRED": "「{item_name」"}, "$.messages.MDT_REQUIRED: not a "),
    "stray closing brace": ({"MDT_REQUIRED": "须 MDT}"}, "$.messages.MDT_REQUIRED: not a "),
    "positional placeholder": ({"MDT_REQUIRED": "{}"}, "$.messages.MDT_REQUIRED: unknown "),
    "attribute": (
        {"MDT_REQUIRED": "{item_name.__class__}"},
        "$.messages.MDT_REQUIRED: unknown placeholder {item_name.__class__}",
    ),
    "index": ({"MDT_REQUIRED": "{item_name[0]}"}, "$.messages.MDT_REQUIRED: unknown placeholder"),
    "format spec": (
        {"GENE_TEST_REPEATED": "{count:>3}"},
        "$.messages.GENE_TEST_REPEATED: {count:>3}: format specs and conversions are not supported",
    ),
    "conversion": (
        {"GENE_TEST_REPEATED": "{count!r}"},
        "$.messages.GENE_TEST_REPEATED: {count!r}: format specs and conversions are not supported",
    ),
    "empty": ({"MDT_REQUIRED": ""}, "$.messages.MDT_REQUIRED: "),
    "not text": ({"MDT_REQUIRED": 3}, "$.messages.MDT_REQUIRED: expected string, got number"),
    "too long": ({"MDT_REQUIRED": "长" * 501}, "$.messages.MDT_REQUIRED: "),
    "not an object": (["MDT_REQUIRED"], "$.messages: expected object, got array"),
}  # fmt: skip


@pytest.mark.parametrize(("messages", "error"), BAD.values(), ids=BAD.keys())
def test_a_bad_template_refuses_the_catalogue_naming_its_json_path(messages, error):
    with pytest.raises(CatalogError) as refused:
        parse_catalog(doc(messages))
    assert len(refused.value.errors) == 1, refused.value.errors
    assert refused.value.errors[0].startswith(error)


def test_one_bad_template_among_good_ones_refuses_the_whole_catalogue_and_names_only_it():
    messages = {"CONSENT_REQUIRED": "请签字 {item_name}", "MDT_REQUIRED": "{bogus}"}
    with pytest.raises(CatalogError) as refused:
        parse_catalog(doc(messages))
    assert [e.split(":")[0] for e in refused.value.errors] == ["$.messages.MDT_REQUIRED"]


def test_good_templates_are_kept_by_the_snapshot_by_code():
    snapshot = parse_catalog(doc({"CONSENT_REQUIRED": "请签字 {item_name}"}))
    assert dict(snapshot.messages) == {"CONSENT_REQUIRED": "请签字 {item_name}"}
