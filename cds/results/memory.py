"""The embedded result store: one process's cache of recent results, on cachetools.

Why this shape:

* One cache entry per patient, because a check reads exactly one patient and the
  bound evicts whole patients. ``get_patient`` hands out the record's
  ``item_code -> tuple`` dict as is: records are copy-on-write (a write builds a new
  dict and new tuples), so a reader never sees a half-applied write and nothing is
  copied on the read path.
* The bound is in results, not patients: a cachetools ``LRUCache`` whose
  ``getsizeof`` is the record's row count, so ``max_results`` caps memory whatever
  the patients' mix, and the least recently used patients (read or written) go first.
* Expiry is exact per row: a record carries its earliest row expiry. A read or write
  that reaches a record past that instant drops its expired rows first, so no caller
  ever sees an expired row. For memory, an hourly *expiry wheel* (bucket -> patient
  ids, filed when a record's earliest expiry changes bucket) lets the store sweep
  patients nobody reads: when an hour has passed, its patients are pruned (without
  touching their LRU position). ``cached_count`` also prunes the current hour first,
  so it is exact.
* Why not ``TLRUCache``: measured on 300,000 patients, its per-key bookkeeping (an
  ``_Item`` object, an expiry int and a heap slot per write, plus a second ordered
  dict) costs ~250 bytes more per patient than ``LRUCache`` plus the wheel, and about
  twice the CPU per write. Issue 4 budgets ~300 bytes RSS per cached result in total.
* Memory per row is one ``StoredResult`` tuple whose item and institution codes are
  ``sys.intern``-ed (thousands of rows share one code string), plus one pointer in its
  item's tuple and one in the record. Expiries are kept as *retentions*
  (``expires - reported``), interned too: rows of one item code share one retention
  int, so a row's expiry costs a pointer, not an int object. The record is one flat
  tuple ``(by_item, patient_id, earliest_expiry_us, retention_0, retention_1, ...)``
  with retentions in the order of ``by_item``'s rows; ``patient_id`` is the cache's
  own key object, so the wheel's references to it cost no second string.

Single-threaded by design (one asyncio loop per process); the ``async`` methods never
await, so each runs atomically with respect to the others.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from cachetools import Cache, LRUCache

from cds.domain import StoredResult
from cds.results.base import EMPTY_RESULTS, PatientResults, StoredRow

# (by_item, patient_id, earliest_expiry_us, retention_0, retention_1, ...).
_Record = tuple
_BY_ITEM, _PATIENT, _EARLIEST, _FIRST_RETENTION = 0, 1, 2, 3
# One row while a record is being rebuilt: (result, retention).
_Entry = tuple[StoredResult, int]

_US_PER_S = 1_000_000
# An hour: few enough buckets over a retention span of months that the wheel costs
# next to nothing, and a due row of an unread patient lingers at most this long.
_BUCKET_US = 3600 * _US_PER_S
# Distinct retentions are a handful per catalogue; the cap only guards against a caller
# that passes arbitrary expiries (then rows simply keep their own int).
_MAX_INTERNED_RETENTIONS = 4096

_peek = Cache.__getitem__  # read without counting as a use (no LRU move)
_replace_in_place = Cache.__setitem__  # update an existing key, LRU position unchanged


def _row_count(record: _Record) -> int:
    return len(record) - _FIRST_RETENTION


def _entries(record: _Record) -> list[_Entry]:
    """The record's rows with their retentions (the record's flat order)."""
    groups = record[_BY_ITEM].values()
    retentions = record[_FIRST_RETENTION:]
    if len(retentions) == 1:
        for group in groups:
            return [(group[0], retentions[0])]
    return list(zip([r for group in groups for r in group], retentions, strict=True))


def _newest_first(entry: _Entry) -> tuple[int, str]:
    result = entry[0]
    return (result.reported_at_us, result.result_id)


class MemoryResultStore:
    """In-process ``ResultStore`` bounded by ``max_results`` rows; see the module docstring."""

    def __init__(self, max_results: int, clock: Callable[[], float] = time.time) -> None:
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self._max_results = max_results
        self._clock = clock
        self._patients: LRUCache[str, _Record] = LRUCache(max_results, getsizeof=_row_count)
        self._retentions: dict[int, int] = {}
        self._wheel: dict[int, list[str]] = {}
        self._next_sweep_us = 0

    # -- time and expiry ---------------------------------------------------------------

    def _tick(self) -> int:
        """The clock's now in µs, after sweeping wheel buckets that are wholly past."""
        now = int(self._clock() * _US_PER_S)
        if now >= self._next_sweep_us:
            current = now // _BUCKET_US
            for bucket in sorted(b for b in self._wheel if b < current):
                self._sweep_bucket(bucket, now)
            self._next_sweep_us = (current + 1) * _BUCKET_US
        return now

    def _sweep_bucket(self, bucket: int, now: int) -> None:
        keep: list[str] = []
        for patient_id in self._wheel.pop(bucket):
            try:
                record = _peek(self._patients, patient_id)
            except KeyError:
                continue  # evicted or emptied since it was filed
            earliest = record[_EARLIEST]
            if earliest <= now:
                self._prune(record, now, in_place=True)
            elif earliest // _BUCKET_US == bucket:
                keep.append(patient_id)  # filed here and not due yet (current hour)
        if keep:
            self._wheel.setdefault(bucket, []).extend(keep)

    def _prune(self, record: _Record, now: int, *, in_place: bool) -> None:
        """Drop a record's expired rows; ``in_place`` keeps its LRU position (sweeps)."""
        patient_id = record[_PATIENT]
        live = [e for e in _entries(record) if e[0].reported_at_us + e[1] > now]
        if not live:
            del self._patients[patient_id]
        elif in_place:
            _replace_in_place(self._patients, patient_id, self._build(patient_id, live, None))
        else:
            self._patients[patient_id] = self._build(patient_id, live, None)

    def _retention(self, value: int) -> int:
        shared = self._retentions.get(value)
        if shared is not None:
            return shared
        if len(self._retentions) < _MAX_INTERNED_RETENTIONS:
            self._retentions[value] = value
        return value

    # -- records -----------------------------------------------------------------------

    def _build(self, patient_id: str, entries: list[_Entry], filed_bucket: int | None) -> _Record:
        """The record of live rows (any order); files it in the wheel if its bucket moved."""
        if len(entries) == 1:
            result, retention = entries[0]
            earliest = result.reported_at_us + retention
            record: _Record = ({result.item_code: (result,)}, patient_id, earliest, retention)
        else:
            entries.sort(key=_newest_first, reverse=True)
            if len(entries) > self._max_results:
                del entries[self._max_results :]  # one patient larger than the whole bound
            grouped: dict[str, list[_Entry]] = {}
            for entry in entries:
                group = grouped.get(entry[0].item_code)
                if group is None:
                    grouped[entry[0].item_code] = [entry]
                else:
                    group.append(entry)
            earliest = min([e[0].reported_at_us + e[1] for e in entries])
            record = (
                {code: tuple([e[0] for e in group]) for code, group in grouped.items()},
                patient_id,
                earliest,
                *[e[1] for group in grouped.values() for e in group],
            )
        bucket = earliest // _BUCKET_US
        if bucket != filed_bucket:
            wheel_slot = self._wheel.get(bucket)
            if wheel_slot is None:
                self._wheel[bucket] = [patient_id]
            else:
                wheel_slot.append(patient_id)
        return record

    def _live_record(self, patient_id: str, now: int) -> _Record | None:
        """The patient's record without expired rows (a use, for the LRU order)."""
        record = self._patients.get(patient_id)
        if record is not None and record[_EARLIEST] <= now:
            self._prune(record, now, in_place=False)
            record = self._patients.get(patient_id)
        return record

    def _write(self, patient_id: str, old: _Record | None, entries: dict[str, _Entry]) -> None:
        if entries:
            if old is None:
                self._patients[patient_id] = self._build(patient_id, list(entries.values()), None)
            else:
                key = old[_PATIENT]  # the cache's own key object, shared with the wheel
                filed = old[_EARLIEST] // _BUCKET_US
                self._patients[key] = self._build(key, list(entries.values()), filed)
        elif old is not None:
            del self._patients[patient_id]

    # -- the ResultStore interface -----------------------------------------------------

    async def get_patient(self, patient_id: str) -> PatientResults:
        now = self._tick()
        try:
            record = self._patients[patient_id]
        except KeyError:
            return EMPTY_RESULTS
        if record[_EARLIEST] <= now:
            self._prune(record, now, in_place=False)
            record = self._patients.get(patient_id)
            if record is None:
                return EMPTY_RESULTS
        return record[_BY_ITEM]

    async def put_many(self, rows: Sequence[StoredRow]) -> None:
        now = self._tick()
        intern = sys.intern
        by_patient: dict[str, list[StoredRow]] = {}
        for row in rows:
            pending = by_patient.get(row.patient_id)
            if pending is None:
                by_patient[row.patient_id] = [row]
            else:
                pending.append(row)
        for patient_id, patient_rows in by_patient.items():
            old = self._live_record(patient_id, now)
            entries = {} if old is None else {e[0].result_id: e for e in _entries(old)}
            for _patient, r, expires_at_us in patient_rows:
                if expires_at_us <= now:
                    entries.pop(r.result_id, None)  # replaced by nothing: not kept
                    continue
                compact = StoredResult(
                    r.result_id,
                    intern(r.item_code),
                    intern(r.institution_id),
                    r.reported_at_us,
                    bool(r.recognition_mark),
                )
                entries[r.result_id] = (compact, self._retention(expires_at_us - r.reported_at_us))
            self._write(patient_id, old, entries)

    async def withdraw_many(self, refs: Sequence[tuple[str, str]]) -> int:
        now = self._tick()
        by_patient: dict[str, list[str]] = {}
        for patient_id, result_id in refs:
            by_patient.setdefault(patient_id, []).append(result_id)
        withdrawn = 0
        for patient_id, result_ids in by_patient.items():
            old = self._live_record(patient_id, now)
            if old is None:
                continue
            entries = {e[0].result_id: e for e in _entries(old)}
            before = len(entries)
            for result_id in result_ids:
                entries.pop(result_id, None)
            if len(entries) != before:
                withdrawn += before - len(entries)
                self._write(patient_id, old, entries)
        return withdrawn

    def cached_count(self) -> int:
        """Exactly the live rows held: the current hour's due rows are swept first."""
        now = self._tick()
        current = now // _BUCKET_US
        if current in self._wheel:
            self._sweep_bucket(current, now)
        return self._patients.currsize

    async def close(self) -> None:
        self._patients.clear()
        self._wheel.clear()
