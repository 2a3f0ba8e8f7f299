"""Mutual recognition of prior results (检查检验结果互认), and its emergency exemption.

A prior result counts when it is inside the item's validity window at the order time
(both ends inclusive), and comes either from the ordering institution itself or, with
the HR quality mark, from an institution the item's scope covers. The store is not
trusted to have applied windows or ordering: every window is checked here and counted
results are sorted newest first, so a store bug cannot change a judgement.
"""

from __future__ import annotations

from collections.abc import Sequence

from cds.catalog.snapshot import RecognitionItem
from cds.domain import (
    EncounterType,
    Order,
    PriorResult,
    Reason,
    ReasonCode,
    StoredResult,
    new_tuple,
)
from cds.rules.common import NATIONAL_RECOGNITION_POLICY, RuleContext, listed, prior_results

_WARN = str(ReasonCode.RECOGNIZABLE_RESULT_EXISTS)
_EXEMPT = str(ReasonCode.RECOGNITION_EXEMPT_EMERGENCY)
_EMERGENCY = EncounterType.EMERGENCY
_EMPTY: frozenset[str] = frozenset()


class RecognitionRule:
    """One recognition item, compiled: its window, scope and both possible reasons' statics."""

    __slots__ = (
        "_ctx",
        "code",
        "days_text",
        "exempt_decision",
        "exempt_message",
        "exempt_silent",
        "name",
        "override_options",
        "province",
        "source",
        "validity_days",
        "validity_us",
        "warn_decision",
        "warn_message",
        "warn_silent",
    )

    def __init__(self, item: RecognitionItem, ctx: RuleContext) -> None:
        self._ctx = ctx
        self.code = item.code
        self.name = item.name or item.code
        self.validity_days = item.validity_days
        self.validity_us = item.validity_us
        self.province = item.scope != "GROUP"
        self.source = item.source or NATIONAL_RECOGNITION_POLICY
        self.warn_decision = ctx.severity[_WARN]
        self.exempt_decision = ctx.severity[_EXEMPT]
        self.override_options = ctx.override_options
        self.days_text = str(item.validity_days)  # formatted once, not per reason
        self.warn_message = ctx.wording[_WARN]
        self.exempt_message = ctx.wording[_EXEMPT]
        self.warn_silent = item.silent or _WARN in ctx.silent_codes
        self.exempt_silent = item.silent or _EXEMPT in ctx.silent_codes

    def check(self, order: Order, rows: Sequence[StoredResult]) -> Reason | None:
        """The recognition reason for this item, or None when no prior result counts."""
        own = order.institution_id
        peers = None if self.province else self._ctx.group_peers.get(own, _EMPTY)
        prior = prior_results(
            rows, order.order_time_us, self.validity_us, recognised_at=own, peers=peers
        )
        return self._reason(order, prior) if prior else None

    def _reason(self, order: Order, prior: tuple[PriorResult, ...]) -> Reason:
        ctx = self._ctx
        newest = prior[0]
        day = ctx.day(newest.reported_at_us)
        institution = ctx.institution_name(newest.institution_id)
        shown, omitted = listed(prior)
        if order.encounter_type == _EMERGENCY:
            return new_tuple(
                Reason,
                (
                    _EXEMPT,
                    self.exempt_decision,
                    self.exempt_message(
                        self.code, self.name, self.days_text, len(prior), day, institution
                    ),
                    shown,
                    (),
                    self.source,
                    self.exempt_silent,
                    omitted,
                ),
            )
        return new_tuple(
            Reason,
            (
                _WARN,
                self.warn_decision,
                self.warn_message(
                    self.code, self.name, self.days_text, len(prior), day, institution
                ),
                shown,
                self.override_options,
                self.source,
                self.warn_silent,
                omitted,
            ),
        )
