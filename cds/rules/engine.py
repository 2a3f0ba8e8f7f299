"""The rule engine: one order plus the patient's prior results in, decisions out.

An ``Engine`` is built once per catalogue load and then shared read-only by every
request; the server swaps the reference on reload. Building it compiles the catalogue
into one plan per known item code, so evaluating a line is a dict look-up and, for
lines no rule touches, nothing else: no formatting, just one ItemDecision.
"""

from __future__ import annotations

from typing import NamedTuple

from cds.catalog.snapshot import Snapshot
from cds.domain import (
    Decision,
    Evaluation,
    ItemCategory,
    ItemDecision,
    Order,
    Reason,
    SilentReason,
    new_tuple,
)
from cds.results.base import PatientResults
from cds.rules.common import RuleContext
from cds.rules.duplicates import DuplicateRule
from cds.rules.gene_tests import GeneTestRule, NotInCatalogue
from cds.rules.recognition import RecognitionRule

_ALLOW = Decision.ALLOW
_NOTHING_SILENT: tuple[SilentReason, ...] = ()
_GENE_TEST = ItemCategory.GENE_TEST


class _Plan(NamedTuple):
    """Everything the catalogue says about one item code."""

    name: str
    recognition: RecognitionRule | None
    gene_test: GeneTestRule | None


def _decision_of(reason: Reason) -> Decision:
    return reason.decision


def _hush(found: list[Reason], line: int, hushed: list[SilentReason]) -> None:
    """Move the silent reasons of line ``line`` out of ``found`` (in place) into ``hushed``."""
    shown = [r for r in found if not r.silent]
    if len(shown) != len(found):
        hushed.extend(new_tuple(SilentReason, (line, r)) for r in found if r.silent)
        found[:] = shown


class Engine:
    """Compiled rules for one Snapshot; built once per catalogue load, then shared read-only."""

    __slots__ = ("_ctx", "_duplicate", "_not_in_catalogue", "_plans", "_silent_rules", "snapshot")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        ctx = RuleContext.from_snapshot(snapshot)
        self._ctx = ctx
        self._duplicate = DuplicateRule(ctx)
        self._not_in_catalogue = NotInCatalogue(ctx)
        labs = dict(snapshot.sendout_labs)
        recognition = {
            code: RecognitionRule(item, ctx) for code, item in snapshot.recognition_items.items()
        }
        genes = {code: GeneTestRule(test, labs, ctx) for code, test in snapshot.gene_tests.items()}
        plans: dict[str, _Plan] = {}
        for code in recognition.keys() | genes.keys():
            recog = recognition.get(code)
            gene = genes.get(code)
            # A code on both lists is named and cited as the gene test.
            if gene is not None:
                plans[code] = _Plan(gene.name, recog, gene)
            elif recog is not None:
                plans[code] = _Plan(recog.name, recog, None)
        self._plans = plans
        self._silent_rules = bool(snapshot.silent_codes) or any(
            entry.silent
            for entries in (snapshot.recognition_items, snapshot.gene_tests)
            for entry in entries.values()
        )

    def evaluate(self, order: Order, results: PatientResults) -> Evaluation:
        """Every reason for every line; item = most severe reason, overall = most severe item."""
        plans = self._plans
        items = order.items
        first_line: dict[str, str] | None = {} if len(items) > 1 else None
        found: list[Reason] = []
        decided: list[ItemDecision] = []
        # Only a catalogue with silent rules pays for separating their reasons.
        hushed: list[SilentReason] | None = [] if self._silent_rules else None
        worst = _ALLOW
        for item in items:
            code = item.item_code
            plan = plans.get(code)
            if first_line is not None:
                first = first_line.get(code)
                if first is None:
                    first_line[code] = item.line_id
                else:
                    name = code if plan is None else plan.name
                    found.append(self._duplicate.reason(code, name, first))
            if plan is None:
                if item.category == _GENE_TEST:
                    found.append(self._not_in_catalogue(code))
            else:
                rows = results.get(code)
                recog = plan.recognition
                if recog is not None and rows:
                    reason = recog.check(order, rows)
                    if reason is not None:
                        found.append(reason)
                gene = plan.gene_test
                if gene is not None:
                    gene.check(order, item, rows, found)
                elif item.category == _GENE_TEST:
                    found.append(self._not_in_catalogue(code))
            if found and hushed is not None:
                _hush(found, len(decided), hushed)
            if found:
                decision = max(map(_decision_of, found))
                decided.append(
                    new_tuple(ItemDecision, (item.line_id, code, decision, tuple(found)))
                )
                found.clear()
                if decision > worst:
                    worst = decision
            else:
                decided.append(new_tuple(ItemDecision, (item.line_id, code, _ALLOW, ())))
        silent = tuple(hushed) if hushed else _NOTHING_SILENT
        return new_tuple(Evaluation, (worst, tuple(decided), silent))
