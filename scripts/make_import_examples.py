"""Write the example spreadsheets of ``cds catalog import`` (examples/import/).

Made by this script, not by hand, so the binary .xlsx files in the repository can be
reproduced and reviewed as the rows below; ``tests/test_sheets.py`` checks that the
shipped files hold exactly these rows. The headers are written as a province writes
them (Chinese, with full-width brackets in places). The codes are the shipped
catalogue's LOINC items and gene tests (empty cells keep what the catalogue says), two
items and a gene test added, a window and a price changed; prices, price items and new
entries are examples.

    python scripts/make_import_examples.py [OUT_DIR]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "examples" / "import"

RECOGNITION_HEADER = [
    "序号",
    "项目编码",
    "项目名称",
    "类别",
    "有效期（天）",
    "互认范围",
    "依据",
    "备注",
]
RECOGNITION_ROWS: list[list[Any]] = [
    [1, "2823-3", "血清钾", "检验", 7, "全省", "", ""],
    [2, "2951-2", "血清钠", "检验", 7, "全省", "", ""],
    [3, "4548-4", "糖化血红蛋白（HbA1c）", "检验", 90, "全省", "",
     "示例：有效期由 60 天改为 90 天"],
    [4, "1742-6", "丙氨酸氨基转移酶（ALT）", "检验", 14, "全省", "示例：省级互认项目清单", "新增"],
    [5, "2160-0", "肌酐", "检验", 14, "医联体", "示例：省级互认项目清单", "新增，医联体内互认"],
]  # fmt: skip

GENE_HEADER = [
    "项目编码", "项目名称", "检测基因", "检测方法", "适应证（ICD-10）", "收费项目编码",
    "价格（元）", "首诊需MDT", "需知情同意", "本院开展机构", "重复检测间隔（天）", "依据",
]  # fmt: skip
GENE_ROWS: list[list[Any]] = [
    ["GENE-EGFR", "EGFR 基因突变检测（非小细胞肺癌）", "EGFR", "", "C34",
     "EXAMPLE-PRICE-EGFR", "1800.00", "是", "是", "FJ-SL、FJ-ZL", 180, ""],
    ["GENE-MET", "MET 14 号外显子跳跃突变检测", "MET", "RT-PCR", "C34",
     "EXAMPLE-PRICE-MET", "1500", "是", "是", "", 180, "示例：新增项目"],
]  # fmt: skip

# A sheet with mistakes, for trying the error report.
BAD_ROWS: list[list[Any]] = [
    [1, "2823-3", "血清钾", "检验", "七", "全省", "", ""],
    [2, "", "血清钠", "检验", 7, "全省", "", ""],
    [3, "2075-0", "血清氯", "影像", 7, "省外", "", ""],
    [4, "2823-3", "血清钾", "检验", 7, "全省", "", "重复"],
]


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    # With the byte-order mark: Excel opens it as UTF-8 then.
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_xlsx(path: Path, title: str, header: list[str], rows: list[list[Any]]) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else OUT
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "recognition-items.csv", RECOGNITION_HEADER, RECOGNITION_ROWS)
    write_xlsx(out / "recognition-items.xlsx", "互认项目", RECOGNITION_HEADER, RECOGNITION_ROWS)
    write_xlsx(out / "gene-tests.xlsx", "基因检测项目", GENE_HEADER, GENE_ROWS)
    write_csv(out / "recognition-items-bad.csv", RECOGNITION_HEADER, BAD_ROWS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
