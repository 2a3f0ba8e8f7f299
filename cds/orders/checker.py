"""The order-time check: one validated Order in, the decision out, remembered, counted
and logged.

It reads the active catalogue reference once, so a reload during the call cannot mix
versions, and it never fails because of the results store: if the store cannot answer,
the order is judged on the catalogue rules alone and the answer says
``degraded: RESULTS_UNAVAILABLE``. The allow path does no logging and no formatting
beyond the decision id; metric children are resolved at construction.

Supervision needs denominators, so every line is counted by (institution, department,
item, decision) and every order by institution, into a tree of plain dicts and lists
(:data:`cds.decisions.log.CountsTree`): per Check two dict look-ups, per line one and a
list increment, no key tuple to build or hash. The tree is handed to the decision log
once an interval (:meth:`OrderChecker.take_counts`). Department and item come from the
request, so an interval keeps at most ``max_count_keys`` distinct keys; lines beyond
them are counted under ``None`` ("other") at the level where the new key appeared, and
the writer counts the folded lines.
"""

from __future__ import annotations

import logging
from operator import attrgetter
from typing import Any, NamedTuple

from cds.decisions.log import GENE_FLAG, CountsEntry, CountsTree, DecisionEntry
from cds.decisions.memory import DecisionIds, DecisionMemory
from cds.decisions.recorder import DecisionRecorder
from cds.domain import RESULTS_UNAVAILABLE, Decision, Evaluation, Order, ReasonCode, new_tuple
from cds.metrics import Metrics
from cds.results.base import EMPTY_RESULTS, ResultStore, ResultsUnavailable
from cds.rollout.replay import RecentOrders
from cds.rollout.state import Active, CatalogState

log = logging.getLogger(__name__)

_DEGRADED_RESULTS = (RESULTS_UNAVAILABLE,)
_NOT_DEGRADED: tuple[str, ...] = ()
_ALLOW = Decision.ALLOW
_REMINDED = str(ReasonCode.RECOGNIZABLE_RESULT_EXISTS)
_item_code = attrgetter("item_code")  # of an OrderItem, without a Python frame per line
# Distinct count keys one interval keeps (a busy hospital has a few hundred a minute).
DEFAULT_MAX_COUNT_KEYS = 10_000


class Checked(NamedTuple):
    """One answered order: what the front door turns into its response."""

    decision_id: str
    catalog_version: str
    evaluation: Evaluation
    degraded: tuple[str, ...]


class OrderChecker:
    __slots__ = (
        "_active",
        "_counts",
        "_counts_since_us",
        "_degraded",
        "_gene_codes",
        "_ids",
        "_institutions",
        "_item_counters",
        "_keep",
        "_keys",
        "_max_keys",
        "_memory",
        "_metrics",
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
        *,
        recent: RecentOrders | None = None,
        max_count_keys: int = DEFAULT_MAX_COUNT_KEYS,
        now_us: int = 0,
    ) -> None:
        self._state = state
        self._store = store
        self._memory = memory
        self._recorder = recorder
        self._ids = ids or DecisionIds()
        self._metrics = metrics
        self._item_counters = metrics.item_decisions
        self._reason_counters = metrics.reasons
        self._silent_counters = metrics.silent_reasons
        self._degraded = metrics.degraded_results
        self._max_keys = max_count_keys
        self._counts: CountsTree = {}
        self._keys = 0
        self._counts_since_us = now_us
        self._active: Active | None = None
        self._gene_codes: frozenset[str] = frozenset()
        self._institutions: frozenset[str] = frozenset()
        # Where orders are kept to preview a catalogue change on (None: nowhere).
        self._keep = recent.record if recent is not None else None

    async def check(self, order: Order, now_us: int) -> Checked:
        active = self._state.active  # read once: this call sees one catalogue to its end
        if active is not self._active:
            self._catalogue(active)
        # No per-call asyncio.timeout here: the in-process store never suspends, and a
        # store that can stall (Redis) bounds its own calls and raises one of these.
        try:
            # The ordered codes: the rules read no other (duplicates, recognition and
            # gene tests each look at the line's own code), so the store decodes no other.
            codes = [*map(_item_code, order.items)]
            results = await self._store.get_patient(order.patient_id, codes)
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
        at = self._counts.get(order.institution_id)
        if at is None:
            at = self._new_institution(order.institution_id)
        at[0] += 1
        rows = at[1].get(order.department_id)
        if rows is None:
            rows = self._new_department(at[1], order.department_id)
        # Logged: what was shown (any reason, an ALLOW exemption too) or a gene test.
        logged = evaluation.decision > _ALLOW
        for item in evaluation.items:
            decision = item.decision
            item_counters[decision].inc()
            code = item.item_code
            row = rows.get(code)
            if row is None:
                row = self._new_row(rows, code)
                if code in self._gene_codes:
                    logged = True  # (a folded row does not know the code)
            row[decision] += 1
            if row[GENE_FLAG]:
                logged = True
            reasons = item.reasons
            if reasons:
                logged = True
                for reason in reasons:
                    code = reason.code
                    reason_counters[code].inc()
                    if code == _REMINDED:
                        self._metrics.recognition_reminded(order.institution_id).inc()
        silent = evaluation.silent
        if silent:
            logged = True
            for hushed in silent:
                self._silent_counters[hushed.reason.code].inc()
        if logged:
            entry = (decision_id, order, evaluation, version, degraded, now_us, self._gene_codes)
            self._recorder.decision(new_tuple(DecisionEntry, entry))
        return new_tuple(Checked, (decision_id, version, evaluation, degraded))

    # -- counting: the rare paths ---------------------------------------------------------

    def _catalogue(self, active: Active) -> None:
        """What counting and logging need of a newly active catalogue, once."""
        self._active = active
        genes = self._gene_codes = frozenset(active.snapshot.gene_tests)
        self._institutions = frozenset(active.snapshot.institutions)
        self._metrics.set_institutions(self._institutions)
        for _orders, departments in self._counts.values():
            for rows in departments.values():
                for code, row in rows.items():
                    row[GENE_FLAG] = int(code in genes)

    def _full(self) -> bool:
        if self._keys >= self._max_keys:
            return True
        self._keys += 1
        return False

    def _new_institution(self, institution: str) -> list[Any]:
        key: str | None = institution
        if self._full() and institution not in self._institutions:
            key = None  # a catalogued institution always keeps its own
        at = self._counts.get(key)
        if at is None:
            at = self._counts[key] = [0, {}]
        return at

    def _new_department(self, departments: dict[str | None, Any], department: str) -> Any:
        key = None if self._full() else department
        rows = departments.get(key)
        if rows is None:
            rows = departments[key] = {}
        return rows

    def _new_row(self, rows: dict[str | None, list[int]], item_code: str) -> list[int]:
        key = None if self._full() else item_code
        row = rows.get(key)
        if row is None:
            # one count per Decision (by its number), then whether the code is a gene test
            row = rows[key] = [0, 0, 0, 0, int(key in self._gene_codes)]
        return row

    def take_counts(self, now_us: int) -> CountsEntry | None:
        """The counts since the last call (None if nothing was checked), and start anew."""
        start = self._counts_since_us
        self._counts_since_us = now_us
        if not self._counts:
            return None
        entry = CountsEntry(start, now_us, self._counts)
        if self._keys >= self._max_keys:
            log.warning(
                "counts: more than %d distinct institutions, departments and items in one "
                "interval; the rest are counted under 'other'",
                self._max_keys,
            )
        self._counts = {}
        self._keys = 0
        return entry
