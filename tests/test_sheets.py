"""cds catalog import: provincial spreadsheets (CSV, XLSX) into the catalogue's lists."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
from pathlib import Path

import openpyxl
import pytest

from cds.catalog.load import parse_catalog
from cds.catalog.sheets import (
    COLUMNS,
    GENE_TESTS,
    RECOGNITION,
    SheetError,
    import_sheet,
    read_sheet,
)
from tests.support.server import REPO_ROOT, cds_command, load_test_catalog, server_env

EXAMPLES = REPO_ROOT / "examples" / "import"
HEADER = ["项目编码", "项目名称", "类别", "有效期（天）", "互认范围", "备注"]


def write_csv(path: Path, rows, header=HEADER, encoding="utf-8-sig") -> Path:
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, rows, header=HEADER) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def entry(doc, key, code):
    (found,) = [e for e in doc[key] if e["code"] == code]
    return found


def test_the_shipped_examples_hold_exactly_the_rows_the_script_writes(tmp_path):
    done = subprocess.run(
        [str(Path(cds_command()[0])), str(REPO_ROOT / "scripts" / "make_import_examples.py"),
         str(tmp_path)],
        capture_output=True, text=True, env=server_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in EXAMPLES.iterdir())
    for name in made:
        assert read_sheet(tmp_path / name) == read_sheet(EXAMPLES / name), name


@pytest.mark.parametrize("writer", [write_csv, write_xlsx], ids=["csv", "xlsx"])
def test_a_sheet_updates_entries_by_code_adds_new_ones_and_leaves_the_rest(tmp_path, writer):
    doc = load_test_catalog()
    doc["recognition_items"][0]["notes"] = "kept"
    before = copy.deepcopy(doc)
    sheet = writer(
        tmp_path / f"list{'.csv' if writer is write_csv else '.xlsx'}",
        [
            ["K", "血清钾", "检验", 14, "全省", ""],
            ["NA", "血清钠", "检验", "7天", "医联体", "新增"],
        ],
    )
    done = import_sheet(doc, sheet)
    assert (done.list_key, done.added, done.updated, done.removed) == (RECOGNITION, 1, 1, 0)
    k = entry(doc, "recognition_items", "K")
    assert (k["validity_days"], k["scope"], k["notes"], k["source"]) == (
        14,
        "PROVINCE",
        "kept",
        "test",
    )
    assert entry(doc, "recognition_items", "NA") == {
        "code": "NA", "name": "血清钠", "category": "LAB", "validity_days": 7, "scope": "GROUP",
        "notes": "新增",
    }  # fmt: skip
    assert [e["code"] for e in doc["recognition_items"]] == ["K", "HBA1C", "CT_CHEST", "NA"]
    for key in set(before) - {"recognition_items"}:
        assert doc[key] == before[key], key
    parse_catalog(json.dumps(doc).encode())  # a valid catalogue


def test_every_bad_row_is_named_by_row_and_column_and_nothing_is_imported(tmp_path):
    doc = load_test_catalog()
    before = copy.deepcopy(doc)
    sheet = write_csv(
        tmp_path / "bad.csv",
        [
            ["K", "血清钾", "检验", "七", "全省", ""],
            ["", "血清钠", "检验", 7, "全省", ""],
            ["CL", "血清氯", "影像", 0, "省外", ""],
            ["K", "血清钾", "检验", 7, "全省", "again"],
        ],
    )
    with pytest.raises(SheetError) as bad:
        import_sheet(doc, sheet)
    where = str(sheet)
    assert bad.value.errors == [
        f"{where} row 2, column D (有效期（天）): '七' is not a whole number of days, at least 1",
        f"{where} row 3, column A (项目编码): required",
        f"{where} row 4, column C (类别): '影像' is not a category (检验/化验/LAB/检查/EXAM)",
        f"{where} row 4, column D (有效期（天）): '0' is not a whole number of days, at least 1",
        f"{where} row 4, column E (互认范围): '省外' is not a scope "
        "(全省/省内/全省互认/PROVINCE/医联体/医共体/医联体内/集团/GROUP)",
        f"{where} row 5: code 'K' repeats row 2",
    ]
    assert doc == before


def test_a_gene_test_sheet_maps_prices_flags_lists_and_empty_cells(tmp_path):
    header = ["项目编码", "项目名称", "检测基因", "适应证(ICD-10)", "收费项目编码", "价格（元）",
              "首诊需MDT", "需知情同意", "本院开展机构", "重复检测间隔（天）"]  # fmt: skip
    sheet = write_xlsx(
        tmp_path / "genes.xlsx",
        [
            ["EGFR", "EGFR基因突变检测", "EGFR", "c34", "P-EGFR", 1234.5, "否", "是", "H1、H2", 90],
            ["KRAS", "KRAS检测", "KRAS，NRAS", "C18,C19", "", "", "是", "否", "", ""],
        ],
        header,
    )
    doc = load_test_catalog()
    done = import_sheet(doc, sheet)
    assert (done.list_key, done.added, done.updated) == (GENE_TESTS, 1, 1)
    egfr = entry(doc, "gene_tests", "EGFR")
    assert (egfr["price_fen"], egfr["requires_mdt_first_visit"], egfr["indications"]) == (
        123450,
        False,
        ["C34"],
    )
    assert (egfr["in_house_institutions"], egfr["repeat_interval_days"]) == (["H1", "H2"], 90)
    assert egfr["method"] == "ARMS-PCR"  # no column for it: kept
    kras = entry(doc, "gene_tests", "KRAS")
    assert (kras["price_item_code"], kras["repeat_interval_days"], kras["genes"]) == (
        None,
        None,
        ["KRAS", "NRAS"],
    )
    assert "price_fen" not in kras
    parse_catalog(json.dumps(doc).encode())


def test_a_csv_saved_by_excel_on_chinese_windows_is_read(tmp_path):
    sheet = write_csv(tmp_path / "gbk.csv", [["NA", "血清钠", "检验", 7, "全省", ""]],
                      encoding="gb18030")  # fmt: skip
    doc = load_test_catalog()
    import_sheet(doc, sheet)
    assert entry(doc, "recognition_items", "NA")["name"] == "血清钠"


def test_replace_makes_the_sheet_the_whole_list(tmp_path):
    sheet = write_csv(tmp_path / "all.csv", [["K", "血清钾", "检验", 7, "全省", ""]])
    doc = load_test_catalog()
    done = import_sheet(doc, sheet, replace=True)
    assert (done.updated, done.removed) == (0, 2)
    assert [e["code"] for e in doc["recognition_items"]] == ["K"]


def test_a_sheet_whose_list_cannot_be_told_needs_list_and_a_missing_column_is_named(tmp_path):
    names_only = write_csv(
        tmp_path / "names.csv", [["K", "血清钾"]], header=["项目编码", "项目名称"]
    )
    with pytest.raises(SheetError) as unknown:
        import_sheet(load_test_catalog(), names_only)
    assert "say which with --list" in unknown.value.errors[0]
    with pytest.raises(SheetError) as missing:
        import_sheet(load_test_catalog(), names_only, list_key=RECOGNITION)
    assert any("no column 类别" in e for e in missing.value.errors)
    assert any("no column 有效期(天)" in e for e in missing.value.errors)


def test_numbers_typed_into_xlsx_cells_read_as_codes_and_days(tmp_path):
    sheet = write_xlsx(tmp_path / "n.xlsx", [[2823, "血清钾", "LAB", 7.0, "", ""]])
    doc = load_test_catalog()
    import_sheet(doc, sheet)
    assert entry(doc, "recognition_items", "2823")["validity_days"] == 7


def cds(*args):
    return subprocess.run(
        cds_command(*args), capture_output=True, text=True, env=server_env(), timeout=60
    )


def test_the_command_writes_a_valid_catalogue_or_says_why_and_writes_nothing(tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(load_test_catalog(), ensure_ascii=False), encoding="utf-8")
    original = catalog.read_bytes()
    # A gene test made in-house at an institution the catalogue does not know.
    header = ["项目编码", "项目名称", "适应证", "收费项目编码", "本院开展机构"]
    bad = write_csv(tmp_path / "g.csv", [["MET", "MET检测", "C34", "P-MET", "H9"]], header=header)
    done = cds("catalog", "import", str(catalog), str(bad), "--version", "test-2")
    assert done.returncode == 1
    assert "the imported catalogue would be invalid" in done.stderr
    assert "$.gene_tests[2].in_house_institutions[0]: unknown institution 'H9'" in done.stderr
    assert catalog.read_bytes() == original

    good = EXAMPLES / "recognition-items.csv"
    done = cds("catalog", "import", str(catalog), str(good), "--version", "test-2")
    assert done.returncode == 0, done.stderr
    assert "recognition_items: 5 added, 0 updated, 0 removed (columns ignored: 序号)" in done.stdout
    assert "version: test-1 -> test-2" in done.stdout
    assert parse_catalog(catalog.read_bytes()).version == "test-2"
    assert cds("catalog", "validate", str(catalog)).returncode == 0

    rows = cds("catalog", "import", str(catalog), str(EXAMPLES / "recognition-items-bad.csv"))
    assert rows.returncode == 1
    assert "row 2, column E (有效期（天）)" in rows.stderr


def test_catalog_readme_documents_every_column_of_both_lists():
    text = (REPO_ROOT / "catalog" / "README.md").read_text(encoding="utf-8")
    for columns in COLUMNS.values():
        for column in columns:
            assert f"`{column.headers[0]}`" in text, column.headers[0]
