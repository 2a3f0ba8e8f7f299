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
    new_tuple,
)
from cds.results.base import PatientResults
from cds.rules.common import RuleContext
from cds.rules.duplicates import DuplicateRule
from cds.rules.gene_tests import GeneTestRule, NotInCatalogue
from cds.rules.recognition import RecognitionRule

_ALLOW = Decision.ALLOW
_GENE_TEST = ItemCategory.GENE_TEST


class _Plan(NamedTuple):
    """Everything the catalogue says about one item code."""

    name: str
    recognition: RecognitionRule | None
    gene_test: GeneTestRule | None


def _decision_of(reason: Reason) -> Decision:
    return reason.decision


class Engine:
    """Compiled rules for one Snapshot; built once per catalogue load, then shared read-only."""

    __slots__ = ("_ctx", "_duplicate", "_not_in_catalogue", "_plans", "snapshot")

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

    def evaluate(self, order: Order, results: PatientResults) -> Evaluation:
        """Every reason for every line; item = most severe reason, overall = most severe item."""
        plans = self._plans
        items = order.items
        first_line: dict[str, str] | None = {} if len(items) > 1 else None
        found: list[Reason] = []
        decided: list[ItemDecision] = []
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
        return new_tuple(Evaluation, (worst, tuple(decided)))
