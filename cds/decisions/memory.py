"""What the service remembers about recent decisions, so feedback can be checked.

Feedback arrives minutes after the Check, naming only ``decision_id`` and ``line_id``.
To answer it we need the line's reasons (which ones offer override options, and which
options were offered) and, for the log, the patient, institution, department and the
catalogue version. The contract asks for at least an hour, bounded in count (default
100,000). Every decision has the same time to live and they arrive in time order, so
an ``OrderedDict`` in insertion order is both the expiry queue and the bound: the
oldest decision goes first either way, far cheaper per Check than a
``cachetools.TTLCache``, which keeps a link object and an LRU entry per key.

What is kept is the decision as it was answered, but as plain tuples of strings and
ints (:func:`_compact`), rebuilt into domain objects only when feedback asks
(:meth:`DecisionMemory.recall`). Plain tuples of untracked values are dropped from the
cyclic garbage collector's lists after its first look at them; the domain NamedTuples
and enums never are. A hundred thousand remembered decisions as NamedTuples were half a
million tracked objects, walked by every full collection (a stall of the event loop
every few seconds under load); compacted, they cost a collection nothing.
The record holds no diagnoses or order details beyond what the decision itself says.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from cachetools import TTLCache

from cds.config import DEFAULT_DECISION_TTL_SECONDS, DEFAULT_MAX_DECISIONS
from cds.domain import (
    Decision,
    Evaluation,
    ItemDecision,
    Order,
    OverrideOption,
    PriorResult,
    Reason,
)


class Remembered(NamedTuple):
    patient_id: str
    clinician_id: str
    institution_id: str
    department_id: str
    catalog_version: str
    evaluation: Evaluation


class FeedbackKey(NamedTuple):
    outcome: int
    override_code: str
    comment: str
    clinician_id: str


class DecisionIds:
    """Unique ids without a uuid per call: a random per-process prefix and a counter.

    The prefix (64 random bits) keeps ids unique across restarts and across worker
    processes; the counter keeps them unique within one.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = (prefix if prefix is not None else secrets.token_hex(8)) + "-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return self._prefix + str(next(self._counter))


# A remembered decision is one flat tuple of str/int/float values:
#   expires_at, patient_id, clinician_id, institution_id, department_id,
#   catalog_version, decision, then per line
#   line_id, item_code, decision, number of reasons, then per reason
#   code, decision, message, source, override options, number of prior results,
#   then per prior result its five fields.
# Flat on purpose: the collector untracks a tuple only once everything in it is
# untracked, one nesting level per collection, so nested tuples would linger for
# several full collections; a flat one goes on its first young collection.
_Record = tuple[Any, ...]
_EXPIRES = 0
_HEADER = 7
# Override options of a catalogue, compacted once (code, display, requires_comment,
# code, ...): the same tuple object for every reason that offers them. Emptied when a
# run of reloads fills it.
_OPTIONS_CACHE_MAX = 64


class _Compactor:
    """Evaluation -> flat record, sharing one compacted copy of each override list."""

    __slots__ = ("_options",)

    def __init__(self) -> None:
        self._options: dict[int, tuple[tuple[OverrideOption, ...], tuple[Any, ...]]] = {}

    def options(self, options: tuple[OverrideOption, ...]) -> tuple[Any, ...]:
        if not options:
            return ()
        cached = self._options.get(id(options))
        if cached is not None and cached[0] is options:
            return cached[1]
        if len(self._options) >= _OPTIONS_CACHE_MAX:
            self._options.clear()
        compact = tuple([v for o in options for v in (o.code, o.display, bool(o.requires_comment))])
        self._options[id(options)] = (options, compact)  # the key object stays alive
        return compact

    def record(self, head: list[Any], evaluation: Evaluation) -> _Record:
        out = head
        for i in evaluation.items:
            reasons = i.reasons
            out += (i.line_id, i.item_code, int(i.decision), len(reasons))
            for r in reasons:
                prior = r.prior_results
                out += (
                    r.code,
                    int(r.decision),
                    r.message,
                    r.source,
                    self.options(r.override_options),
                    len(prior),
                )
                for p in prior:
                    out += p
        return tuple(out)


def _rebuild(record: _Record) -> Remembered:
    patient, clinician, institution, department, version, decision = record[1:_HEADER]
    lines: list[ItemDecision] = []
    pos = _HEADER
    end = len(record)
    while pos < end:
        line_id, item_code, line_decision, n_reasons = record[pos : pos + 4]
        pos += 4
        reasons: list[Reason] = []
        for _ in range(n_reasons):
            code, reason_decision, message, source, options, n_prior = record[pos : pos + 6]
            pos += 6
            prior = tuple(
                PriorResult(*record[pos + 5 * k : pos + 5 * k + 5]) for k in range(n_prior)
            )
            pos += 5 * n_prior
            reasons.append(
                Reason(
                    code,
                    Decision(reason_decision),
                    message,
                    prior,
                    tuple(OverrideOption(*options[k : k + 3]) for k in range(0, len(options), 3)),
                    source,
                )
            )
        lines.append(ItemDecision(line_id, item_code, Decision(line_decision), tuple(reasons)))
    return Remembered(
        patient,
        clinician,
        institution,
        department,
        version,
        Evaluation(Decision(decision), tuple(lines)),
    )


class DecisionMemory:
    """Recent decisions by id, and the feedback already recorded for their lines."""

    def __init__(
        self,
        max_decisions: int = DEFAULT_MAX_DECISIONS,
        ttl_seconds: float = DEFAULT_DECISION_TTL_SECONDS,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_decisions < 1:
            raise ValueError("max_decisions must be at least 1")
        self._max = max_decisions
        self._ttl = ttl_seconds
        self._timer = timer
        self._decisions: OrderedDict[str, _Record] = OrderedDict()
        self._compactor = _Compactor()
        self._feedback: TTLCache[tuple[str, str], FeedbackKey] = TTLCache(
            max_decisions, ttl_seconds, timer
        )

    def remember(
        self, decision_id: str, order: Order, evaluation: Evaluation, catalog_version: str
    ) -> None:
        now = self._timer()
        decisions = self._decisions
        decisions[decision_id] = self._compactor.record(
            [
                now + self._ttl,
                order.patient_id,
                order.clinician_id,
                order.institution_id,
                order.department_id,
                catalog_version,
                int(evaluation.decision),
            ],
            evaluation,
        )
        if len(decisions) > self._max:
            decisions.popitem(last=False)
        # Same TTL for all, inserted in time order: the expired ones are at the front.
        oldest = next(iter(decisions.values()))
        while oldest[_EXPIRES] <= now:
            decisions.popitem(last=False)
            if not decisions:
                break  # a TTL of 0 keeps nothing
            oldest = next(iter(decisions.values()))

    def recall(self, decision_id: str) -> Remembered | None:
        record = self._decisions.get(decision_id)
        if record is None or record[_EXPIRES] <= self._timer():
            return None
        return _rebuild(record)

    async def start(self) -> None:
        """Nothing to start here; a shared memory starts its writer."""

    async def close(self) -> None:
        """Nothing to flush here; a shared memory writes what is still queued."""

    async def lookup(self, decision_id: str) -> Remembered | None:
        """What feedback uses: here :meth:`recall`; a shared memory also asks Redis
        (cds.decisions.shared) and may raise ``ResultsUnavailable``."""
        return self.recall(decision_id)

    def __len__(self) -> int:
        return len(self._decisions)

    def last_recorded(self, decision_id: str, line_id: str) -> FeedbackKey | None:
        """The feedback this process last recorded for the line (a change of mind
        replaces it: the live recognition figures count only the latest)."""
        return self._feedback.get((decision_id, line_id))

    def mark_recorded(self, decision_id: str, line_id: str, feedback: FeedbackKey) -> None:
        self._feedback[(decision_id, line_id)] = feedback


def find_line(remembered: Remembered, line_id: str) -> ItemDecision | None:
    for item in remembered.evaluation.items:
        if item.line_id == line_id:
            return item
    return None


def offered_overrides(line: ItemDecision) -> dict[str, OverrideOption]:
    """Override options the clinician was shown on this line, by code."""
    return {o.code: o for r in line.reasons for o in r.override_options}
