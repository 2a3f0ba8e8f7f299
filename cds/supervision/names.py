"""What a code is called, from the catalogue when one is given (codes are always kept)."""

from __future__ import annotations

from typing import Any

from cds.catalog.snapshot import Snapshot

# The reason codes in the QC office's words (the codes stay beside them).
REASON_LABELS = {
    "RECOGNIZABLE_RESULT_EXISTS": "已有可互认结果",
    "RECOGNITION_EXEMPT_EMERGENCY": "急诊豁免",
    "DUPLICATE_IN_REQUEST": "同一医嘱重复开立",
    "GENE_TEST_NOT_IN_CATALOGUE": "不在推荐目录",
    "GENE_TEST_NOT_PRICED": "无获批收费项目",
    "PRICE_ITEM_MISMATCH": "收费项目不符",
    "GENE_TEST_INDICATION_MISMATCH": "适应证不符",
    "MDT_REQUIRED": "初诊未经MDT",
    "CONSENT_REQUIRED": "未签知情同意",
    "SENDOUT_LAB_NOT_APPROVED": "外送机构未获批准",
    "SENDOUT_LAB_QUALIFICATION_EXPIRED": "外送机构资质过期",
    "SENDOUT_AVAILABLE_IN_HOUSE": "本院可做仍外送",
    "GENE_TEST_REPEATED": "重复检测",
}


class Names:
    def __init__(self, catalog: Snapshot | None) -> None:
        self.catalog = catalog
        c = catalog
        self._institutions = {k: v.name for k, v in c.institutions.items()} if c else {}
        items: dict[str, str] = {}
        if c is not None:
            items.update({k: v.name for k, v in c.recognition_items.items()})
            items.update({k: v.name for k, v in c.gene_tests.items()})
        self._items = items
        self._labs = {k: v.name for k, v in c.sendout_labs.items()} if c else {}
        self._overrides = {k: v.display for k, v in c.override_reasons.items()} if c else {}

    def institution(self, code: str) -> str:
        return self._institutions.get(code, "")

    def item(self, code: str) -> str:
        return self._items.get(code, "")

    def lab(self, code: str) -> str:
        return self._labs.get(code, "")

    def override(self, code: str) -> str:
        if code == "":
            return "（无可选理由的警示，仅填写说明）"
        return self._overrides.get(code, "")

    @staticmethod
    def reason(code: str) -> str:
        return REASON_LABELS.get(code, "")

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report: the names the catalogue gave, by kind and code."""
        return {
            "institutions": self._institutions,
            "items": self._items,
            "labs": self._labs,
            "override_reasons": self._overrides,
        }
