"""What the service remembers about recent decisions, so feedback can be checked.

Feedback arrives minutes after the Check, naming only ``decision_id`` and ``line_id``.
To answer it we need the line's reasons (which ones offer override options, and which
options were offered) and, for the log, the patient, institution, department and the
catalogue version. The contract asks for at least an hour, bounded in count (default
100,000): a ``cachetools.TTLCache`` gives both, the least recently used entry going
first when the bound is reached.

The record keeps a reference to the engine's :class:`~cds.domain.Evaluation` rather
than copying lines into a new structure: it is already built and immutable, so
remembering costs one small tuple per Check instead of a dict per order. It holds no
diagnoses or order details beyond what the decision itself says.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from cachetools import TTLCache

from cds.config import DEFAULT_DECISION_TTL_SECONDS, DEFAULT_MAX_DECISIONS
from cds.domain import Evaluation, FeedbackOutcome, ItemDecision, Order, OverrideOption


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
        self._decisions: TTLCache[str, Remembered] = TTLCache(max_decisions, ttl_seconds, timer)
        self._feedback: TTLCache[tuple[str, str], FeedbackKey] = TTLCache(
            max_decisions, ttl_seconds, timer
        )

    def remember(
        self, decision_id: str, order: Order, evaluation: Evaluation, catalog_version: str
    ) -> None:
        self._decisions[decision_id] = Remembered(
            order.patient_id,
            order.clinician_id,
            order.institution_id,
            order.department_id,
            catalog_version,
            evaluation,
        )

    def recall(self, decision_id: str) -> Remembered | None:
        return self._decisions.get(decision_id)

    async def start(self) -> None:
        """Nothing to start here; a shared memory starts its writer."""

    async def close(self) -> None:
        """Nothing to flush here; a shared memory writes what is still queued."""

    async def lookup(self, decision_id: str) -> Remembered | None:
        """What feedback uses: here :meth:`recall`; a shared memory also asks Redis
        (cds.shared_decisions) and may raise ``ResultsUnavailable``."""
        return self._decisions.get(decision_id)

    def __len__(self) -> int:
        return len(self._decisions)

    def already_recorded(self, decision_id: str, line_id: str, feedback: FeedbackKey) -> bool:
        """True when exactly this feedback was recorded for the line (a retry)."""
        return self._feedback.get((decision_id, line_id)) == feedback

    def mark_recorded(self, decision_id: str, line_id: str, feedback: FeedbackKey) -> None:
        self._feedback[(decision_id, line_id)] = feedback

    def forget_recorded(self, decision_id: str, line_id: str) -> None:
        self._feedback.pop((decision_id, line_id), None)


def find_line(remembered: Remembered, line_id: str) -> ItemDecision | None:
    for item in remembered.evaluation.items:
        if item.line_id == line_id:
            return item
    return None


def offered_overrides(line: ItemDecision) -> dict[str, OverrideOption]:
    """Override options the clinician was shown on this line, by code."""
    return {o.code: o for r in line.reasons for o in r.override_options}


class FeedbackRecord(NamedTuple):
    """One feedback, with what the log needs from the decision it answers."""

    decision_id: str
    line_id: str
    outcome: FeedbackOutcome
    override_code: str
    comment: str
    clinician_id: str
    at_us: int
    remembered: Remembered
    line: ItemDecision


class DecisionRecorder(Protocol):
    """Where decisions and feedback go for supervision (the durable decision log).

    ``decision`` is called on the Check path for WARN and BLOCK decisions and must not
    block; ``feedback`` returns only once the record is durable, because the
    clinician's override is acknowledged on that promise.
    """

    def decision(
        self,
        decision_id: str,
        order: Order,
        evaluation: Evaluation,
        catalog_version: str,
        degraded: Sequence[str],
        at_us: int,
    ) -> None: ...

    async def feedback(self, record: FeedbackRecord) -> None: ...

    def reload_keys(self, pseudonym_key: str) -> None:
        """Re-read the pseudonym key file (rotation); raise and keep the old keys on error."""
        ...

    async def close(self) -> None: ...
