"""Load and validate catalogue files (docs/reference.md, "The catalogue").

A catalogue is refused whole or accepted whole: a half-applied rule set would make
decisions nobody reviewed. So every error is collected before refusing, each naming
the JSON path an administrator has to fix, and the file is only turned into a
:class:`~cds.catalog.snapshot.Snapshot` once nothing is wrong with it.

Validation is in two layers. The JSON Schema (``cds/catalog/schema.json``, also
reachable as ``catalog/schema.json``) states the shape, run by ``jsonschema-rs``: the
pure-Python ``jsonschema`` is far too slow for a reload of a provincial-size catalogue
under load, the Rust one still yields every error with its instance path. The checks
a schema cannot express (unique codes, references between lists, real calendar dates,
a known time zone) follow in plain Python.

No gRPC here: the service layer maps :class:`CatalogError` to its status codes.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema_rs
import orjson

from cds.catalog.messages import TemplateError, parse_template
from cds.catalog.snapshot import (
    DEFAULT_CODE_SYSTEM,
    DEFAULT_TIMEZONE,
    GeneTest,
    Institution,
    RecognitionItem,
    SendoutLab,
    Snapshot,
    end_of_day_us,
)
from cds.domain import Decision, ItemCategory, OverrideOption, ReasonCode

__all__ = [
    "SCHEMA_RESOURCE",
    "CatalogError",
    "load_catalog",
    "parse_catalog",
    "schema",
]

SCHEMA_RESOURCE = "schema.json"

# A path is the keys and indexes from the document root, e.g. ("gene_tests", 3, "code").
Path = tuple[str | int, ...]

_DATE_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_MAX_MESSAGE = 300
_UTF8_BOM = b"\xef\xbb\xbf"
# The policy value of a silent reason code (not a decision: it changes none).
_SILENT = "SILENT"


class CatalogError(Exception):
    """A catalogue that must not be activated, with every reason why.

    ``errors`` are ``"<JSON path>: <message>"`` strings (``$`` is the document root),
    sorted by path so the same file always gives the same report.
    """

    def __init__(self, errors: Sequence[str], *, source: str = "") -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        count = len(self.errors)
        head = f"{where}catalogue refused, {count} error{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *self.errors]))


# --------------------------------------------------------------------------- schema


def schema() -> dict[str, Any]:
    """The catalogue's JSON Schema, read from the installed package."""
    document: dict[str, Any] = orjson.loads(_schema_bytes())
    return document


@functools.cache
def _schema_bytes() -> bytes:
    return resources.files("cds.catalog").joinpath(SCHEMA_RESOURCE).read_bytes()


@functools.cache
def _validator() -> Any:
    """Compiled once per process: compiling is cheap, but a reload should not pay it."""
    return jsonschema_rs.Draft202012Validator(schema())


# --------------------------------------------------------------------------- errors


class _Error(NamedTuple):
    path: Path
    message: str


def _format_path(path: Path) -> str:
    out = ["$"]
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            out.append(f".{part}")
        else:
            out.append(f"[{orjson.dumps(part).decode()}]")
    return "".join(out)


def _sort_key(error: _Error) -> tuple[tuple[tuple[int, int | str], ...], str]:
    # Indexes compare as numbers ([2] before [10]); keys as text.
    parts = tuple((0, p) if isinstance(p, int) else (1, p) for p in error.path)
    return parts, error.message


def _render(errors: Iterable[_Error]) -> list[str]:
    unique = sorted(set(errors), key=_sort_key)
    return [f"{_format_path(e.path)}: {e.message}" for e in unique]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _schema_errors(data: Any) -> Iterator[_Error]:
    """The validator's errors, reworded where its message would not point at the key."""
    for err in _validator().iter_errors(data):
        path: Path = tuple(err.instance_path)
        kind = err.kind
        name = kind.name
        if name == "required":
            yield _Error((*path, kind.property), "required key is missing")
        elif name == "additionalProperties":
            for key in kind.unexpected:
                yield _Error((*path, key), "unknown key")
        elif name == "propertyNames":
            key = kind.error.instance
            if path in (("policy", "severity"), ("messages",)):
                yield _Error((*path, key), "not a reason code of the contract")
            else:
                yield _Error((*path, key), f"key not allowed: {kind.error.message}")
        elif name == "type":
            expected = " or ".join(kind.types)
            yield _Error(path, f"expected {expected}, got {_json_type(err.instance)}")
        else:
            message = err.message
            if len(message) > _MAX_MESSAGE:
                message = message[: _MAX_MESSAGE - 1] + "…"
            yield _Error(path, message)


# --------------------------------------------------------------------------- cross checks


def _entries(data: Mapping[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry) for the object entries of a list; shape errors are the schema's job."""
    value = data.get(key)
    if not isinstance(value, list):
        return []
    return [(i, e) for i, e in enumerate(value) if isinstance(e, dict)]


def _strings(entry: Mapping[str, Any], key: str) -> list[tuple[int, str]]:
    value = entry.get(key)
    if not isinstance(value, list):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def _index(
    data: Mapping[str, Any], list_key: str, id_key: str, label: str, errors: list[_Error]
) -> set[str] | None:
    """The ids of a list, reporting every repeat at the repeating entry.

    None when the list itself is malformed: its schema error is the one to fix, and
    calling every reference to it dangling would bury that error in noise.
    """
    if not isinstance(data.get(list_key, []), list):
        return None
    first: dict[str, int] = {}
    for i, entry in _entries(data, list_key):
        code = entry.get(id_key)
        if not isinstance(code, str):
            continue
        if code in first:
            where = _format_path((list_key, first[code], id_key))
            errors.append(
                _Error((list_key, i, id_key), f"duplicate {label} {code!r} (first at {where})")
            )
        else:
            first[code] = i
    return set(first)


def _check_date(data: Mapping[str, Any], path: Path, errors: list[_Error]) -> None:
    value: Any = data
    for part in path:
        value = value[part]
    # A wrong shape is already the schema's error; here only impossible days like 02-30.
    if isinstance(value, str) and _DATE_SHAPE.fullmatch(value):
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            errors.append(_Error(path, f"{value!r} is not a calendar date"))


@functools.lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _cross_errors(data: Mapping[str, Any]) -> list[_Error]:
    """Checks beyond the schema.

    ``price_fen`` with a null ``price_item_code`` is an error: a price without an
    approved charge item contradicts itself. Either the item code was forgotten (and
    the test would silently be blocked as unpriced) or the price is stale; activating
    either guess would be wrong, so the administrator decides.
    """
    errors: list[_Error] = []
    institutions = _index(data, "institutions", "id", "institution id", errors)
    _index(data, "recognition_items", "code", "recognition item code", errors)
    gene_tests = _index(data, "gene_tests", "code", "gene test code", errors)
    _index(data, "sendout_labs", "id", "send-out lab id", errors)
    _index(data, "override_reasons", "code", "override reason code", errors)

    if "effective_date" in data:
        _check_date(data, ("effective_date",), errors)
    timezone = data.get("timezone")
    if isinstance(timezone, str) and timezone:
        try:
            _zone(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Asia" is a folder
            errors.append(_Error(("timezone",), f"{timezone!r} is not an IANA time zone"))

    for i, test in _entries(data, "gene_tests"):
        for k, inst in _strings(test, "in_house_institutions"):
            if institutions is not None and inst not in institutions:
                errors.append(
                    _Error(("gene_tests", i, "in_house_institutions", k), _unknown_inst(inst))
                )
        if test.get("price_item_code", None) is None and test.get("price_fen") is not None:
            errors.append(
                _Error(
                    ("gene_tests", i, "price_fen"),
                    "a price is given but price_item_code is null (not priced); "
                    "set the approved charge item or remove the price",
                )
            )

    errors.extend(_template_errors(data))

    for i, lab in _entries(data, "sendout_labs"):
        if "qualification_valid_until" in lab:
            _check_date(data, ("sendout_labs", i, "qualification_valid_until"), errors)
        for j, approval in _entries(lab, "approved"):
            approved_at = approval.get("institution_id")
            if (
                isinstance(approved_at, str)
                and institutions is not None
                and approved_at not in institutions
            ):
                path: Path = ("sendout_labs", i, "approved", j, "institution_id")
                errors.append(_Error(path, _unknown_inst(approved_at)))
            for k, code in _strings(approval, "gene_tests"):
                if gene_tests is not None and code not in gene_tests:
                    path = ("sendout_labs", i, "approved", j, "gene_tests", k)
                    errors.append(_Error(path, f"unknown gene test {code!r}"))
    return errors


def _template_errors(data: Mapping[str, Any]) -> list[_Error]:
    """Each template that cannot be rendered; an unknown code is the schema's error."""
    messages = data.get("messages")
    if not isinstance(messages, dict):
        return []
    errors = []
    for code, text in messages.items():
        if isinstance(text, str) and code in ReasonCode.__members__:
            try:
                parse_template(code, text)
            except TemplateError as e:
                errors.append(_Error(("messages", code), str(e)))
    return errors


# How the shipped catalogue labels what is not real (catalog/README.md): the word in
# capitals in a code (EXAMPLE-LAB-A), its source or its notes ("EXAMPLE entry: ...").
_EXAMPLE = re.compile(r"\bEXAMPLES?\b")
_LISTS = ("institutions", "recognition_items", "gene_tests", "sendout_labs", "override_reasons")


def _example_errors(data: Mapping[str, Any]) -> list[_Error]:
    """Each entry that still carries the example marking anywhere in it, with where."""
    errors = []
    for list_key in _LISTS:
        for i, entry in _entries(data, list_key):
            marked = sorted({str(path[0]) for path in _marked(entry, ())})
            if marked:
                name = entry.get("code", entry.get("id"))
                what = f"{name} is" if isinstance(name, str) else "this entry is"
                errors.append(
                    _Error(
                        (list_key, i),
                        f"{what} still marked as an example (EXAMPLE in {', '.join(marked)}); "
                        "replace it with the real entry or remove it",
                    )
                )
    return errors


def _marked(value: Any, path: Path) -> Iterator[Path]:
    if isinstance(value, str):
        if _EXAMPLE.search(value):
            yield path
    elif isinstance(value, dict):
        for key, v in value.items():
            yield from _marked(v, (*path, key))
    elif isinstance(value, list):
        for k, v in enumerate(value):
            yield from _marked(v, (*path, k))


def _unknown_inst(inst: str) -> str:
    return f"unknown institution {inst!r} (not in $.institutions)"


# --------------------------------------------------------------------------- building


def _build(data: Mapping[str, Any], *, source: str, digest: str) -> Snapshot:
    """Turn a validated document into a Snapshot; defaults here mirror the schema's."""
    timezone = data.get("timezone", DEFAULT_TIMEZONE)
    tz = _zone(timezone)
    institutions = [
        Institution(
            id=e["id"],
            name=e["name"],
            level=e.get("level", ""),
            groups=frozenset(e.get("groups", ())),
        )
        for e in data.get("institutions", ())
    ]
    items = [
        RecognitionItem(
            code=e["code"],
            name=e["name"],
            category=ItemCategory[e["category"]],
            validity_days=int(e["validity_days"]),
            scope=e.get("scope", "PROVINCE"),
            source=e.get("source", ""),
            price_fen=None if e.get("price_fen") is None else int(e["price_fen"]),
            silent=e.get("silent", False),
        )
        for e in data.get("recognition_items", ())
    ]
    tests = []
    for e in data.get("gene_tests", ()):
        price_fen = e.get("price_fen")
        repeat = e.get("repeat_interval_days")
        tests.append(
            GeneTest(
                code=e["code"],
                name=e["name"],
                genes=tuple(e.get("genes", ())),
                method=e.get("method", ""),
                indications=tuple(e["indications"]),
                price_item_code=e["price_item_code"],
                price_fen=None if price_fen is None else int(price_fen),
                requires_mdt_first_visit=e.get("requires_mdt_first_visit", True),
                requires_consent=e.get("requires_consent", True),
                in_house_institutions=frozenset(e.get("in_house_institutions", ())),
                repeat_interval_days=None if repeat is None else int(repeat),
                source=e.get("source", ""),
                silent=e.get("silent", False),
            )
        )
    labs = []
    for e in data.get("sendout_labs", ()):
        until = dt.date.fromisoformat(e["qualification_valid_until"])
        labs.append(
            SendoutLab(
                id=e["id"],
                name=e["name"],
                qualification_valid_until=until,
                qualification_end_us=end_of_day_us(until, tz),
                approved=frozenset(
                    (a["institution_id"], code) for a in e["approved"] for code in a["gene_tests"]
                ),
            )
        )
    reasons = [
        OverrideOption(
            code=e["code"],
            display=e["display"],
            requires_comment=e.get("requires_comment", False),
        )
        for e in data.get("override_reasons", ())
    ]
    policy = data.get("policy", {}).get("severity", {})
    severity = {code: Decision[value] for code, value in policy.items() if value != _SILENT}
    silent_codes = [code for code, value in policy.items() if value == _SILENT]
    return Snapshot.create(
        version=data["version"],
        effective_date=data.get("effective_date", ""),
        timezone=timezone,
        institutions=institutions,
        recognition_items=items,
        gene_tests=tests,
        sendout_labs=labs,
        override_reasons=reasons,
        severity=severity,
        source=source,
        digest=digest,
        code_system=data.get("code_system", DEFAULT_CODE_SYSTEM),
        report_url_template=data.get("report_url_template", ""),
        messages=data.get("messages", {}),
        silent_codes=silent_codes,
    )


# --------------------------------------------------------------------------- public


def parse_catalog(data: bytes, *, source: str = "", strict: bool = False) -> Snapshot:
    """Validate catalogue bytes and build the Snapshot, or raise CatalogError with all errors.

    A leading UTF-8 byte-order mark is ignored (editors on Windows write one; RFC 8259
    lets a parser ignore it); the digest is still of the bytes as given. ``strict``
    also refuses every entry still marked as an example (:func:`_example_errors`).
    """
    digest = hashlib.sha256(data).hexdigest()
    body = data[len(_UTF8_BOM) :] if data.startswith(_UTF8_BOM) else data
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CatalogError([f"$: not a UTF-8 JSON document: {exc}"], source=source) from None
    errors = list(_schema_errors(doc))
    if isinstance(doc, dict):
        errors.extend(_cross_errors(doc))
        if strict:
            errors.extend(_example_errors(doc))
    if errors:
        raise CatalogError(_render(errors), source=source)
    return _build(doc, source=source, digest=digest)


def load_catalog(path: str | os.PathLike[str], *, strict: bool = False) -> Snapshot:
    """Read and parse a catalogue file; an unreadable file is a CatalogError like any other."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise CatalogError([f"$: cannot read {source}: {reason}"], source=source) from None
    return parse_catalog(data, source=source, strict=strict)
