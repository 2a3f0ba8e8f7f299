"""The order-time check: one validated Order in, the decision out, remembered and logged.

It reads the active catalogue reference once, so a reload during the call cannot mix
versions, and it never fails because of the results store: if the store cannot answer,
the order is judged on the catalogue rules alone and the answer says
``degraded: RESULTS_UNAVAILABLE``. The allow path does no logging and no formatting
beyond the decision id; metric children are resolved at construction.
"""

from __future__ import annotations

from typing import NamedTuple

from cds.decisions.log import DecisionEntry
from cds.decisions.memory import DecisionIds, DecisionMemory
from cds.decisions.recorder import DecisionRecorder
from cds.domain import RESULTS_UNAVAILABLE, Decision, Evaluation, Order, new_tuple
from cds.metrics import Metrics
from cds.results.base import EMPTY_RESULTS, ResultStore, ResultsUnavailable
from cds.rollout.replay import RecentOrders
from cds.rollout.state import CatalogState

_DEGRADED_RESULTS = (RESULTS_UNAVAILABLE,)
_NOT_DEGRADED: tuple[str, ...] = ()
_ALLOW = Decision.ALLOW


class Checked(NamedTuple):
    """One answered order: what the front door turns into its response."""

    decision_id: str
    catalog_version: str
    evaluation: Evaluation
    degraded: tuple[str, ...]


class OrderChecker:
    __slots__ = (
        "_degraded",
        "_ids",
        "_item_counters",
        "_keep",
        "_memory",
        "_reason_counters",
        "_recorder",
        "_silent_counters",
        "_state",
        "_store",
    )

    def __init__(
        self,
        state: CatalogState,
        store: ResultStore,
        memory: DecisionMemory,
        metrics: Metrics,
        recorder: DecisionRecorder,
        ids: DecisionIds | None = None,
        recent: RecentOrders | None = None,
    ) -> None:
        self._state = state
        self._store = store
        self._memory = memory
        self._recorder = recorder
        self._ids = ids or DecisionIds()
        self._item_counters = metrics.item_decisions
        self._reason_counters = metrics.reasons
        self._silent_counters = metrics.silent_reasons
        self._degraded = metrics.degraded_results
        # Where orders are kept to preview a catalogue change on (None: nowhere).
        self._keep = recent.record if recent is not None else None

    async def check(self, order: Order, now_us: int) -> Checked:
        active = self._state.active  # read once: this call sees one catalogue to its end
        # No per-call asyncio.timeout here: the in-process store never suspends, and a
        # store that can stall (Redis) bounds its own calls and raises one of these.
        try:
            results = await self._store.get_patient(order.patient_id)
            degraded = _NOT_DEGRADED
        except (ResultsUnavailable, TimeoutError):
            results = EMPTY_RESULTS
            degraded = _DEGRADED_RESULTS
            self._degraded.inc()
        evaluation = active.engine.evaluate(order, results)
        if self._keep is not None:
            self._keep(order)
        decision_id = self._ids()
        version = active.version
        self._memory.remember(decision_id, order, evaluation, version)
        item_counters = self._item_counters
        reason_counters = self._reason_counters
        for item in evaluation.items:
            item_counters[item.decision].inc()
            for reason in item.reasons:
                reason_counters[reason.code].inc()
        silent = evaluation.silent
        for hushed in silent:
            self._silent_counters[hushed.reason.code].inc()
        if evaluation.decision > _ALLOW or silent:
            entry = (decision_id, order, evaluation, version, degraded, now_us)
            self._recorder.decision(new_tuple(DecisionEntry, entry))
        return new_tuple(Checked, (decision_id, version, evaluation, degraded))
