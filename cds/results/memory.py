"""The embedded result store: one process's cache of recent results, packed per patient.

Why this shape:

* One entry per patient, because a check reads exactly one patient and the bound evicts
  whole patients. The entry is one immutable ``bytes`` record holding every row of the
  patient (layout below). A write builds a new record and swaps it in, so a reader never
  sees half of a write.
* Why bytes and not tuples: the cache has a memory budget per cached result, and the
  garbage collector must not walk the cache. A row as a ``StoredResult`` is several
  objects (the tuple, the result id ``str``, the ``reported_at`` ``int``) plus
  per-patient dict/tuple bookkeeping, well over that budget; packed, a row is a
  fixed-size struct plus its result id, and a patient's record is one object. ``bytes``
  are never tracked by the cyclic garbage collector, so a million cached results add
  nothing to a collection (as NamedTuple rows they were millions of tracked objects,
  and each full collection stalled the event loop).
* Item and institution codes are numbered through one table shared by all records (a
  few thousand distinct codes in practice); decoded rows therefore share one ``str`` per
  code. The table is capped (``_MAX_CODES``); beyond it a code is stored in the record
  itself, so a feed of endless distinct codes costs memory per row, never a failure.
* Reads decode the patient's record into ``item_code -> [StoredResult, ...]`` (newest
  ``reported_at`` first). A check asks for its ordered codes only, and most of them have
  no cached row: rows are matched on their packed code index, and the text decoded and
  a tuple built only for the rows of those codes (``_decode_codes``).
* The bound is in results, not patients: an ``OrderedDict`` in least-recently-used
  order (a read or write is a use) plus a running row count; the least recently used
  patients go first.
* A second bound, per (patient, item code): at most ``max_results_per_item`` results,
  the newest by ``reported_at`` (ties: the greater result id, as reads order them).
  A check walks the patient's results of each ordered item, so one feed of thousands
  of results of one item must not make every later check of it walk them all; the
  rules read only the newest, so an older one dropped at write time could never have
  been shown first. Withdrawing a kept result does not bring back a dropped one.
  Appending is still the common path: it checks, on the packed rows alone, that the
  items written keep room (``_has_room``); otherwise the write merges, which trims.
* Expiry is exact per row: a record carries its earliest row expiry. A read or write
  that reaches a record past that instant drops its expired rows first, so no caller
  ever sees an expired row. For memory, an hourly *expiry wheel* (bucket -> patient ids,
  packed in a ``bytearray`` so the collector has nothing to walk) lets the store sweep
  patients nobody reads: when an hour has passed, its patients are
  pruned (without touching their LRU position). A record also carries the bucket it is
  filed under: a write files the patient again only when its earliest expiry moves to
  an *earlier* hour; a sweep that finds a patient not yet due files it under its own
  hour. ``cached_count`` prunes the current hour first, so it is exact.

Record layout (little-endian): ``earliest expiry µs (q), filed bucket (q), rows (I)``,
then per row ``reported_at µs (q), expires_at µs (q), item code (I), institution (I),
HR mark (?), result id length in characters (H)``, rows newest first, then the UTF-8 text
of every row's result id (and of any code stored inline), in row order.

Single-threaded by design (one asyncio loop per process); the ``async`` methods never
await, so each runs atomically with respect to the others.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from cds.config import DEFAULT_MAX_RESULTS_PER_ITEM
from cds.domain import US_PER_SECOND, StoredResult, new_tuple
from cds.results.base import EMPTY_RESULTS, PatientResults, StoredRow

_HEAD = struct.Struct("<qqI")
_ROW = struct.Struct("<qqII?H")
_HEAD_SIZE = _HEAD.size
_ROW_SIZE = _ROW.size
_pack_head = _HEAD.pack
_pack_row = _ROW.pack
_unpack_head = _HEAD.unpack_from
# Just a row's item code index, the rest skipped: counting rows per item is then cheap.
_ROW_ITEM = struct.Struct("<16xI7x")
assert _ROW_ITEM.size == _ROW_SIZE

# A code index with this bit set is no index: the code's text follows the result id, and
# the low bits are its length in characters.
_INLINE = 0x8000_0000
_MAX_CODES = 1 << 20

# An hour: few enough buckets over a retention span of months that the wheel costs
# next to nothing, and a due row of an unread patient lingers at most this long.
_BUCKET_US = 3600 * US_PER_SECOND

# One row while a record is rebuilt: (reported_at_us, expires_at_us, item_code,
# institution_id, recognition_mark), keyed by result id.
_Entry = tuple[int, int, str, str, bool]


def _newest_first(item: tuple[str, _Entry]) -> tuple[int, str]:
    return (item[1][0], item[0])


def _result_newest(result: StoredResult) -> tuple[int, str]:
    return (result[3], result[0])


def _grouped(results: Iterable[StoredResult]) -> dict[str, tuple[StoredResult, ...]]:
    """``results`` by item code, newest first: the one grouping of both read views."""
    out: dict[str, tuple[StoredResult, ...]] = {}
    several = False
    for result in results:
        item_code = result[1]  # .item_code: a property call per row
        group = out.get(item_code)
        if group is None:
            out[item_code] = (result,)
        else:
            # Groups are a row or two: a tuple grown by concatenation beats a list.
            out[item_code] = (*group, result)
            several = True
    if several:  # rows are kept in arrival order; a group of several is sorted here
        for item_code, group in out.items():
            if len(group) > 1:
                out[item_code] = tuple(sorted(group, key=_result_newest, reverse=True))
    return out


class MemoryResultStore:
    """In-process ``ResultStore`` bounded by ``max_results`` rows and by
    ``max_results_per_item`` per (patient, item code); see the module docstring."""

    def __init__(
        self,
        max_results: int,
        clock: Callable[[], float] = time.time,
        *,
        max_results_per_item: int = DEFAULT_MAX_RESULTS_PER_ITEM,
    ) -> None:
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        if max_results_per_item < 1:
            raise ValueError("max_results_per_item must be at least 1")
        self._max_results = max_results
        self._per_item = max_results_per_item
        self._clock = clock
        self._patients: OrderedDict[str, bytes] = OrderedDict()
        self._rows = 0
        self._codes: list[str] = []
        self._code_index: dict[str, int] = {}
        # bucket -> patient ids, each as a 2-byte length and its UTF-8 (see _file).
        self._wheel: dict[int, bytearray] = {}
        self._next_sweep_us = 0

    # -- codes and records -------------------------------------------------------------

    def _pack(self, items: list[tuple[str, _Entry]]) -> tuple[bytes, str, int]:
        """``items`` packed: the row bytes, their text, the earliest expiry among them."""
        index = self._code_index
        rows: list[bytes] = []
        text: list[str] = []
        earliest = items[0][1][1]
        for result_id, (reported, expires, item_code, institution_id, mark) in items:
            text.append(result_id)
            ci = index.get(item_code)
            if ci is None:
                ci = self._new_code(item_code, text)
            ii = index.get(institution_id)
            if ii is None:
                ii = self._new_code(institution_id, text)
            rows.append(_pack_row(reported, expires, ci, ii, mark, len(result_id)))
            if expires < earliest:
                earliest = expires
        return b"".join(rows), "".join(text), earliest

    def _new_code(self, code: str, text: list[str]) -> int:
        if len(self._codes) < _MAX_CODES:
            index = self._code_index[code] = len(self._codes)
            self._codes.append(code)
            return index
        text.append(code)
        return _INLINE | len(code)

    def _encode(self, entries: dict[str, _Entry]) -> tuple[bytes, int, int]:
        """The rows and text part of a record of ``entries`` (non-empty), its earliest
        expiry and its row count: the newest of each item within the per-item bound, and
        the newest of those within the whole bound."""
        items = list(entries.items())
        per_item = self._per_item
        if len(items) > per_item:
            counts: dict[str, int] = {}
            for _result_id, entry in items:
                counts[entry[2]] = counts.get(entry[2], 0) + 1
            if max(counts.values()) > per_item:
                items.sort(key=_newest_first, reverse=True)
                kept: dict[str, int] = {}
                trimmed: list[tuple[str, _Entry]] = []
                for item in items:
                    item_code = item[1][2]
                    k = kept.get(item_code, 0)
                    if k < per_item:
                        kept[item_code] = k + 1
                        trimmed.append(item)
                items = trimmed
        if len(items) > self._max_results:  # one patient larger than the whole bound
            items.sort(key=_newest_first, reverse=True)
            del items[self._max_results :]
        rows, text, earliest = self._pack(items)
        return rows + text.encode(), earliest, len(items)

    def _unpack_rows(self, record: bytes, n: int) -> Iterator[tuple[str, str, str, int, int, bool]]:
        """Unpack the first ``n`` rows: (result_id, item, institution, reported, expires, mark).

        The one place that knows the packed layout, for both the check's view and the
        writers' by-result-id view.
        """
        end = _HEAD_SIZE + n * _ROW_SIZE
        text = record[end:].decode()
        codes = self._codes
        pos = 0
        for reported, expires, ci, ii, mark, n_id in _ROW.iter_unpack(
            memoryview(record)[_HEAD_SIZE:end]
        ):
            result_id = text[pos : pos + n_id]
            pos += n_id
            if ci & _INLINE:
                item_code = text[pos : pos + (ci & ~_INLINE)]
                pos += len(item_code)
            else:
                item_code = codes[ci]
            if ii & _INLINE:
                institution_id = text[pos : pos + (ii & ~_INLINE)]
                pos += len(institution_id)
            else:
                institution_id = codes[ii]
            yield result_id, item_code, institution_id, reported, expires, mark

    def _decode_entries(self, record: bytes, now: int) -> dict[str, _Entry]:
        """The record's rows still live at ``now``, by result id."""
        return {
            result_id: (reported, expires, item_code, institution_id, mark)
            for result_id, item_code, institution_id, reported, expires, mark in self._unpack_rows(
                record, _unpack_head(record)[2]
            )
            if expires > now
        }

    def _decode(self, record: bytes, n: int) -> dict[str, tuple[StoredResult, ...]]:
        """The check's view: rows by item code, newest first."""
        return _grouped(
            new_tuple(StoredResult, (result_id, item_code, institution_id, reported, mark))
            for result_id, item_code, institution_id, reported, _expires, mark in (
                self._unpack_rows(record, n)
            )
        )

    def _decode_codes(self, record: bytes, n: int, codes: Collection[str]) -> PatientResults:
        """The check's view of ``codes`` alone: their rows by item code, newest first.

        Most ordered codes have no cached row, so rows are matched on their packed code
        index first: the text is decoded, and a ``StoredResult`` built, only for a hit.
        """
        if len(self._codes) >= _MAX_CODES:
            return self._decode(record, n)  # codes may be inline, not indexed: all rows
        wanted: set[int | None] = set(map(self._code_index.get, codes))
        wanted.discard(None)  # a code never written to any record
        if not wanted:
            return EMPTY_RESULTS
        return _grouped(self._hits(record, n, wanted)) or EMPTY_RESULTS

    def _hits(self, record: bytes, n: int, wanted: set[int | None]) -> Iterator[StoredResult]:
        """The rows whose code index is ``wanted``, as results (no inline codes: the
        table never filled, so the text is the result ids alone)."""
        end = _HEAD_SIZE + n * _ROW_SIZE
        code_of = self._codes
        text = ""
        pos = 0
        for reported, _expires, ci, ii, mark, n_id in _ROW.iter_unpack(
            memoryview(record)[_HEAD_SIZE:end]
        ):
            if ci in wanted:
                if not text:
                    text = record[end:].decode()
                result = (text[pos : pos + n_id], code_of[ci], code_of[ii], reported, mark)
                yield new_tuple(StoredResult, result)
            pos += n_id

    # -- time, expiry and the bound ----------------------------------------------------

    def _tick(self) -> int:
        """The clock's now in µs, after sweeping wheel buckets that are wholly past."""
        now = int(self._clock() * US_PER_SECOND)
        if now >= self._next_sweep_us:
            current = now // _BUCKET_US
            for bucket in sorted(b for b in self._wheel if b < current):
                self._sweep_bucket(bucket, now)
            self._next_sweep_us = (current + 1) * _BUCKET_US
        return now

    def _file(self, patient_id: str, bucket: int) -> None:
        # Bytes, not a list of ids: a list is a container the collector walks, and the
        # wheel holds an entry per patient and more (each full collection would walk
        # them all); a bytearray is opaque to it, and smaller.
        encoded = patient_id.encode()
        entry = len(encoded).to_bytes(2, "little") + encoded
        slot = self._wheel.get(bucket)
        if slot is None:
            self._wheel[bucket] = bytearray(entry)
        else:
            slot += entry

    def _sweep_bucket(self, bucket: int, now: int) -> None:
        keep: list[str] = []
        patients = self._patients
        filed_ids = self._wheel.pop(bucket)
        pos = 0
        end = len(filed_ids)
        while pos < end:
            size = filed_ids[pos] | filed_ids[pos + 1] << 8
            patient_id = filed_ids[pos + 2 : pos + 2 + size].decode()
            pos += 2 + size
            record = patients.get(patient_id)
            if record is None:
                continue  # evicted or emptied since it was filed
            earliest, filed, n = _unpack_head(record)
            if filed != bucket:
                continue  # filed again elsewhere since
            if earliest <= now:
                # Pruned in place: a sweep is not a use, so the LRU position stays. This
                # bucket is done, so the rest is filed afresh.
                entries = self._decode_entries(record, now)
                self._replace(patient_id, record, entries, move=False, refile=True)
            elif earliest // _BUCKET_US == bucket:
                keep.append(patient_id)  # due later this hour (the current one)
            else:
                later = earliest // _BUCKET_US
                patients[patient_id] = _pack_head(earliest, later, n) + record[_HEAD_SIZE:]
                self._file(patient_id, later)
        for patient_id in keep:
            self._file(patient_id, bucket)

    def _replace(
        self,
        patient_id: str,
        old: bytes | None,
        entries: dict[str, _Entry],
        *,
        move: bool,
        refile: bool = False,
    ) -> None:
        """Store ``entries`` (all live) as the patient's record, or drop it when empty.

        ``move``: the write is a use (to the LRU's recent end); ``refile``: the patient's
        wheel entry is being consumed, file it again whatever its bucket.
        """
        if not entries:
            if old is not None:
                self._rows -= _unpack_head(old)[2]
                del self._patients[patient_id]
            return
        body, earliest, n = self._encode(entries)
        self._store(patient_id, old, body, earliest, n, move=move, refile=refile)

    def _store(
        self,
        patient_id: str,
        old: bytes | None,
        body: bytes,
        earliest: int,
        n: int,
        *,
        move: bool,
        refile: bool = False,
    ) -> None:
        """Swap in the record ``body`` of ``n`` rows; file, count and bound it."""
        patients = self._patients
        bucket = earliest // _BUCKET_US
        if old is None:
            filed = -1
        else:
            _, filed, old_n = _unpack_head(old)
            self._rows -= old_n
        # Filed again only when due earlier than the hour it is filed under; a later
        # due time is found by the sweep of that earlier hour, which files it anew.
        if refile or filed == -1 or bucket < filed:
            filed = bucket
            self._file(patient_id, bucket)
        patients[patient_id] = _pack_head(earliest, filed, n) + body
        if move and old is not None:
            patients.move_to_end(patient_id)
        self._rows += n
        while self._rows > self._max_results:
            _, evicted = patients.popitem(last=False)
            self._rows -= _unpack_head(evicted)[2]

    def _append(self, patient_id: str, old: bytes, new: dict[str, _Entry], now: int) -> bool:
        """Add rows of new result ids to a live record without unpacking it; False if
        that is not possible (an upsert, a due row, a bound) and the caller must merge.
        """
        earliest, _filed, n = _unpack_head(old)
        if earliest <= now or n + len(new) > self._max_results:
            return False
        end = _HEAD_SIZE + n * _ROW_SIZE
        old_text = old[end:]
        text = old_text.decode()
        for result_id in new:
            if result_id in text:  # maybe present (or a substring of another id)
                return False
        if n + len(new) > self._per_item and not self._has_room(old, end, new):
            return False
        rows, new_text, new_earliest = self._pack(list(new.items()))
        body = old[_HEAD_SIZE:end] + rows + old_text + new_text.encode()
        self._store(patient_id, old, body, min(earliest, new_earliest), n + len(new), move=True)
        return True

    def _has_room(self, old: bytes, end: int, new: dict[str, _Entry]) -> bool:
        """Whether every item of ``new`` stays within the per-item bound once appended
        to ``old`` (rows up to ``end``), counted on the packed code indexes alone."""
        per_item = self._per_item
        if len(self._codes) >= _MAX_CODES:
            return False  # codes may be stored inline, not counted by index: merge
        adding: dict[str, int] = {}
        for entry in new.values():
            adding[entry[2]] = adding.get(entry[2], 0) + 1
        after: dict[int, int] = {}
        index = self._code_index
        for item_code, k in adding.items():
            if k > per_item:
                return False
            ci = index.get(item_code)
            if ci is not None:  # else new to the table: no stored row has it yet
                after[ci] = k
        if not after:
            return True
        for (row_ci,) in _ROW_ITEM.iter_unpack(memoryview(old)[_HEAD_SIZE:end]):
            held = after.get(row_ci)
            if held is not None:
                if held >= per_item:
                    return False
                after[row_ci] = held + 1
        return True

    # -- the ResultStore interface -----------------------------------------------------

    async def get_patient(
        self, patient_id: str, codes: Collection[str] | None = None
    ) -> PatientResults:
        now = self._tick()
        patients = self._patients
        record = patients.get(patient_id)
        if record is None:
            return EMPTY_RESULTS
        earliest, _filed, n = _unpack_head(record)
        if earliest <= now:
            self._replace(patient_id, record, self._decode_entries(record, now), move=True)
            record = patients.get(patient_id)
            if record is None:
                return EMPTY_RESULTS
            n = _unpack_head(record)[2]
        else:
            patients.move_to_end(patient_id)
        if codes is None:
            return self._decode(record, n)
        return self._decode_codes(record, n, codes)

    async def put_many(self, rows: Sequence[StoredRow]) -> None:
        now = self._tick()
        by_patient: dict[str, list[StoredRow]] = {}
        for stored in rows:
            pending = by_patient.get(stored[0])
            if pending is None:
                by_patient[stored[0]] = [stored]
            else:
                pending.append(stored)
        patients = self._patients
        for patient_id, patient_rows in by_patient.items():
            new: dict[str, _Entry] = {}
            expired: list[str] = []
            for _patient, r, expires_at_us in patient_rows:
                result_id = r[0]
                if expires_at_us <= now:
                    new.pop(result_id, None)  # replaced by nothing: not kept
                    expired.append(result_id)
                else:
                    new[result_id] = (r[3], expires_at_us, r[1], r[2], bool(r[4]))
            old = patients.get(patient_id)
            if old is None:
                if new:
                    body, earliest, n = self._encode(new)
                    self._store(patient_id, None, body, earliest, n, move=True)
                continue
            if not expired and new and self._append(patient_id, old, new, now):
                continue
            entries = self._decode_entries(old, now)
            for result_id in expired:
                entries.pop(result_id, None)
            entries.update(new)
            self._replace(patient_id, old, entries, move=True)

    async def withdraw_many(self, refs: Sequence[tuple[str, str]]) -> int:
        now = self._tick()
        by_patient: dict[str, list[str]] = {}
        for patient_id, result_id in refs:
            by_patient.setdefault(patient_id, []).append(result_id)
        withdrawn = 0
        for patient_id, result_ids in by_patient.items():
            old = self._patients.get(patient_id)
            if old is None:
                continue
            entries = self._decode_entries(old, now)
            live = len(entries)
            for result_id in result_ids:
                entries.pop(result_id, None)
            withdrawn += live - len(entries)
            if len(entries) != _unpack_head(old)[2]:  # withdrawn or expired rows
                self._replace(patient_id, old, entries, move=True)
            else:
                self._patients.move_to_end(patient_id)
        return withdrawn

    def cached_count(self) -> int:
        """Exactly the live rows held: the current hour's due rows are swept first."""
        now = self._tick()
        current = now // _BUCKET_US
        if current in self._wheel:
            self._sweep_bucket(current, now)
        return self._rows

    async def close(self) -> None:
        self._patients.clear()
        self._wheel.clear()
        self._rows = 0
