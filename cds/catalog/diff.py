"""What an administrator reads about catalogues: a summary of one, the changes between two.

Both run offline (``cds catalog validate``, ``cds catalog reload --dry-run``) and say
the same thing for the same pair of files: lines come in a fixed order, codes sorted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from cds.catalog.snapshot import GeneTest, Snapshot
from cds.domain import DEFAULT_SEVERITY, ItemCategory, ReasonCode

# --------------------------------------------------------------------------- diff


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, ItemCategory):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _show_member(value: Any) -> str:
    return "/".join(value) if isinstance(value, tuple) else str(value)


def _field_change(field: str, old: Any, new: Any) -> str:
    if isinstance(old, frozenset) and isinstance(new, frozenset):
        parts = []
        if added := sorted(new - old):
            parts.append("+[" + ", ".join(_show_member(v) for v in added) + "]")
        if removed := sorted(old - new):
            parts.append("-[" + ", ".join(_show_member(v) for v in removed) + "]")
        return f"{field} {' '.join(parts)}"
    return f"{field} {_show(old)} -> {_show(new)}"


class _Kind(NamedTuple):
    label: str
    entries: Callable[[Snapshot], Mapping[str, Any]]
    # Fields an administrator sets; derived ones (qualification_end_us) are left out.
    fields: tuple[str, ...]
    title: Callable[[Any], str] = lambda e: e.name


_KINDS = (
    _Kind("institution", lambda s: s.institutions, ("name", "level", "groups")),
    _Kind(
        "recognition item",
        lambda s: s.recognition_items,
        ("name", "category", "validity_days", "scope", "source", "price_fen", "silent"),
    ),
    _Kind(
        "gene test",
        lambda s: s.gene_tests,
        tuple(f for f in GeneTest._fields if f != "code"),
    ),
    _Kind(
        "send-out lab",
        lambda s: s.sendout_labs,
        ("name", "qualification_valid_until", "approved"),
    ),
    _Kind(
        "override reason",
        lambda s: s.override_reasons,
        ("display", "requires_comment"),
        lambda e: e.display,
    ),
)


def _entity_changes(kind: _Kind, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    lines = []
    for code in sorted(old.keys() | new.keys()):
        before, after = old.get(code), new.get(code)
        if before is None:
            lines.append(f"{kind.label} {code} ({kind.title(after)}) added")
            continue
        name = kind.title(before)
        if after is None:
            lines.append(f"{kind.label} {code} ({name}) removed")
            continue
        if before == after:  # one C-level comparison for the common unchanged entry
            continue
        changed = [
            _field_change(f, getattr(before, f), getattr(after, f))
            for f in kind.fields
            if getattr(before, f) != getattr(after, f)
        ]
        if changed:
            lines.append(f"{kind.label} {code} ({name}): {'; '.join(changed)}")
    return lines


def diff_snapshots(old: Snapshot | None, new: Snapshot, *, limit: int = 500) -> list[str]:
    """What an administrator would want to read before activating ``new``.

    Lines come in a fixed order (catalogue fields, institutions, recognition items, gene
    tests, send-out labs, override reasons, policy, messages; codes sorted within each), so a dry
    run and the real reload say the same thing. Never empty: an unchanged catalogue
    says so. At most ``limit`` lines, the last one counting what was left out, because
    a wholesale replacement of a provincial list could otherwise produce thousands.
    """
    if old is None:
        return [f"no active catalogue; activating version {new.version} ({_counts(new)})"]
    lines: list[str] = []
    for field in ("version", "effective_date", "timezone", "code_system", "report_url_template"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            lines.append(f"{field}: {before or '(none)'} -> {after or '(none)'}")
    for kind in _KINDS:
        lines.extend(_entity_changes(kind, kind.entries(old), kind.entries(new)))
    old_order = [o.code for o in old.override_options]
    new_order = [o.code for o in new.override_options]
    if old_order != new_order and set(old_order) == set(new_order):
        lines.append(f"override reasons reordered: {', '.join(new_order)}")
    for code in ReasonCode:
        before_d, after_d = _policy(old, code), _policy(new, code)
        if before_d != after_d:
            lines.append(f"policy severity {code}: {before_d} -> {after_d}")
    lines.extend(_message_changes(old.messages, new.messages))
    if not lines:
        if old.digest and old.digest == new.digest:
            return [f"no changes: identical file (version {new.version})"]
        return [f"no changes to any rule (version {new.version}; only notes or layout differ)"]
    if lines and old.version == new.version:
        lines.insert(0, f"version unchanged ({new.version}) although the content changed")
    if len(lines) > limit:
        rest = len(lines) - (limit - 1)
        lines = [*lines[: limit - 1], f"... and {rest} more changes ({len(lines)} in all)"]
    return lines


def _policy(snapshot: Snapshot, code: str) -> str:
    return "SILENT" if code in snapshot.silent_codes else snapshot.severity[code].name


def _message_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    lines = []
    for code in ReasonCode:
        before, after = old.get(code), new.get(code)
        if before == after:
            continue
        if before is None:
            lines.append(f"message {code}: catalogue wording {after!r} instead of the built-in")
        elif after is None:
            lines.append(f"message {code}: back to the built-in wording")
        else:
            lines.append(f"message {code}: {before!r} -> {after!r}")
    return lines


# --------------------------------------------------------------------------- summary


def _counts(snapshot: Snapshot) -> str:
    return (
        f"{len(snapshot.institutions)} institutions, "
        f"{len(snapshot.recognition_items)} recognition items, "
        f"{len(snapshot.gene_tests)} gene tests, "
        f"{len(snapshot.sendout_labs)} send-out labs, "
        f"{len(snapshot.override_reasons)} override reasons"
    )


def _worded(snapshot: Snapshot) -> str:
    codes = [str(c) for c in ReasonCode if c in snapshot.messages]
    return f"catalogue wording for {', '.join(codes)}" if codes else "built-in wording"


def summarize(snapshot: Snapshot) -> str:
    """The few lines ``cds catalog validate`` prints for a good catalogue."""
    items = snapshot.recognition_items.values()
    labs = sum(1 for i in items if i.category is ItemCategory.LAB)
    group = sum(1 for i in items if i.scope == "GROUP")
    unpriced = sum(1 for g in snapshot.gene_tests.values() if g.price_item_code is None)
    changed = [
        f"{code}={_policy(snapshot, code)}"
        for code, decision in snapshot.severity.items()
        if DEFAULT_SEVERITY[ReasonCode(code)] != decision or code in snapshot.silent_codes
    ]
    silent_entries = sum(1 for i in items if i.silent) + sum(
        1 for g in snapshot.gene_tests.values() if g.silent
    )
    lines = [
        f"catalogue version {snapshot.version}",
        f"effective date: {snapshot.effective_date or '(not set)'}; time zone: {snapshot.timezone}",
        f"institutions: {len(snapshot.institutions)}",
        f"recognition items: {len(items)} ({labs} LAB, {len(items) - labs} EXAM; "
        f"{group} GROUP scope)",
        f"gene tests: {len(snapshot.gene_tests)} ({unpriced} not priced)",
        f"send-out labs: {len(snapshot.sendout_labs)}",
        f"override reasons: {len(snapshot.override_reasons)}",
        f"policy: {', '.join(changed) if changed else 'default severities'}",
        f"silent entries: {silent_entries}",
        f"messages: {_worded(snapshot)}",
    ]
    if snapshot.source:
        lines.append(f"source: {snapshot.source}")
    if snapshot.digest:
        lines.append(f"sha256: {snapshot.digest}")
    return "\n".join(lines)
