"""The ``cds`` command: run the server, validate a catalogue, and talk to a running server.

Client commands read and print the proto JSON mapping (``google.protobuf.json_format``),
field names as in the contract, so what you type is exactly what an EMR would send.
Exit codes: 0 success, 1 a refused catalogue or a failed call, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from cds.config import DEFAULT_LISTEN, ConfigError, ServeConfig
from cds.security import cli as security_cli

PUT_BATCH = 10_000
ENV_SERVER = "CDS_SERVER"
ENV_TOKEN = "CDS_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cds", description="Order-time clinical decision support (gRPC service)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    add_serve_flags(serve)
    serve.set_defaults(func=_serve)

    catalog = sub.add_parser("catalog", help="catalogue commands").add_subparsers(
        dest="catalog_command", required=True
    )
    validate = catalog.add_parser("validate", help="validate a catalogue file")
    validate.add_argument("path")
    validate.add_argument(
        "--strict",
        action="store_true",
        help="also refuse entries still marked as examples (EXAMPLE in a code, source, notes)",
    )
    validate.set_defaults(func=_catalog_validate)
    diff = catalog.add_parser("diff", help="what changes from one catalogue file to another")
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    diff.set_defaults(func=_catalog_diff)
    imp = catalog.add_parser(
        "import",
        help="build or update recognition_items / gene_tests from CSV or XLSX sheets",
    )
    imp.add_argument("catalog", metavar="CATALOG", help="the catalogue JSON to update")
    imp.add_argument("sheets", metavar="SHEET", nargs="+", help=".csv or .xlsx files")
    imp.add_argument(
        "--list",
        choices=("recognition_items", "gene_tests"),
        help="which list the sheets are (default: told by their headers)",
    )
    imp.add_argument("--sheet", metavar="NAME", help="the XLSX sheet to read (default: the first)")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="the sheet is the whole list: entries whose code it lacks are removed",
    )
    imp.add_argument("--version", help="the new catalogue's version (a new edition needs one)")
    imp.add_argument(
        "--out", metavar="PATH", help="write the result here (default: CATALOG itself)"
    )
    imp.set_defaults(func=_catalog_import)
    reload = catalog.add_parser(
        "reload", help="ask a running server to reload its catalogue, or preview a change"
    )
    reload.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, list the changes and replay recent orders; activate nothing",
    )
    reload.add_argument(
        "--file",
        metavar="PATH",
        help="with --dry-run: preview this catalogue file instead of the server's own",
    )
    reload.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: the changes and an impact table (default); json: the response",
    )
    _client_args(reload)
    reload.set_defaults(func=_catalog_reload)
    status = catalog.add_parser("status", help="the running server's catalogue status")
    _client_args(status)
    status.set_defaults(func=_catalog_status)

    check = sub.add_parser("check", help="send a CheckRequest (JSON) and print the answer")
    check.add_argument("file", nargs="?", default="-", help="JSON request file, - for stdin")
    check.add_argument(
        "--format",
        choices=("json", "text"),
        default="json",
        help="json: the CheckResponse as proto JSON (default); text: one line per order "
        "line, its reasons indented, the override options once",
    )
    _client_args(check)
    check.set_defaults(func=_check)

    feedback = sub.add_parser(
        "feedback", help="send the clinician's answer to a decision's line (SubmitFeedback)"
    )
    feedback.add_argument("decision_id", metavar="DECISION_ID")
    feedback.add_argument("line_id", metavar="LINE_ID")
    outcome = feedback.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--accepted", action="store_true", help="the clinician followed the reason"
    )
    outcome.add_argument(
        "--overridden", metavar="CODE", help="proceeded anyway, with this override reason code"
    )
    feedback.add_argument(
        "--comment", default="", metavar="TEXT", help="free text (required by some reasons)"
    )
    feedback.add_argument(
        "--clinician",
        default="",
        metavar="ID",
        help="clinician_id of who answered (default: who ordered)",
    )
    _client_args(feedback)
    feedback.set_defaults(func=_feedback)

    results = sub.add_parser("results", help="results feed commands").add_subparsers(
        dest="results_command", required=True
    )
    put = results.add_parser("put", help="put results from a JSON-lines file (one Result a line)")
    put.add_argument("file", help="JSON-lines file, - for stdin")
    _client_args(put)
    put.set_defaults(func=_results_put)
    withdraw = results.add_parser("withdraw", help="withdraw results of one patient")
    withdraw.add_argument("--patient", required=True, help="patient_id")
    withdraw.add_argument("result_ids", nargs="+", metavar="RESULT_ID")
    _client_args(withdraw)
    withdraw.set_defaults(func=_results_withdraw)
    report = sub.add_parser(
        "report",
        help="the supervision report from decision logs (json, csv or html)",
        description="Read decision logs (files, or directories of them: rotated *.N and "
        "per-worker files included) and print the supervision report. Exit 1 for input "
        "that cannot be read; a torn last line is skipped and counted.",
    )
    report.add_argument(
        "logs",
        nargs="+",
        metavar="LOG_OR_DIR",
        help="decision-log files, or directories of them (several hosts' at once)",
    )
    report.add_argument(
        "--catalog", metavar="PATH", help="the catalogue: names, prices and time zone"
    )
    report.add_argument(
        "--from",
        dest="first",
        type=_day,
        metavar="YYYY-MM-DD",
        help="first day, in the catalogue's time zone (default: the first in the logs)",
    )
    report.add_argument(
        "--to",
        dest="last",
        type=_day,
        metavar="YYYY-MM-DD",
        help="last day, inclusive (default: the last in the logs)",
    )
    report.add_argument(
        "--institution",
        action="extend",
        nargs="+",
        default=[],
        metavar="ID",
        help="only these institutions (repeatable)",
    )
    report.add_argument(
        "--format",
        choices=("json", "csv", "html"),
        default="json",
        help="json for the provincial platform, csv for a spreadsheet, html to read "
        "(default %(default)s)",
    )
    report.add_argument("--out", metavar="PATH", help="write here instead of stdout")
    report.add_argument(
        "--concentration-min",
        type=_positive_int,
        default=10,
        metavar="N",
        help="send-outs a clinician needs to be flagged (default %(default)s)",
    )
    report.add_argument(
        "--concentration-share",
        type=_share,
        default=0.8,
        metavar="X",
        help="share to one lab that flags a clinician, 0 < X <= 1 (default %(default)s)",
    )
    report.set_defaults(func=_report)
    security_cli.add_commands(sub)  # cds auth …, cds audit …
    return parser


def _day(text: str) -> str:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat() if len(text) == 10 else _bad_day(text)
    except ValueError:
        return _bad_day(text)


def _bad_day(text: str) -> str:
    raise argparse.ArgumentTypeError(f"{text!r} is not a calendar day YYYY-MM-DD")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 (excluded) and 1")
    return value


# annotation -> (argparse type, metavar unless the field names one)
_TYPES: dict[str, tuple[Callable[[str], Any], str]] = {
    "str": (str, "PATH"),
    "str | None": (str, "PATH"),
    "int": (int, "N"),
    "float": (float, "SECONDS"),
}


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`ServeConfig` field, from the field's name, type, default and
    help: a new setting is a new field in cds/config.py, nothing here."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(ServeConfig):
        meta = f.metadata
        group = meta["group"]
        target: Any = parser
        if group:
            target = groups.get(group) or groups.setdefault(group, parser.add_argument_group(group))
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        if f.type == "bool":
            target.add_argument(flag, action="store_true", help=meta["help"])
            continue
        help_text = meta["help"] + ("" if required or default is None else " (default %(default)s)")
        if meta["negated_by"] is not None:
            target = target.add_mutually_exclusive_group()
        kind, metavar = _TYPES[str(f.type)]
        target.add_argument(
            flag,
            type=kind,
            default=default,
            required=required,
            metavar=meta["metavar"] or metavar,
            help=help_text,
        )
        if meta["negated_by"] is not None:
            negation, negation_help = meta["negated_by"]
            target.add_argument(
                negation, dest=f.name, action="store_const", const=None, help=negation_help
            )


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get(ENV_SERVER, DEFAULT_LISTEN),
        help=f"server HOST:PORT (default ${ENV_SERVER} or %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")
    p.add_argument("--tls-ca", help="CA that signed the server's certificate: connect with TLS")
    p.add_argument("--tls-cert", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--tls-key", help="client private key (PEM), for mutual TLS")
    p.add_argument(
        "--token",
        default=os.environ.get(ENV_TOKEN),
        help=f"bearer token for a server with --auth-tokens (default ${ENV_TOKEN})",
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        config = ServeConfig(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}
        )
    except ConfigError as e:
        print(f"cds serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.workers > 1:
        from cds.runtime.supervisor import supervise

        return asyncio.run(supervise(config))
    from cds.runtime.server import run

    return asyncio.run(run(config))


def _catalog_validate(args: argparse.Namespace) -> int:
    from cds.catalog.diff import summarize

    snapshot = _load_or_report(args.path, strict=args.strict)
    if snapshot is None:
        return 1
    print(summarize(snapshot))
    return 0


def _load_or_report(path: str, *, strict: bool = False) -> Any:
    """The file's Snapshot, or None once every error is on stderr."""
    from cds.catalog.load import CatalogError, load_catalog

    try:
        return load_catalog(path, strict=strict)
    except CatalogError as refused:
        _print_errors(f"{path}: invalid, {len(refused.errors)} error(s):", refused.errors)
        return None


def _catalog_import(args: argparse.Namespace) -> int:
    """Sheets into the catalogue; written only if every row is good and the result is a
    valid catalogue, else every reason why on stderr and exit 1."""
    from pathlib import Path

    import orjson

    from cds.catalog.diff import diff_snapshots
    from cds.catalog.load import CatalogError, parse_catalog
    from cds.catalog.sheets import SheetError, import_sheet

    source = Path(args.catalog)
    try:
        original = source.read_bytes()
        doc = orjson.loads(original)
    except (OSError, orjson.JSONDecodeError) as e:
        print(f"cds: cannot read the catalogue {source}: {e}", file=sys.stderr)
        return 1
    if not isinstance(doc, dict):
        print(f"cds: {source}: not a catalogue (a JSON object)", file=sys.stderr)
        return 1
    reports = []
    try:
        for sheet in args.sheets:
            done = import_sheet(
                doc, Path(sheet), list_key=args.list, sheet=args.sheet, replace=args.replace
            )
            reports.append((sheet, done))
    except SheetError as bad:
        _print_errors(f"cds: nothing imported, {len(bad.errors)} problem(s):", bad.errors)
        return 1
    if args.version:
        doc["version"] = args.version
    result = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    out = Path(args.out or args.catalog)
    try:
        new = parse_catalog(result, source=str(out))
    except CatalogError as refused:
        _print_errors(
            "cds: nothing written: the imported catalogue would be invalid, "
            f"{len(refused.errors)} error(s):",
            refused.errors,
        )
        return 1
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(result)
    tmp.replace(out)
    for sheet, done in reports:
        print(
            f"{sheet} -> {done.list_key}: {done.added} added, {done.updated} updated, "
            f"{done.removed} removed"
            + (
                f" (columns ignored: {', '.join(done.ignored_headers)})"
                if done.ignored_headers
                else ""
            )
        )
    try:
        old = parse_catalog(original, source=str(source))
    except CatalogError:
        old = None
    for line in diff_snapshots(old, new):
        print(f"  {line}")
    if old is not None and old.version == new.version and old.digest != new.digest:
        print(
            f"note: version {new.version} is unchanged; a server refuses other content under "
            "its active version (give --version)",
            file=sys.stderr,
        )
    print(f"written: {out}")
    return 0


def _catalog_diff(args: argparse.Namespace) -> int:
    from cds.catalog.diff import diff_snapshots

    old, new = _load_or_report(args.old), _load_or_report(args.new)
    if old is None or new is None:
        return 1
    for line in diff_snapshots(old, new):
        print(line)
    return 0


def _print_errors(head: str, errors: Sequence[str]) -> None:
    print(head, file=sys.stderr)
    for error in errors:
        print(f"  {error}", file=sys.stderr)


def _print_message(message: Message, out: TextIO = sys.stdout) -> None:
    out.write(
        json_format.MessageToJson(
            message,
            preserving_proto_field_name=True,
            indent=2,
            ensure_ascii=False,
            always_print_fields_with_no_presence=True,
        )
        + "\n"
    )


def _call(args: argparse.Namespace, fn: Callable[[Any], Any]) -> int:
    """Run ``fn(channel)`` against ``--server``; a failed call prints its status, exits 1."""
    try:
        channel = _channel(args)
    except OSError as e:
        print(f"cds: {e}", file=sys.stderr)
        return 2
    with channel:
        try:
            fn(channel)
        except grpc.RpcError as e:
            print(f"cds: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


def _channel(args: argparse.Namespace) -> grpc.Channel:
    token = args.token
    if args.tls_ca is None:
        if token:
            # Tokens travel only over TLS in production; on loopback this is for trying.
            interceptor = _TokenInterceptor(token)
            return grpc.intercept_channel(grpc.insecure_channel(args.server), interceptor)
        return grpc.insecure_channel(args.server)

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key),
        certificate_chain=read(args.tls_cert),
    )
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(args.server, credentials)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer`` to every call (on a plaintext loopback channel)."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=(*(details.metadata or ()), *self._metadata))
        return continuation(details, request)


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _check(args: argparse.Namespace) -> int:
    from cds.v1 import order_check_pb2, order_check_pb2_grpc

    try:
        request = json_format.Parse(_read(args.file), order_check_pb2.CheckRequest())
    except (OSError, json_format.ParseError) as e:
        print(f"cds: cannot read the request: {e}", file=sys.stderr)
        return 2

    def call(channel: Any) -> None:
        stub = order_check_pb2_grpc.OrderCheckServiceStub(channel)
        response = stub.Check(request, timeout=args.timeout)
        if args.format == "text":
            sys.stdout.write(check_text(response))
        else:
            _print_message(response)

    return _call(args, call)


def _decision(value: int) -> str:
    from cds.v1 import types_pb2

    return types_pb2.Decision.Name(value).removeprefix("DECISION_")


def _utc(ts: Any) -> str:
    return str(ts.ToDatetime().strftime("%Y-%m-%d %H:%M UTC"))


def check_text(response: Any) -> str:
    """A CheckResponse for a person at a terminal: the order's decision and ids, one line
    per order line with its reasons (and their prior results) indented under it, then
    the override options once, with the command that sends one."""
    out = [
        f"{_decision(response.decision)}  decision {response.decision_id}"
        f" · catalogue {response.catalog_version}"
    ]
    width = max((len(i.line_id) for i in response.items), default=0)
    code_width = max((len(i.item_code) for i in response.items), default=0)
    options: dict[str, Any] = {}
    for item in response.items:
        out.append(
            f"  {item.line_id.ljust(width)}  {item.item_code.ljust(code_width)}  "
            f"{_decision(item.decision)}"
        )
        for r in item.reasons:
            out.append(f"      {_decision(r.decision)} {r.code}: {r.message}")
            for p in r.prior_results:
                out.append(
                    f"          prior {p.result_id} from {p.institution_id}, reported "
                    f"{_utc(p.reported_at)}, counts until {_utc(p.valid_until)}"
                )
            for o in r.override_options:
                options.setdefault(o.code, o)
    if options:
        out.append(
            f"override reasons (cds feedback {response.decision_id} LINE_ID --overridden CODE):"
        )
        code_width = max(len(code) for code in options)
        out += [
            f"  {o.code.ljust(code_width)}  {o.display}"
            + ("  (needs --comment)" if o.requires_comment else "")
            for o in options.values()
        ]
    if response.degraded:
        out.append(f"degraded: {', '.join(response.degraded)} (checked on the catalogue alone)")
    return "\n".join(out) + "\n"


def _feedback(args: argparse.Namespace) -> int:
    from cds.v1 import order_check_pb2, order_check_pb2_grpc, types_pb2

    request = order_check_pb2.SubmitFeedbackRequest(
        decision_id=args.decision_id,
        line_id=args.line_id,
        outcome=(
            types_pb2.FEEDBACK_OUTCOME_ACCEPTED
            if args.accepted
            else types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN
        ),
        override_code=args.overridden or "",
        comment=args.comment,
        clinician_id=args.clinician,
    )

    def call(channel: Any) -> None:
        stub = order_check_pb2_grpc.OrderCheckServiceStub(channel)
        _print_message(stub.SubmitFeedback(request, timeout=args.timeout))

    return _call(args, call)


def _catalog_reload(args: argparse.Namespace) -> int:
    from cds.v1 import catalog_admin_pb2, catalog_admin_pb2_grpc

    candidate = b""
    if args.file is not None:
        if not args.dry_run:
            print(
                "cds catalog reload: --file needs --dry-run: a candidate is previewed, never "
                "activated (put it at the server's --catalog path and reload to activate it)",
                file=sys.stderr,
            )
            return 2
        try:
            with open(args.file, "rb") as f:
                candidate = f.read()
        except OSError as e:
            print(f"cds: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
            return 2

    def call(channel: Any) -> None:
        stub = catalog_admin_pb2_grpc.CatalogAdminServiceStub(channel)
        request = catalog_admin_pb2.ReloadCatalogRequest(dry_run=args.dry_run, candidate=candidate)
        response = stub.ReloadCatalog(request, timeout=args.timeout)
        if args.format == "json":
            _print_message(response)
        else:
            print(_reload_text(response, _item_names(candidate)))

    return _call(args, call)


def _reload_text(response: Any, names: dict[str, str]) -> str:
    """A ReloadCatalogResponse as an administrator reads it."""
    from cds.rollout.impact import Impact, ImpactRow, render

    version, previous = response.version, response.previous_version
    if response.activated:
        head = f"activated version {version} (previous {previous})"
    else:
        head = f"dry run: version {version} not activated ({previous} in force)"
    impact = response.impact
    rows = tuple(
        ImpactRow.of(r.item_code, r.before, r.after, r.lines, r.reasons_added, r.reasons_removed)
        for r in impact.rows
    )
    summary = Impact(impact.orders_replayed, impact.lines_changed, rows)
    changes = [f"  {line}" for line in response.changes]
    return "\n".join([head, "", "changes:", *changes, "", render(summary, names)])


def _item_names(candidate: bytes) -> dict[str, str]:
    """Item code -> name from a candidate file, to label the impact table; {} if unreadable."""
    import orjson

    try:
        doc = orjson.loads(candidate) if candidate else {}
        entries = [*doc.get("recognition_items", ()), *doc.get("gene_tests", ())]
        return {e["code"]: e["name"] for e in entries if isinstance(e, dict) and "name" in e}
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return {}


def _catalog_status(args: argparse.Namespace) -> int:
    from cds.v1 import catalog_admin_pb2, catalog_admin_pb2_grpc

    def call(channel: Any) -> None:
        stub = catalog_admin_pb2_grpc.CatalogAdminServiceStub(channel)
        request = catalog_admin_pb2.GetCatalogStatusRequest()
        _print_message(stub.GetCatalogStatus(request, timeout=args.timeout))

    return _call(args, call)


def _json_lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _results_put(args: argparse.Namespace) -> int:
    from cds.v1 import result_feed_pb2, result_feed_pb2_grpc, types_pb2

    try:
        results = [
            json_format.Parse(line, types_pb2.Result()) for _, line in _json_lines(_read(args.file))
        ]
    except (OSError, json_format.ParseError) as e:
        print(f"cds: cannot read the results: {e}", file=sys.stderr)
        return 2

    def call(channel: Any) -> None:
        stub = result_feed_pb2_grpc.ResultFeedServiceStub(channel)
        total = result_feed_pb2.PutResultsResponse()
        for start in range(0, len(results), PUT_BATCH):
            batch = results[start : start + PUT_BATCH]
            response = stub.PutResults(
                result_feed_pb2.PutResultsRequest(results=batch), timeout=args.timeout
            )
            total.accepted += response.accepted
            total.rejected += response.rejected
            total.expired += response.expired
            # Row indexes in errors are per request; shift them to the file's order.
            total.errors.extend(_shift_rows(e, start) for e in response.errors)
        _print_message(total)

    return _call(args, call)


def _shift_rows(error: str, offset: int) -> str:
    prefix = "results["
    if offset and error.startswith(prefix):
        index, _, rest = error[len(prefix) :].partition("]")
        if index.isdigit():
            return f"{prefix}{int(index) + offset}]{rest}"
    return error


def _results_withdraw(args: argparse.Namespace) -> int:
    from cds.v1 import result_feed_pb2, result_feed_pb2_grpc, types_pb2

    def call(channel: Any) -> None:
        stub = result_feed_pb2_grpc.ResultFeedServiceStub(channel)
        request = result_feed_pb2.WithdrawResultsRequest(
            results=[
                types_pb2.ResultRef(patient_id=args.patient, result_id=r) for r in args.result_ids
            ]
        )
        _print_message(stub.WithdrawResults(request, timeout=args.timeout))

    return _call(args, call)


def _report(args: argparse.Namespace) -> int:
    from cds.catalog.load import CatalogError, load_catalog
    from cds.supervision.html import to_html
    from cds.supervision.inputs import InputError, log_files
    from cds.supervision.names import Names
    from cds.supervision.render import to_csv, to_json
    from cds.supervision.report import Period, ReportError, build_report

    if args.first and args.last and args.first > args.last:
        print(f"cds report: --from {args.first} is after --to {args.last}", file=sys.stderr)
        return 2
    catalog = None
    if args.catalog is not None:
        try:
            catalog = load_catalog(args.catalog)
        except CatalogError as refused:
            _print_errors(f"cds report: catalogue {args.catalog} is invalid:", refused.errors)
            return 1
    try:
        files = log_files(args.logs)
        report = build_report(
            files,
            period=Period(args.first, args.last),
            institutions=args.institution,
            catalog=catalog,
            concentration_min=args.concentration_min,
            concentration_share=args.concentration_share,
        )
    except (InputError, ReportError) as e:
        print(f"cds report: {e}", file=sys.stderr)
        return 1
    names = Names(catalog)
    if args.format == "json":
        text = to_json(report)
    elif args.format == "csv":
        text = to_csv(report, names)
    else:
        text = to_html(report, names)
    torn = report["input"]["torn_lines"]
    if torn:
        where = ", ".join(f"{f} ({n})" for f, n in report["input"]["torn_by_file"].items())
        print(f"cds report: skipped {torn} torn or unreadable line(s): {where}", file=sys.stderr)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    # A BOM lets Excel and WPS read a CSV's Chinese names; the others need none.
    encoding = "utf-8-sig" if args.format == "csv" else "utf-8"
    try:
        with open(args.out, "w", encoding=encoding, newline="") as f:
            f.write(text)
    except OSError as e:
        print(f"cds report: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"cds report: wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
