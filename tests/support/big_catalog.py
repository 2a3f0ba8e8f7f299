"""A valid catalogue of any size, for reload-speed measurements and tests.

Issue 4 asks that a 10,000-entry catalogue reload in < 150 ms; the shipped catalogue is
a few dozen entries, so the size has to be synthesised. Entries are shaped like the real
ones (every optional key present, several approvals per lab) so validation does the same
work per entry as on a provincial list.
"""

from __future__ import annotations

from typing import Any

import orjson

REASONS = (
    "CONDITION_CHANGED",
    "RAPID_CHANGE",
    "MAJOR_PROCEDURE",
    "EMERGENCY",
    "FORENSIC_ASSESSMENT",
    "OTHER",
)


def big_catalog(entries: int = 10_000, *, version: str = "big-1") -> dict[str, Any]:
    """A catalogue with about ``entries`` entries across all lists (60% recognition items,
    25% gene tests, 10% institutions, 5% send-out labs, plus the six override reasons)."""
    n_inst = max(2, entries // 10)
    n_labs = max(1, entries // 20)
    n_genes = max(1, entries // 4)
    n_items = max(1, entries - n_inst - n_labs - n_genes - len(REASONS))
    institutions = [
        {
            "id": f"INST{i:05d}",
            "name": f"医院{i}",
            "level": "三级甲等" if i % 3 == 0 else "二级",
            "groups": [f"GROUP{i % 50:02d}"],
            "source": "synthetic",
        }
        for i in range(n_inst)
    ]
    items = [
        {
            "code": f"ITEM{i:06d}",
            "name": f"检验项目{i}",
            "category": "LAB" if i % 4 else "EXAM",
            "validity_days": 7 + i % 60,
            "scope": "PROVINCE" if i % 5 else "GROUP",
            "source": "synthetic",
        }
        for i in range(n_items)
    ]
    genes = [
        {
            "code": f"GENE{i:05d}",
            "name": f"基因检测{i}",
            "genes": ["EGFR", "ALK", "ROS1"],
            "method": "NGS",
            "indications": ["C34", "C18"],
            "price_item_code": None if i % 10 == 0 else f"PRICE{i:05d}",
            "price_fen": None if i % 10 == 0 else 100_000 + i,
            "requires_mdt_first_visit": True,
            "requires_consent": True,
            "in_house_institutions": [f"INST{i % n_inst:05d}"],
            "repeat_interval_days": 180 if i % 2 else None,
            "source": "synthetic",
        }
        for i in range(n_genes)
    ]
    labs = [
        {
            "id": f"LAB{i:04d}",
            "name": f"第三方实验室{i}",
            "qualification_valid_until": "2030-12-31" if i % 7 else "2024-06-30",
            "approved": [
                {
                    "institution_id": f"INST{(i + k) % n_inst:05d}",
                    "gene_tests": [f"GENE{(i + k + j) % n_genes:05d}" for j in range(3)],
                }
                for k in range(3)
            ],
            "source": "synthetic",
        }
        for i in range(n_labs)
    ]
    reasons = [
        {"code": c, "display": c, "requires_comment": c == "OTHER", "source": "synthetic"}
        for c in REASONS
    ]
    return {
        "version": version,
        "effective_date": "2025-01-01",
        "timezone": "Asia/Shanghai",
        "institutions": institutions,
        "recognition_items": items,
        "gene_tests": genes,
        "sendout_labs": labs,
        "override_reasons": reasons,
        "policy": {"severity": {"RECOGNIZABLE_RESULT_EXISTS": "WARN"}},
    }


def big_catalog_bytes(entries: int = 10_000, *, version: str = "big-1") -> bytes:
    return orjson.dumps(big_catalog(entries, version=version))
