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
)
from cds.rules.common import NATIONAL_RECOGNITION_POLICY, RuleContext, prior_results

_WARN = str(ReasonCode.RECOGNIZABLE_RESULT_EXISTS)
_EXEMPT = str(ReasonCode.RECOGNITION_EXEMPT_EMERGENCY)
_EMERGENCY = EncounterType.EMERGENCY
_EMPTY: frozenset[str] = frozenset()


class RecognitionRule:
    """One recognition item, compiled: its window, scope and both possible reasons' statics."""

    __slots__ = (
        "_ctx",
        "code",
        "exempt_decision",
        "name",
        "override_options",
        "province",
        "source",
        "validity_days",
        "validity_us",
        "warn_decision",
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

    def check(self, order: Order, rows: Sequence[StoredResult]) -> Reason | None:
        """The recognition reason for this item, or None when no prior result counts."""
        own = order.institution_id
        peers = None if self.province else self._ctx.group_peers.get(own, _EMPTY)
        prior = prior_results(
            rows, order.order_time_us, self.validity_us, recognised_at=own, peers=peers
        )
        return self._reason(order, prior) if prior else None

    def _reason(self, order: Order, prior: tuple[PriorResult, ...]) -> Reason:
        found = (
            f"「{self.name}」有 {len(prior)} 份可互认的既往结果"
            f"（互认有效期 {self.validity_days} 天），"
            f"最近一次为 {self._ctx.newest(prior)}"
        )
        if order.encounter_type == _EMERGENCY:
            return Reason(
                _EXEMPT,
                self.exempt_decision,
                f"急诊免于互认提醒：{found}。",
                prior,
                (),
                self.source,
            )
        return Reason(
            _WARN,
            self.warn_decision,
            f"{found}，请优先互认；如需复查，请选择不予互认的理由。",
            prior,
            self.override_options,
            self.source,
        )
