"""Schema-shaped catalogues for the benchmarks: a stand-in and the 10,000-entry reload one.

The load benchmark runs on the shipped ``catalog/catalog.json``. Until that file exists
(and for the smoke test) :func:`synthetic_catalog` builds one of the same shape
(docs/reference.md, "Catalogue"). :func:`grow_catalog` pads a catalogue with generated
recognition items and gene tests to the size reloaded under load, keeping every original entry so
the running workload's codes keep their meaning across the reload.
"""

from __future__ import annotations

import copy
import random
from typing import Any

OVERRIDE_REASONS = [
    {"code": "CONDITION_CHANGED", "display": "病情变化", "requires_comment": False},
    {"code": "RAPID_CHANGE", "display": "检验结果随疾病进展变化快", "requires_comment": False},
    {"code": "MAJOR_PROCEDURE", "display": "手术、输血等重大医疗措施前", "requires_comment": False},
    {"code": "EMERGENCY", "display": "急诊、急救等紧急情况", "requires_comment": False},
    {"code": "FORENSIC", "display": "司法鉴定、伤残鉴定等", "requires_comment": False},
    {"code": "OTHER", "display": "其他原因", "requires_comment": True},
]

_GENE_TESTS = [
    ("EGFR", ["C34"]),
    ("ALK", ["C34"]),
    ("ROS1", ["C34"]),
    ("KRAS", ["C18", "C19", "C20"]),
    ("BRAF", ["C18", "C43"]),
    ("BRCA", ["C50", "C56"]),
    ("HER2", ["C50", "C16"]),
    ("MSI", ["C18", "C19", "C20", "C54"]),
    ("NTRK", []),
    ("PDL1", ["C34", "C16"]),
]


def synthetic_catalog(seed: int = 7, version: str = "bench-synthetic-1") -> dict[str, Any]:
    """A small catalogue shaped like the shipped one: ~80 items, 10 gene tests, 4 labs."""
    rng = random.Random(seed)
    groups = ["GRP-FZ", "GRP-XM", "GRP-QZ", "GRP-ZZ"]
    institutions = [
        {
            "id": f"FJ-H{i:03d}",
            "name": f"福建省第{i}医院",
            "level": "三级甲等" if i % 3 else "二级甲等",
            "groups": [groups[i % len(groups)]],
        }
        for i in range(1, 41)
    ]
    recog = [
        {
            "code": f"LAB-{i:03d}",
            "name": f"检验项目{i}",
            "category": "LAB",
            "validity_days": rng.choice([3, 7, 14, 30]),
            "scope": "GROUP" if i % 10 == 0 else "PROVINCE",
        }
        for i in range(1, 61)
    ] + [
        {
            "code": f"EXAM-{i:03d}",
            "name": f"检查项目{i}",
            "category": "EXAM",
            "validity_days": rng.choice([30, 90, 180]),
            "scope": "PROVINCE",
        }
        for i in range(1, 21)
    ]
    gene_tests = []
    for n, (gene, indications) in enumerate(_GENE_TESTS):
        gene_tests.append(
            {
                "code": f"GT-{gene}",
                "name": f"{gene}基因检测",
                "genes": [gene],
                "method": "NGS" if n % 2 else "PCR",
                "indications": indications,
                "price_item_code": None if gene == "NTRK" else f"PRICE-{gene}",
                "price_fen": None if gene == "NTRK" else 100_000 + 10_000 * n,
                "requires_mdt_first_visit": True,
                "requires_consent": True,
                "in_house_institutions": [f"FJ-H{i:03d}" for i in range(1, 41) if i % 5 == n % 5],
                "repeat_interval_days": 180 if n % 2 else None,
                "source": "福建省肿瘤基因检测推荐目录",
            }
        )
    codes = [g["code"] for g in gene_tests]
    labs = []
    for n in range(4):
        approved = [
            {"institution_id": inst["id"], "gene_tests": codes[n::2]} for inst in institutions[n::2]
        ]
        labs.append(
            {
                "id": f"SOL-{n + 1}",
                "name": f"第三方医学检验实验室{n + 1}",
                "qualification_valid_until": "2020-12-31" if n == 3 else "2099-12-31",
                "approved": approved,
            }
        )
    return {
        "version": version,
        "effective_date": "2025-01-01",
        "timezone": "Asia/Shanghai",
        "institutions": institutions,
        "recognition_items": recog,
        "gene_tests": gene_tests,
        "sendout_labs": labs,
        "override_reasons": copy.deepcopy(OVERRIDE_REASONS),
        "policy": {"severity": {}},
    }


def grow_catalog(base: dict[str, Any], entries: int, version: str) -> dict[str, Any]:
    """``base`` plus generated entries until recognition items + gene tests = ``entries``."""
    cat = copy.deepcopy(base)
    cat["version"] = version
    have = len(cat["recognition_items"]) + len(cat["gene_tests"])
    missing = max(0, entries - have)
    n_gene = missing // 10
    n_recog = missing - n_gene
    for i in range(n_recog):
        cat["recognition_items"].append(
            {
                "code": f"BENCH-R{i:05d}",
                "name": f"基准检验项目{i}",
                "category": "LAB" if i % 4 else "EXAM",
                "validity_days": 7 + i % 90,
                "scope": "GROUP" if i % 7 == 0 else "PROVINCE",
            }
        )
    insts = [i["id"] for i in cat["institutions"]]
    for i in range(n_gene):
        cat["gene_tests"].append(
            {
                "code": f"BENCH-G{i:05d}",
                "name": f"基准基因检测{i}",
                "genes": [f"G{i}"],
                "method": "NGS",
                "indications": [f"C{i % 97:02d}"],
                "price_item_code": f"BENCH-P{i:05d}",
                "price_fen": 50_000,
                "requires_mdt_first_visit": True,
                "requires_consent": True,
                "in_house_institutions": [insts[i % len(insts)]] if insts else [],
                "repeat_interval_days": 180,
                "source": "benchmark",
            }
        )
    return cat
