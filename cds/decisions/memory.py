"""What the service remembers about recent decisions, so feedback can be checked.

Feedback arrives minutes after the Check, naming only ``decision_id`` and ``line_id``.
To answer it we need the line's reasons (which ones offer override options, and which
options were offered) and, for the log, the patient, institution, department and the
catalogue version. The contract asks for at least an hour, bounded in count (default
100,000). Every decision has the same time to live and they arrive in time order, so
an ``OrderedDict`` in insertion order is both the expiry queue and the bound: the
oldest decision goes first either way, far cheaper per Check than a
``cachetools.TTLCache``, which keeps a link object and an LRU entry per key.

What is kept is what feedback needs of the decision, as one compact ``bytes`` record
(:func:`encode`), rebuilt into domain objects only when feedback asks
(:meth:`DecisionMemory.recall`). Bytes are never tracked by the cyclic garbage collector
(a hundred thousand decisions as NamedTuples were half a million tracked objects,
walked by every full collection: a stall of the event loop every few seconds under
load), and their size is exact, so the memory is bounded in bytes (``max_bytes``,
``--max-decision-bytes``) as well as in count. The record holds no diagnoses, no
clinician-facing text and no order details beyond what the decision itself says.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
from cachetools import TTLCache

from cds.config import (
    DEFAULT_DECISION_TTL_SECONDS,
    DEFAULT_MAX_DECISION_BYTES,
    DEFAULT_MAX_DECISIONS,
)
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


# A remembered decision is (expires_at, record): ``record`` is one ``bytes``, the JSON of
# one flat list: patient_id, clinician_id, institution_id, department_id,
# catalog_version, decision, then per line: line_id, item_code, decision, number of
# reasons, then per reason: code, decision, [[option_code, requires_comment], ...],
# [prior_result_id, ...].
# Only what feedback and its log record read: not the clinician-facing message, the
# source, the options' display texts or the prior results' other fields (a reason lists
# at most ten). Bytes because they are one object, never tracked by the collector, and
# their size is known exactly, so the memory is bounded by bytes as well as by count:
# held as tuples of domain objects a decision with a prior result cost ~2.2 KB, and one
# of 100 lines with ten prior results each could cost hundreds.
# The same record is what a shared memory writes to Redis (cds.decisions.shared).
# What a remembered decision costs besides its record and id: the OrderedDict's entry
# and link, the (expires_at, record) tuple, the float, the bytes and str headers
# (measured with tracemalloc over 20,000 decisions: benchmarks/decision_memory.py).
ENTRY_OVERHEAD_BYTES = 250


# A catalogue's override options as the record holds them, built once per options tuple
# (every reason of a catalogue shares one): the same list object in every record's dump.
_OPTIONS: dict[int, tuple[tuple[OverrideOption, ...], list[list[Any]]]] = {}
_OPTIONS_MAX = 64
_NO_OPTIONS: list[list[Any]] = []
_NO_IDS: list[str] = []


def _options(options: tuple[OverrideOption, ...]) -> list[list[Any]]:
    if not options:
        return _NO_OPTIONS
    cached = _OPTIONS.get(id(options))
    if cached is not None and cached[0] is options:
        return cached[1]
    if len(_OPTIONS) >= _OPTIONS_MAX:  # a run of reloads: start again
        _OPTIONS.clear()
    compact = [[o.code, o.requires_comment] for o in options]
    _OPTIONS[id(options)] = (options, compact)  # keeps ``options`` alive: ids stay valid
    return compact


def encode(
    patient_id: str,
    clinician_id: str,
    institution_id: str,
    department_id: str,
    catalog_version: str,
    evaluation: Evaluation,
) -> bytes:
    """The compact record of a decision (see above), built flat: a nested list per line
    and reason cost a third more instructions per Check than ``+=`` on one list.

    Copied out of orjson's result: orjson hands back its bytes in the 4 KiB buffer it
    wrote them into (measured by tracemalloc: 4,097 B held for a 20-byte dump), which a
    record kept for an hour must not pin.
    """
    out: list[Any] = [
        patient_id,
        clinician_id,
        institution_id,
        department_id,
        catalog_version,
        evaluation.decision,  # orjson writes an IntEnum as its number
    ]
    for i in evaluation.items:
        reasons = i.reasons
        out += (i.line_id, i.item_code, i.decision, len(reasons))
        for r in reasons:
            prior = r.prior_results
            out += (
                r.code,
                r.decision,
                _options(r.override_options),
                [p.result_id for p in prior] if prior else _NO_IDS,
            )
    return memoryview(orjson.dumps(out)).tobytes()


def decode(data: bytes) -> Remembered:
    """A record back as domain objects, with what it left out empty. Also reads the
    nested records an earlier release wrote to Redis (a rolling upgrade): their reasons
    carry no prior result ids."""
    record = orjson.loads(data)
    patient, clinician, institution, department, version, decision = record[:6]
    if len(record) == 7 and isinstance(record[6], list):
        lines = _nested_lines(record[6])
    else:
        lines = _flat_lines(record)
    return Remembered(
        patient, clinician, institution, department, version,
        Evaluation(Decision(decision), lines),
    )  # fmt: skip


def _reason(code: str, decision: int, options: list[list[Any]], ids: list[str]) -> Reason:
    return Reason(
        code,
        Decision(decision),
        "",
        tuple(PriorResult(result_id, "", "", 0, 0) for result_id in ids),
        tuple(OverrideOption(o, "", comment) for o, comment in options),
    )


def _flat_lines(record: list[Any]) -> tuple[ItemDecision, ...]:
    lines: list[ItemDecision] = []
    pos, end = 6, len(record)
    while pos < end:
        line_id, item_code, line_decision, n_reasons = record[pos : pos + 4]
        pos += 4
        reasons = tuple(_reason(*record[pos + 4 * k : pos + 4 * k + 4]) for k in range(n_reasons))
        pos += 4 * n_reasons
        lines.append(ItemDecision(line_id, item_code, Decision(line_decision), reasons))
    return tuple(lines)


def _nested_lines(items: list[Any]) -> tuple[ItemDecision, ...]:
    return tuple(
        ItemDecision(
            line_id,
            item_code,
            Decision(line_decision),
            tuple(
                _reason(reason[0], reason[1], reason[2], reason[3] if len(reason) > 3 else [])
                for reason in reasons
            ),
        )
        for line_id, item_code, line_decision, reasons in items
    )


class DecisionMemory:
    """Recent decisions by id, and the feedback already recorded for their lines."""

    def __init__(
        self,
        max_decisions: int = DEFAULT_MAX_DECISIONS,
        ttl_seconds: float = DEFAULT_DECISION_TTL_SECONDS,
        timer: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_MAX_DECISION_BYTES,
    ) -> None:
        if max_decisions < 1:
            raise ValueError("max_decisions must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._max = max_decisions
        self._max_bytes = max_bytes
        self._ttl = ttl_seconds
        self._timer = timer
        self._decisions: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0  # what the remembered decisions cost, by ENTRY_OVERHEAD_BYTES
        self._feedback: TTLCache[tuple[str, str], FeedbackKey] = TTLCache(
            max_decisions, ttl_seconds, timer
        )

    def remember(
        self, decision_id: str, order: Order, evaluation: Evaluation, catalog_version: str
    ) -> bytes:
        """Remember the decision; its record (what a shared memory sends to Redis)."""
        now = self._timer()
        record = encode(
            order.patient_id,
            order.clinician_id,
            order.institution_id,
            order.department_id,
            catalog_version,
            evaluation,
        )
        decisions = self._decisions
        replaced = decisions.get(decision_id)
        if replaced is not None:
            self.bytes -= _cost(decision_id, replaced[1])
        decisions[decision_id] = (now + self._ttl, record)
        self.bytes += _cost(decision_id, record)
        # The oldest go first: over either bound, or (same TTL for all, inserted in
        # time order) once expired, which are at the front. A TTL of 0 keeps nothing.
        while decisions:
            oldest_id, (expires_at, oldest) = next(iter(decisions.items()))
            if len(decisions) <= self._max and self.bytes <= self._max_bytes and expires_at > now:
                break
            del decisions[oldest_id]
            self.bytes -= _cost(oldest_id, oldest)
        return record

    def recall(self, decision_id: str) -> Remembered | None:
        entry = self._decisions.get(decision_id)
        if entry is None:
            return None
        expires_at, record = entry
        return None if expires_at <= self._timer() else decode(record)

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


def _cost(decision_id: str, record: bytes) -> int:
    return ENTRY_OVERHEAD_BYTES + len(decision_id) + len(record)


def find_line(remembered: Remembered, line_id: str) -> ItemDecision | None:
    for item in remembered.evaluation.items:
        if item.line_id == line_id:
            return item
    return None


def offered_overrides(line: ItemDecision) -> dict[str, OverrideOption]:
    """Override options the clinician was shown on this line, by code."""
    return {o.code: o for r in line.reasons for o in r.override_options}
