"""Provincial lists from spreadsheets into the catalogue's ``recognition_items`` and
``gene_tests`` (``cds catalog import``).

Provinces publish their recognition and gene-test lists as spreadsheets, hundreds of
rows, with Chinese headers; nobody should retype that as JSON. A sheet (CSV or XLSX)
is read by its header row, each known header mapped to one catalogue key
(:data:`RECOGNITION_COLUMNS`, :data:`GENE_TEST_COLUMNS`; catalog/README.md documents
them), and every row becomes the entry of its code: an entry already in the
catalogue keeps the keys the sheet has no column (or an empty cell) for, a new code is
added, and with ``replace`` the codes the sheet lacks go. Nothing else in the
catalogue is touched.

Like a catalogue, a sheet is taken whole or not at all: every bad row is reported,
each with its row number as the spreadsheet shows it and its column (letter and
header), and then nothing is imported. The caller validates the result as any
catalogue (``cds.catalog.load``).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

RECOGNITION = "recognition_items"
GENE_TESTS = "gene_tests"

# A cell as read: text, a number, or nothing.
Cell = str | int | float | None


class SheetError(ValueError):
    """The sheet cannot be imported; ``errors`` are fit to print one a line."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _Bad(ValueError):
    """One cell's problem (the message follows its row and column)."""


# --------------------------------------------------------------------------- values


def _text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a code typed as a number: 2823 not 2823.0
    return str(value).strip()


def _code(value: Cell) -> str:
    text = _text(value)
    if not text:
        raise _Bad("required")
    if len(text) > 128:
        raise _Bad("longer than 128 characters")
    return text


def _required(value: Cell) -> str:
    text = _text(value)
    if not text:
        raise _Bad("required")
    return text


def _days(value: Cell) -> int:
    text = _text(value).removesuffix("天").strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise _Bad(f"{_text(value)!r} is not a whole number of days, at least 1")
    return int(text)


def _days_or_none(value: Cell) -> int | None:
    return _days(value) if _text(value) not in ("", "无", "-", "—") else None


_CATEGORIES = {"检验": "LAB", "化验": "LAB", "LAB": "LAB", "检查": "EXAM", "EXAM": "EXAM"}
_SCOPES = {
    "全省": "PROVINCE",
    "省内": "PROVINCE",
    "全省互认": "PROVINCE",
    "PROVINCE": "PROVINCE",
    "医联体": "GROUP",
    "医共体": "GROUP",
    "医联体内": "GROUP",
    "集团": "GROUP",
    "GROUP": "GROUP",
}
_YES = {"是", "需要", "Y", "YES", "TRUE", "1", "√"}
_NO = {"否", "不需要", "N", "NO", "FALSE", "0", "×"}


def _one_of(table: dict[str, str], what: str) -> Callable[[Cell], str]:
    def parse(value: Cell) -> str:
        text = _text(value)
        found = table.get(text.upper()) or table.get(text)
        if found is None:
            raise _Bad(f"{text!r} is not a {what} ({'/'.join(table)})")
        return found

    return parse


def _yes_no(value: Cell) -> bool:
    text = _text(value).upper()
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise _Bad(f"{_text(value)!r}: write 是 or 否")


def _list(value: Cell) -> list[str]:
    return [part for part in re.split(r"[、,，;；/\s]+", _text(value)) if part]


def _indications(value: Cell) -> list[str]:
    prefixes = [p.upper() for p in _list(value)]
    for p in prefixes:
        if not re.fullmatch(r"[A-Z][0-9A-Z.]*", p):
            raise _Bad(f"{p!r} is not an ICD-10 code prefix (C34, C18.1, ...)")
    return prefixes


def _code_or_null(value: Cell) -> str | None:
    return _code(value) if _text(value) else None


def _fen(value: Cell) -> int | None:
    text = _text(value)
    if not text:
        return None
    if not re.fullmatch(r"[0-9]+", text):
        raise _Bad(f"{text!r} is not a price in fen (a whole number)")
    return int(text)


def _yuan(value: Cell) -> int | None:
    text = _text(value).replace(",", "").removeprefix("¥").removeprefix("￥")
    if not text:
        return None
    try:
        yuan = Decimal(text)
    except InvalidOperation:
        raise _Bad(f"{_text(value)!r} is not a price in yuan") from None
    fen = yuan * 100
    if yuan < 0 or fen != fen.to_integral_value():
        raise _Bad(f"{_text(value)!r} is not a price in yuan to the fen")
    return int(fen)


# --------------------------------------------------------------------------- columns


class Column(NamedTuple):
    """One catalogue key and the headers a province writes for it."""

    key: str
    headers: tuple[str, ...]
    parse: Callable[[Cell], Any]
    required: bool = False
    # An empty cell means something (indications: none; price item: not priced; repeat
    # interval: no check). Otherwise an empty optional cell leaves the entry's key as it
    # is (a new entry gets the default): a sheet never erases what it does not say.
    keep_empty: bool = False


RECOGNITION_COLUMNS = (
    Column("code", ("项目编码", "项目代码", "编码", "code"), _code, required=True),
    Column("name", ("项目名称", "名称", "name"), _required, required=True),
    Column("category", ("类别", "项目类别", "category"), _one_of(_CATEGORIES, "category"),
           required=True),
    Column("validity_days", ("有效期(天)", "互认有效期(天)", "有效期", "validity_days"), _days,
           required=True),
    Column("scope", ("互认范围", "范围", "scope"), _one_of(_SCOPES, "scope")),
    Column("source", ("依据", "来源", "政策依据", "source"), _text),
    Column("notes", ("备注", "notes"), _text),
    Column("silent", ("静默", "试运行", "silent"), _yes_no),
)  # fmt: skip

GENE_TEST_COLUMNS = (
    Column("code", ("项目编码", "项目代码", "编码", "code"), _code, required=True),
    Column("name", ("项目名称", "名称", "name"), _required, required=True),
    Column("genes", ("检测基因", "基因", "genes"), _list),
    Column("method", ("检测方法", "方法", "method"), _text),
    Column("indications", ("适应证(ICD-10)", "适应症(ICD-10)", "适应证", "适应症", "indications"),
           _indications, required=True, keep_empty=True),
    Column("price_item_code", ("收费项目编码", "收费编码", "price_item_code"), _code_or_null,
           required=True, keep_empty=True),
    Column("price_fen", ("价格(元)", "收费标准(元)"), _yuan),
    Column("price_fen", ("价格(分)", "price_fen"), _fen),
    Column("requires_mdt_first_visit", ("首诊需MDT", "需MDT", "requires_mdt_first_visit"),
           _yes_no),
    Column("requires_consent", ("需知情同意", "知情同意", "requires_consent"), _yes_no),
    Column("in_house_institutions", ("本院开展机构", "院内开展机构", "in_house_institutions"),
           _list),
    Column("repeat_interval_days", ("重复检测间隔(天)", "重复检测间隔", "repeat_interval_days"),
           _days_or_none, keep_empty=True),
    Column("source", ("依据", "来源", "指南依据", "source"), _text),
    Column("notes", ("备注", "notes"), _text),
    Column("silent", ("静默", "试运行", "silent"), _yes_no),
)  # fmt: skip

COLUMNS = {RECOGNITION: RECOGNITION_COLUMNS, GENE_TESTS: GENE_TEST_COLUMNS}
# Headers only one of the two lists has: they tell which list a sheet is.
_ONLY = {
    RECOGNITION: {"validity_days", "category", "scope"},
    GENE_TESTS: {"genes", "indications", "price_item_code", "repeat_interval_days"},
}


def _normal(header: str) -> str:
    """Headers as typed: full-width brackets, stray spaces and case do not matter."""
    return re.sub(r"\s+", "", header).replace("（", "(").replace("）", ")").lower()


def _letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


# --------------------------------------------------------------------------- reading


def read_sheet(
    path: Path, sheet: str | None = None
) -> tuple[list[str], list[tuple[int, list[Cell]]]]:
    """The header row and the data rows (with their row numbers) of a CSV or XLSX file.

    CSV may be UTF-8 (with or without the mark Excel writes) or GB18030, which Excel on
    a Chinese Windows writes. XLSX: the named sheet, else the first.
    """
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        rows = _xlsx_rows(path, sheet)
    elif path.suffix.lower() == ".csv":
        rows = _csv_rows(path.read_bytes())
    else:
        raise SheetError([f"{path}: not a .csv or .xlsx file"])
    numbered = [(n, row) for n, row in enumerate(rows, start=1) if any(_text(c) for c in row)]
    if not numbered:
        raise SheetError([f"{path}: no header row"])
    (_, header), *body = numbered
    return [_text(h) for h in header], body


def _csv_rows(data: bytes) -> list[list[Cell]]:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return [list(row) for row in csv.reader(io.StringIO(text, newline=""))]
    raise SheetError(["not UTF-8 or GB18030 text"])  # pragma: no cover - gb18030 decodes all


def _xlsx_rows(path: Path, sheet: str | None) -> list[list[Cell]]:
    import zipfile

    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise SheetError([f"{path}: not a readable .xlsx file ({e})"]) from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise SheetError([f"{path}: no sheet {sheet!r} (sheets: {', '.join(book.sheetnames)})"])
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        return [[_cell(v) for v in row] for row in ws.iter_rows(values_only=True)]
    finally:
        book.close()


def _cell(value: Any) -> Cell:
    if value is None or isinstance(value, str | int | float):
        return value
    return str(value)  # a date or time typed into a cell: its text, refused where wrong


# --------------------------------------------------------------------------- importing


class Imported(NamedTuple):
    list_key: str
    added: int
    updated: int
    removed: int
    ignored_headers: tuple[str, ...]


def import_sheet(
    doc: dict[str, Any],
    path: Path,
    *,
    list_key: str | None = None,
    sheet: str | None = None,
    replace: bool = False,
) -> Imported:
    """Merge the sheet's rows into ``doc[list_key]`` in place; raises :class:`SheetError`
    with every bad row (and then changes nothing)."""
    header, body = read_sheet(path, sheet)
    normal = [_normal(h) for h in header]
    known = {
        key: {_normal(h): c for c in columns for h in c.headers} for key, columns in COLUMNS.items()
    }
    if list_key is None:
        list_key = _which_list(path, normal, known)
    by_header = known[list_key]
    mapped: list[tuple[int, Column]] = [
        (i, by_header[h]) for i, h in enumerate(normal) if h in by_header
    ]
    ignored = tuple(header[i] for i, h in enumerate(normal) if h not in by_header and h)
    errors: list[str] = []
    seen_keys: dict[str, int] = {}
    for i, column in mapped:
        if column.key in seen_keys:
            first = seen_keys[column.key]
            errors.append(
                f"{path}: columns {_letter(first)} ({header[first]}) and {_letter(i)} "
                f"({header[i]}) both give {column.key}"
            )
        seen_keys[column.key] = i
    present = {c.key for _, c in mapped}
    for column in COLUMNS[list_key]:
        if column.required and column.key not in present:
            names = " or ".join(column.headers[:-1])
            errors.append(f"{path}: no column {names} (for {column.key})")
    if errors:
        raise SheetError(errors)

    rows: dict[str, dict[str, Any]] = {}
    first_row: dict[str, int] = {}
    order: list[str] = []
    for number, cells in body:
        entry: dict[str, Any] = {}
        for i, column in mapped:
            value = cells[i] if i < len(cells) else None
            where = f"{path} row {number}, column {_letter(i)} ({header[i]})"
            try:
                if not _text(value) and not column.required and not column.keep_empty:
                    continue
                entry[column.key] = column.parse(value)
            except _Bad as bad:
                errors.append(f"{where}: {bad}")
        code = entry.get("code")
        if not isinstance(code, str):
            continue  # its code cell is already reported
        if code in first_row:
            errors.append(f"{path} row {number}: code {code!r} repeats row {first_row[code]}")
            continue
        first_row[code] = number
        rows[code] = entry
        order.append(code)
    if errors:
        raise SheetError(errors)
    return _merge(doc, list_key, rows, order, replace, ignored)


def _which_list(path: Path, normal: list[str], known: dict[str, dict[str, Column]]) -> str:
    votes = {
        key: sum(1 for h in normal if h in known[key] and known[key][h].key in _ONLY[key])
        for key in COLUMNS
    }
    found = [key for key, n in votes.items() if n]
    if len(found) != 1:
        raise SheetError(
            [f"{path}: cannot tell whether this is a recognition list or a gene-test list "
             "from its headers; say which with --list"]
        )  # fmt: skip
    return found[0]


def _merge(
    doc: dict[str, Any],
    list_key: str,
    rows: dict[str, dict[str, Any]],
    order: list[str],
    replace: bool,
    ignored: tuple[str, ...],
) -> Imported:
    existing = doc.get(list_key)
    if existing is None:
        existing = []
    if not isinstance(existing, list):
        raise SheetError([f"$.{list_key}: not a list in the catalogue; fix it first"])
    kept: list[Any] = []
    updated = removed = 0
    done: set[str] = set()
    for entry in existing:
        code = entry.get("code") if isinstance(entry, dict) else None
        if code in rows and code not in done:
            merged = {**entry, **rows[code]}
            if merged != entry:
                updated += 1
            kept.append(merged)
            done.add(code)
        elif replace and code is not None:
            removed += 1
        else:
            kept.append(entry)
    added = 0
    for code in order:
        if code not in done:
            kept.append(rows[code])
            added += 1
    doc[list_key] = kept
    return Imported(list_key, added, updated, removed, ignored)
