"""Compact builders for Snapshots, orders and results, so a test states only what it is about.

Defaults describe a small, realistic Fujian setting: three hospitals (two in one
medical group), potassium and a chest CT as recognition items, one EGFR test, one
send-out lab, the national override reasons. Times are given as local wall-clock
strings in Asia/Shanghai and become µs since the epoch, as the engine sees them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from zoneinfo import ZoneInfo

from cds.catalog.snapshot import (
    DEFAULT_TIMEZONE,
    GeneTest,
    Institution,
    RecognitionItem,
    SendoutLab,
    Snapshot,
    end_of_day_us,
)
from cds.domain import (
    US_PER_DAY,
    Decision,
    EncounterType,
    ItemCategory,
    Order,
    OrderItem,
    OverrideOption,
    StoredResult,
)
from cds.results.base import PatientResults

ZONE = ZoneInfo(DEFAULT_TIMEZONE)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DAY = US_PER_DAY
US = 1

# Hospitals: A and B share group "fz-yilianti"; C is in another group; X is not catalogued.
HOSP_A = "H-A"
HOSP_B = "H-B"
HOSP_C = "H-C"
HOSP_UNKNOWN = "H-X"

POTASSIUM = "LAB-K"
CHEST_CT = "EXAM-CT-CHEST"
EGFR = "GENE-EGFR"
EGFR_PRICE = "FJ-EGFR-001"
LAB_1 = "LAB-OUT-1"


def at(local: str) -> int:
    """'2025-03-01 08:00[:ss[.ffffff]]' in Asia/Shanghai -> µs since the epoch."""
    aware = dt.datetime.fromisoformat(local).replace(tzinfo=ZONE)
    return (aware - _EPOCH) // dt.timedelta(microseconds=1)


def institution(id: str, name: str | None = None, *groups: str) -> Institution:
    return Institution(id, name or f"{id}医院", "三级甲等", frozenset(groups))


DEFAULT_INSTITUTIONS = (
    institution(HOSP_A, "福建省立医院", "fz-yilianti"),
    institution(HOSP_B, "福州市第一医院", "fz-yilianti"),
    institution(HOSP_C, "厦门大学附属第一医院", "xm-yilianti"),
)


def recognition_item(
    code: str = POTASSIUM,
    name: str = "血清钾",
    *,
    validity_days: int = 7,
    scope: str = "PROVINCE",
    category: ItemCategory = ItemCategory.LAB,
    source: str = "",
) -> RecognitionItem:
    return RecognitionItem(code, name, category, validity_days, scope, source)


DEFAULT_RECOGNITION = (
    recognition_item(),
    recognition_item(
        CHEST_CT, "胸部CT平扫", validity_days=30, scope="GROUP", category=ItemCategory.EXAM
    ),
)


def gene_test(
    code: str = EGFR,
    name: str = "EGFR基因突变检测",
    *,
    indications: Iterable[str] = ("C34",),
    price_item_code: str | None = EGFR_PRICE,
    requires_mdt_first_visit: bool = True,
    requires_consent: bool = True,
    in_house: Iterable[str] = (),
    repeat_interval_days: int | None = None,
    source: str = "CSCO非小细胞肺癌诊疗指南（2024）",
) -> GeneTest:
    return GeneTest(
        code=code,
        name=name,
        genes=("EGFR",),
        method="PCR",
        indications=tuple(indications),
        price_item_code=price_item_code,
        price_fen=None if price_item_code is None else 180000,
        requires_mdt_first_visit=requires_mdt_first_visit,
        requires_consent=requires_consent,
        in_house_institutions=frozenset(in_house),
        repeat_interval_days=repeat_interval_days,
        source=source,
    )


def sendout_lab(
    id: str = LAB_1,
    name: str = "示例医学检验实验室",
    *,
    valid_until: str = "2025-12-31",
    approved: Iterable[tuple[str, str]] = ((HOSP_A, EGFR),),
) -> SendoutLab:
    day = dt.date.fromisoformat(valid_until)
    return SendoutLab(id, name, day, end_of_day_us(day, ZONE), frozenset(approved))


NATIONAL_OVERRIDES = (
    OverrideOption("CONDITION_CHANGED", "病情变化，原结果不能反映当前病情", False),
    OverrideOption("RAPID_CHANGE", "指标随病程进展变化较快", False),
    OverrideOption("MAJOR_PROCEDURE", "手术、输血等重大医疗措施前", False),
    OverrideOption("EMERGENCY", "急诊、急救等抢救患者", False),
    OverrideOption("ASSESSMENT", "司法、伤残及病退等鉴定", False),
    OverrideOption("OTHER", "其他情形", True),
)


def make_snapshot(
    *,
    institutions: Iterable[Institution] = DEFAULT_INSTITUTIONS,
    recognition_items: Iterable[RecognitionItem] = DEFAULT_RECOGNITION,
    gene_tests: Iterable[GeneTest] = (gene_test(),),
    sendout_labs: Iterable[SendoutLab] = (sendout_lab(),),
    override_reasons: Iterable[OverrideOption] = NATIONAL_OVERRIDES,
    severity: Mapping[str, Decision] | None = None,
    version: str = "test-1",
    messages: Mapping[str, str] | None = None,
    silent_codes: Iterable[str] = (),
) -> Snapshot:
    return Snapshot.create(
        version=version,
        effective_date="2025-01-01",
        institutions=institutions,
        recognition_items=recognition_items,
        gene_tests=gene_tests,
        sendout_labs=sendout_labs,
        override_reasons=override_reasons,
        severity=severity,
        messages=messages,
        silent_codes=silent_codes,
    )


def item(
    item_code: str = POTASSIUM,
    line_id: str = "1",
    *,
    category: ItemCategory | None = None,
    price_item_code: str = "",
    sendout_lab_id: str = "",
    consent_signed: bool = True,
) -> OrderItem:
    """A line; the category defaults to what the code suggests (GENE-* is a gene test)."""
    if category is None:
        if item_code.startswith("GENE"):
            category = ItemCategory.GENE_TEST
        elif item_code.startswith("EXAM"):
            category = ItemCategory.EXAM
        else:
            category = ItemCategory.LAB
    return OrderItem(line_id, item_code, category, price_item_code, sendout_lab_id, consent_signed)


def lines(*codes: str) -> tuple[OrderItem, ...]:
    """Lines with ids '1', '2', ... for the given codes."""
    return tuple(item(code, str(n)) for n, code in enumerate(codes, 1))


def make_order(
    *items: OrderItem,
    institution_id: str = HOSP_A,
    encounter_type: EncounterType = EncounterType.OUTPATIENT,
    diagnosis_codes: Iterable[str] = ("C34.1",),
    first_oncology_visit: bool = False,
    mdt_record_id: str = "",
    order_time_us: int | None = None,
) -> Order:
    return Order(
        request_id="req-1",
        institution_id=institution_id,
        department_id="dept-1",
        clinician_id="doc-1",
        encounter_type=encounter_type,
        patient_id="pat-1",
        diagnosis_codes=tuple(diagnosis_codes),
        first_oncology_visit=first_oncology_visit,
        mdt_record_id=mdt_record_id,
        items=items or (item(),),
        order_time_us=at("2025-03-10 09:00") if order_time_us is None else order_time_us,
    )


def result(
    result_id: str,
    reported_at_us: int,
    *,
    item_code: str = POTASSIUM,
    institution_id: str = HOSP_A,
    mark: bool = False,
) -> StoredResult:
    return StoredResult(result_id, item_code, institution_id, reported_at_us, mark)


def patient_results(*results: StoredResult) -> PatientResults:
    """Group by code in the given order (tests choose the order, to probe the engine's)."""
    by_code: dict[str, list[StoredResult]] = {}
    for r in results:
        by_code.setdefault(r.item_code, []).append(r)
    return {code: tuple(rows) for code, rows in by_code.items()}
