"""docs/reference.md stays in step with the code.

The reference is read as markdown sections (a heading and the text up to the next
heading) holding pipe tables; each test compares one table with what the code
defines, so a new reason code, RPC, field, limit, catalogue key, flag or metric that
is not documented (or a documented one that no longer exists) fails here. Prose is
only searched for single tokens (a flag, a metric prefix), never matched as sentences.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
)

from cds.catalog.load import schema
from cds.cli import build_parser
from cds.domain import DEFAULT_SEVERITY, OVERRIDABLE_CODES, ReasonCode
from cds.metrics import Metrics
from cds.orders import validation
from cds.orders.validation import MAX_COMMENT
from cds.rollout.state import MAX_ERROR_MESSAGE_BYTES
from cds.service.rpcs import METHOD_ROLES
from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2, types_pb2

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
PROTO_FILES = (types_pb2, order_check_pb2, result_feed_pb2, catalog_admin_pb2)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


# --------------------------------------------------------------------------- parsing


class Section(NamedTuple):
    title: str  # backticks removed
    lines: list[str]


def _plain(cell: str) -> str:
    return cell.replace("`", "").strip()


def _sections(text: str) -> list[Section]:
    sections = [Section("", [])]
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            sections.append(Section(_plain(match.group(2)), []))
        else:
            sections[-1].lines.append(line)
    return sections


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """Each pipe table as rows of raw cells, header first, separator row dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            cells = [c.strip() for c in stripped[1:-1].split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


@pytest.fixture(scope="module")
def sections() -> list[Section]:
    return _sections(REFERENCE.read_text(encoding="utf-8"))


def section(sections: list[Section], title: str) -> Section:
    found = [s for s in sections if s.title == title]
    assert len(found) == 1, f"expected one section titled {title!r}, found {len(found)}"
    return found[0]


def table(sections: list[Section], title: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the table under ``title`` whose first header cell is ``first_column``,
    as dicts keyed by the plain header text."""
    for rows in _tables(section(sections, title).lines):
        header = [_plain(c) for c in rows[0]]
        if header[0] == first_column:
            return [dict(zip(header, r, strict=True)) for r in rows[1:]]
    raise AssertionError(f"no table starting with column {first_column!r} under {title!r}")


# --------------------------------------------------------------------------- reason codes


def test_every_reason_code_is_documented_with_its_default_decision(sections):
    rows = table(sections, "Reason codes and rules", "code")
    documented = {_plain(r["code"]): _plain(r["default"]) for r in rows}
    expected = {str(code): DEFAULT_SEVERITY[code].name for code in ReasonCode}
    assert documented == expected


def test_the_reason_table_says_which_codes_offer_override_options(sections):
    rows = table(sections, "Reason codes and rules", "code")
    documented = {_plain(r["code"]) for r in rows if _plain(r["override options"]) == "yes"}
    assert documented == {str(c) for c in OVERRIDABLE_CODES}
    assert all(_plain(r["override options"]) in ("yes", "no") for r in rows)


def test_the_policy_severity_row_states_how_many_reason_codes_there_are(sections):
    # The row says "one of the 13 reason codes"; keep the count honest.
    rows = table(sections, "policy", "key")
    severity = next(r for r in rows if _plain(r["key"]) == "severity")
    assert f"{len(ReasonCode)} " in severity["rules"]


# --------------------------------------------------------------------------- gRPC API


def _rpcs() -> dict[tuple[str, str], MethodDescriptor]:
    """(full service name, method name) -> method, for every RPC the protos define."""
    return {
        (service.full_name, method.name): method
        for module in PROTO_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_rpc_is_documented_with_its_messages_and_role(sections):
    rows = table(sections, "Services and RPCs", "service")
    documented = {
        (_plain(r["service"]), _plain(r["rpc"])): r
        for r in rows
        if _plain(r["service"]).startswith("cds.")
    }
    rpcs = _rpcs()
    assert set(documented) == set(rpcs)
    for (service_name, method_name), method in rpcs.items():
        row = documented[(service_name, method_name)]
        role = METHOD_ROLES[f"/{service_name}/{method_name}"].value
        assert _plain(row["role"]) == role, method_name
        messages = f"{method.input_type.name} → {method.output_type.name}"
        assert _plain(row["request → response"]) == messages, method_name


_SCALARS = {
    getattr(FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_")
}


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        full = field.message_type.full_name
        name = full.removeprefix("cds.v1.")
    elif field.type == FieldDescriptor.TYPE_ENUM:
        name = field.enum_type.full_name.removeprefix("cds.v1.")
    else:
        name = _SCALARS[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _messages() -> list[Descriptor]:
    return [m for module in PROTO_FILES for m in module.DESCRIPTOR.message_types_by_name.values()]


def _enums() -> list[EnumDescriptor]:
    return [e for module in PROTO_FILES for e in module.DESCRIPTOR.enum_types_by_name.values()]


@pytest.mark.parametrize("message", _messages(), ids=lambda m: m.name)
def test_every_message_field_is_documented_with_its_number_and_type(sections, message):
    if not message.fields:
        section(sections, message.name)  # documented, with no table to compare
        return
    rows = table(sections, message.name, "#")
    documented = {_plain(r["field"]): (int(_plain(r["#"])), _plain(r["type"])) for r in rows}
    expected = {f.name: (f.number, _type_name(f)) for f in message.fields}
    assert documented == expected


@pytest.mark.parametrize("enum", _enums(), ids=lambda e: e.name)
def test_every_enum_value_is_documented_with_its_number(sections, enum):
    rows = table(sections, enum.name, "number")
    documented = {_plain(r["value"]): int(_plain(r["number"])) for r in rows}
    assert documented == {v.name: v.number for v in enum.values}


def test_the_request_limits_table_gives_the_limits_the_server_enforces(sections):
    rows = table(sections, "Request limits", "limit")
    documented = {_plain(r["limit"]): _plain(r["value"]) for r in rows}
    expected = {
        "order lines per CheckRequest": validation.ITEMS.most,
        "diagnosis codes per CheckRequest": validation.DIAGNOSES.most,
        "characters in any string of a request (comment excepted)": validation.MAX_STRING,
        "characters in SubmitFeedbackRequest.comment": MAX_COMMENT,
        "results per PutResultsRequest": validation.RESULTS.most,
        "refs per WithdrawResultsRequest": validation.WITHDRAWALS.most,
        "errors listed in PutResultsResponse.errors": validation.MAX_RESULT_ERRORS,
        "Result.reported_at ahead of the server's clock, in seconds": (
            validation.FUTURE_SKEW_US // 1_000_000
        ),
        "CheckRequest.order_time before the server's clock, in seconds": (
            validation.ORDER_TIME.before_us // 1_000_000
        ),
        "CheckRequest.order_time ahead of the server's clock, in seconds": (
            validation.ORDER_TIME.after_us // 1_000_000
        ),
        "bytes of a catalogue refusal message": MAX_ERROR_MESSAGE_BYTES,
    }
    for limit, value in expected.items():
        assert documented.get(limit) == str(value), limit


# --------------------------------------------------------------------------- catalogue


def test_every_reason_codes_message_placeholders_are_documented(sections):
    from cds.catalog.messages import PLACEHOLDERS

    rows = table(sections, "Messages and sources", "code")
    documented = {_plain(r["code"]): _plain(r["placeholders"]).split(", ") for r in rows}
    assert documented == {str(code): list(names) for code, names in PLACEHOLDERS.items()}
    values = {
        _plain(r["placeholder"]) for r in table(sections, "Messages and sources", "placeholder")
    }
    assert values == {name for names in PLACEHOLDERS.values() for name in names}


def test_every_top_level_catalogue_key_is_documented_with_its_default(sections):
    properties = schema()["properties"]
    rows = {_plain(r["key"]): r for r in table(sections, "Top-level keys", "key")}
    assert set(rows) == set(properties)
    for key, spec in properties.items():
        if "default" in spec:
            assert _plain(json.dumps(spec["default"])) in _plain(rows[key]["default"]), key
    for key in schema()["required"]:
        assert _plain(rows[key]["default"]) == "required", key


@pytest.mark.parametrize(
    ("heading", "definition"),
    [
        ("institutions[]", "institution"),
        ("recognition_items[]", "recognition_item"),
        ("gene_tests[]", "gene_test"),
        ("sendout_labs[]", "sendout_lab"),
        ("override_reasons[]", "override_reason"),
        ("policy", "policy"),
    ],
)
def test_every_catalogue_entry_key_is_documented_with_required_and_default(
    sections, heading, definition
):
    spec = schema()["$defs"][definition]
    rows = {_plain(r["key"]): r for r in table(sections, heading, "key")}
    assert set(rows) == set(spec["properties"])
    required = set(spec.get("required", ()))
    for key, prop in spec["properties"].items():
        assert _plain(rows[key]["required"]) == ("yes" if key in required else "no"), key
        if "default" in prop:
            assert _plain(rows[key]["default"]) == _plain(json.dumps(prop["default"])), key


# --------------------------------------------------------------------------- command line


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(
    parser: argparse.ArgumentParser, prefix: str = "cds"
) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command, e.g. ``cds catalog validate``, with its parser."""
    children = _subparsers(parser)
    if not children:
        return {prefix: parser}
    found: dict[str, argparse.ArgumentParser] = {}
    for name, child in children.items():
        found.update(_commands(child, f"{prefix} {name}"))
    return found


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        option: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_cds_serve_flag_is_documented_with_its_default(sections):
    serve = _commands(build_parser())["cds serve"]
    rows = table(sections, "cds serve", "flag")
    documented = {}
    for row in rows:
        flags = _FLAG.findall(_plain(row["flag"]))
        assert len(flags) == 1, row["flag"]
        documented[flags[0]] = row
    flags = _flags(serve)
    assert set(documented) == set(flags)
    for option, action in flags.items():
        default = _plain(documented[option]["default"])
        if action.required:
            assert default == "required", option
        elif action.nargs != 0 and isinstance(action.default, int | float | str):
            assert default == str(action.default), option


def test_every_cds_command_has_a_section_naming_each_of_its_flags(sections):
    client_flags = {
        _FLAG.findall(_plain(r["flag"]))[0] for r in table(sections, "Client commands", "flag")
    }
    for command, parser in _commands(build_parser()).items():
        if command == "cds serve":
            continue  # its own flag table, checked above
        text = "\n".join(section(sections, command).lines)
        for flag in _flags(parser):
            assert flag in text or flag in client_flags, (command, flag)


def test_the_client_flags_table_is_the_flags_every_client_command_shares(sections):
    documented = {
        _FLAG.findall(_plain(r["flag"]))[0] for r in table(sections, "Client commands", "flag")
    }
    commands = _commands(build_parser())
    shared = set.intersection(
        *(
            set(_flags(commands[c]))
            for c in (
                "cds check",
                "cds results put",
                "cds results withdraw",
                "cds catalog reload",
                "cds catalog status",
            )
        )
    )
    assert documented == shared


# --------------------------------------------------------------------------- metrics

_STANDARD_PREFIXES = ("process_", "python_")


def _registered_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name -> (type, label names) of every family a Metrics registers."""
    metrics = Metrics()
    metrics.rpc("cds.v1.OrderCheckService", "Check")  # so the grpc_* families have children
    metrics.hooks_answered("service", "cds-order-sign", 200, 0.001)  # and cds_hooks_*
    metrics.hooks_jwt_refused.labels("expired")
    metrics.recognition_reminded("H1")  # and the recognition ones
    metrics.recognition_feedback("H1", "accepted", "")
    metrics.recognition_feedback("H1", "accepted", "", replaced=True)
    found = {}
    for family in metrics.registry.collect():
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels)
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, frozenset(labels - {"le"}))
    return found


def _label_names(cell: str) -> frozenset[str]:
    # "`decision` (`allow`, `warn`, `block`)": names are the backticked words outside ().
    return frozenset(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", cell)))


def test_every_metric_the_service_registers_is_documented_with_type_and_labels(sections):
    rows = {_plain(r["metric"]): r for r in table(sections, "Metrics", "metric")}
    for name, (kind, labels) in _registered_metrics().items():
        if name.startswith(_STANDARD_PREFIXES):
            continue
        assert name in rows, name
        assert _plain(rows[name]["type"]) == kind, name
        assert _label_names(rows[name]["labels"]) == labels, name


def test_registered_metrics_outside_the_table_are_only_the_standard_process_series(sections):
    text = "\n".join(section(sections, "Metrics").lines)
    for name in _registered_metrics():
        assert name.startswith(("cds_", "grpc_", *_STANDARD_PREFIXES)), name
    for prefix in _STANDARD_PREFIXES:
        assert f"`{prefix}*`" in text


# --------------------------------------------------------------------------- placeholders


@pytest.mark.parametrize("title", ["Supervision report", "Safe catalogue changes", "CDS Hooks"])
def test_the_sections_colleagues_fill_in_exist(sections, title):
    section(sections, title)
