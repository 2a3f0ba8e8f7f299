"""What a catalogue change does to clinicians: recent orders' lines whose answer changes.

An :class:`Impact` compares two evaluations of the same orders, one per catalogue, line
by line. A line *changes* when its decision or its set of reason codes differs (a new
reason on a line that was already warned is a different prompt on the order screen; a
reworded message is not a change of what it says). Changed lines are grouped by
(item code, decision before, decision after, reasons added, reasons removed), which is
what an administrator reads: "血清钾: 1,240 lines ALLOW -> WARN, +RECOGNIZABLE_RESULT_EXISTS".

Only codes and counts: no patient, order or clinician is ever in an Impact, so it may
be returned, logged at INFO and sent between processes.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from cds.domain import Decision, Evaluation

# (item_code, before, after, reasons_added, reasons_removed)
RowKey = tuple[str, int, int, tuple[str, ...], tuple[str, ...]]


class ImpactRow(NamedTuple):
    item_code: str
    before: Decision
    after: Decision
    lines: int
    reasons_added: tuple[str, ...]
    reasons_removed: tuple[str, ...]

    @classmethod
    def of(
        cls,
        item_code: str,
        before: int,
        after: int,
        lines: int,
        added: Iterable[str],
        removed: Iterable[str],
    ) -> ImpactRow:
        """From wire values (decisions as their numbers)."""
        return cls(
            item_code, Decision(before), Decision(after), lines, tuple(added), tuple(removed)
        )


class Impact(NamedTuple):
    orders_replayed: int
    lines_changed: int
    rows: tuple[ImpactRow, ...]  # most lines first

    @classmethod
    def of(cls, orders: int, changed: Counter[RowKey]) -> Impact:
        rows = sorted(
            (
                ImpactRow.of(code, before, after, n, added, removed)
                for (code, before, after, added, removed), n in changed.items()
            ),
            key=_biggest_first,
        )
        return cls(orders, sum(changed.values()), tuple(rows))

    def as_json(self) -> dict[str, Any]:
        """For the control channel between the processes of ``--workers N``."""
        return {
            "orders_replayed": self.orders_replayed,
            "rows": [
                [r.item_code, int(r.before), int(r.after), r.lines,
                 list(r.reasons_added), list(r.reasons_removed)]
                for r in self.rows
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Impact:
        changed: Counter[RowKey] = Counter()
        for code, before, after, lines, added, removed in data["rows"]:
            changed[(code, before, after, tuple(added), tuple(removed))] += lines
        return cls.of(data["orders_replayed"], changed)

    @classmethod
    def total(cls, impacts: Iterable[Impact]) -> Impact:
        """The sum of several processes' impacts (each replayed its own orders)."""
        orders = 0
        changed: Counter[RowKey] = Counter()
        for impact in impacts:
            orders += impact.orders_replayed
            for r in impact.rows:
                key = (r.item_code, int(r.before), int(r.after), r.reasons_added, r.reasons_removed)
                changed[key] += r.lines
        return cls.of(orders, changed)


NO_IMPACT = Impact(0, 0, ())


def _biggest_first(row: ImpactRow) -> tuple[int, str, int, int, tuple[str, ...], tuple[str, ...]]:
    return (
        -row.lines,
        row.item_code,
        row.before,
        row.after,
        row.reasons_added,
        row.reasons_removed,
    )


class ImpactTally:
    """Counts changed lines as pairs of evaluations of the same orders come in."""

    __slots__ = ("changed", "orders")

    def __init__(self) -> None:
        self.orders = 0
        self.changed: Counter[RowKey] = Counter()

    def add(self, before: Evaluation, after: Evaluation) -> None:
        self.orders += 1
        for was, now in zip(before.items, after.items, strict=True):
            if not was.reasons and not now.reasons:
                continue  # most lines: nothing to say under either catalogue
            old = {r.code for r in was.reasons}
            new = {r.code for r in now.reasons}
            if was.decision == now.decision and old == new:
                continue
            key = (
                was.item_code,
                int(was.decision),
                int(now.decision),
                tuple(sorted(new - old)),
                tuple(sorted(old - new)),
            )
            self.changed[key] += 1

    def impact(self) -> Impact:
        return Impact.of(self.orders, self.changed)


# Rows an administrator reads in a terminal; the JSON form has them all.
TABLE_ROWS = 40


def render(impact: Impact, names: Mapping[str, str] | None = None, limit: int = TABLE_ROWS) -> str:
    """The impact as a terminal reads it: a summary line, then the biggest changes.

    ``names`` (item code -> name) labels the rows where known. Columns are aligned by
    display width, so Chinese names (two columns a character) do not skew them.
    """
    names = names or {}
    if not impact.orders_replayed:
        return (
            "impact: no recent orders to replay (none checked in the last 24 hours, "
            "or the server keeps none: --replay-orders 0)"
        )
    head = (
        f"impact: {impact.orders_replayed:,} recent orders replayed, "
        f"{impact.lines_changed:,} lines answered differently"
    )
    if not impact.rows:
        return head
    header = ("lines", "item", "name", "before -> after", "reasons")
    table = [header] + [
        (
            f"{r.lines:,}",
            r.item_code,
            names.get(r.item_code, ""),
            f"{r.before.name} -> {r.after.name}",
            " ".join([*(f"+{c}" for c in r.reasons_added), *(f"-{c}" for c in r.reasons_removed)]),
        )
        for r in impact.rows[:limit]
    ]
    widths = [max(_width(row[k]) for row in table) for k in range(len(header))]
    lines = [head, ""]
    for row in table:
        cells = [_pad(row[0], widths[0], right=True)]
        cells += [_pad(cell, width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    if len(impact.rows) > limit:
        rest = impact.rows[limit:]
        lines.append(
            f"... and {len(rest)} more rows ({sum(r.lines for r in rest):,} lines); "
            "--format json lists them all"
        )
    return "\n".join(lines)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, *, right: bool = False) -> str:
    space = " " * (width - _width(text))
    return space + text if right else text + space
