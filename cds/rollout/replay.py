"""The orders checked recently, kept to replay against a candidate catalogue.

**What is kept.** The last ``--replay-orders`` orders, each as one flat tuple of
strings, ints and booleans holding exactly what the rules read: the order time, the
patient (to read their results again), institution, whether it was an emergency,
oncology first visit, whether an MDT record was given (not its id), diagnoses, and per
line its item code, whether it is a gene test, price item, send-out lab and consent.
No clinician, department, request or line id, no MDT record id. In memory only: never
written, never logged, never in a metric; the process's end is the buffer's end.

**Why flat tuples.** As in :mod:`cds.decisions.memory`: a tuple of untracked values is
dropped from the cyclic collector's lists once it has looked at it (the diagnoses, the
one nested tuple, a collection earlier), so a hundred thousand kept orders cost a
collection nothing, where as domain NamedTuples (and the enums in them) they would be
walked by every full collection. Codes are interned, so the buffer holds one string
per distinct code, not one per order.

**Replaying.** Each order is judged twice, by the catalogue in force and by the
candidate, at its own order time and with the patient's results as the store holds
them now; the two answers are compared line by line (:mod:`cds.rollout.impact`). Only
orders whose time is within ``BACKDATE_LIMIT_US`` of the clock are replayed: that is as
far back as the stores keep every result that counted then, so a replayed answer is
exact, never a guess about results already let go. The engine is pure and the
in-process store single-threaded asyncio, so everything runs on the event loop, in
slices of a couple of milliseconds between which checks are answered; reads go
through the store like a check's (for Redis, several at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cds.catalog.snapshot import Snapshot
from cds.domain import (
    BACKDATE_LIMIT_US,
    EncounterType,
    ItemCategory,
    Order,
    OrderItem,
    new_tuple,
)
from cds.results.base import PatientResults, ResultsUnavailable
from cds.rollout.impact import Impact, ImpactTally
from cds.rules.engine import Engine

log = logging.getLogger(__name__)

# One kept order: order_time_us, patient_id, institution_id, emergency?, first visit,
# MDT record given?, the diagnoses (a tuple of str), then per line: item_code, gene-test
# category?, price_item_code, sendout_lab_id, consent_signed.
Record = tuple[Any, ...]
_HEADER = 7
_LINE = 5

Reader = Callable[[str], Awaitable[PatientResults]]

# Orders per step: their patients are read together, then the orders evaluated.
CHUNK = 512
# Reads in flight at once once reads are slow (a Redis store pipelines them), and what
# slow is: far longer than an in-process read, shorter than a network round trip.
READERS = 32
_SLOW_READ_S = 0.0002
# How long the replay holds the event loop before letting checks in, and how long it
# then lets the loop wait for them. Yielding alone would not do: gRPC's completion-queue
# poller is a thread that needs the GIL to hand the loop each event, and a loop that
# always has the replay ready never blocks in its selector, so never lets go of the
# GIL; the poller then gets it only at the interpreter's 5 ms forced switch, one event
# at a time, and checks pile up behind the replay. Waiting in the selector (rounded up
# to a millisecond, and over at once when an event is there) lets the poller in.
SLICE_S = 0.002
BREATHE_S = 0.0005
# Waiting costs the replay a third of its pace, wasted when no check is coming. So it
# waits after every slice only while checks are being recorded, and for this many
# slices after the last; otherwise one slice in PROBE_EVERY, to let the first ones in.
BUSY_SLICES = 32
PROBE_EVERY = 8

_EMERGENCY = EncounterType.EMERGENCY
_UNSPECIFIED_ENCOUNTER = EncounterType.UNSPECIFIED
_GENE_TEST = ItemCategory.GENE_TEST
_UNSPECIFIED_CATEGORY = ItemCategory.UNSPECIFIED
_intern = sys.intern


class RecentOrders:
    """The last ``capacity`` orders checked, compact (see the module docstring)."""

    __slots__ = ("_orders",)

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._orders: deque[Record] = deque(maxlen=capacity)

    def record(self, order: Order) -> None:
        """Keep ``order``: on the Check path, so built in as few steps as Python allows.

        Unpacked rather than read field by field (a NamedTuple attribute is a generic
        look-up through its type), a tuple grown per line rather than a list (orders
        have a line or a few), and the two enums reduced to what the rules read of
        them, by identity: ``int()`` of an IntEnum is a call through its type too.
        """
        _, institution_id, _, _, encounter, patient_id, dx, first_visit, mdt, items, at_us = order
        kept: Record = (at_us, patient_id, _intern(institution_id), encounter is _EMERGENCY,
                first_visit, mdt != "", dx)  # fmt: skip
        for _, item_code, category, price_item_code, sendout_lab_id, consent in items:
            kept += (_intern(item_code), category is _GENE_TEST, price_item_code,
                     sendout_lab_id, consent)  # fmt: skip
        self._orders.append(kept)

    def newest(self) -> object:
        """The order kept last (None if none): it changes whenever a check is kept."""
        return self._orders[-1] if self._orders else None

    def records(self) -> list[Record]:
        """A copy, oldest first: checks go on recording while a replay reads it."""
        return list(self._orders)

    def __len__(self) -> int:
        return len(self._orders)


def rebuild(record: Record) -> Order:
    """The order as the engine reads it; what was not kept is empty or unspecified."""
    items = []
    for k, pos in enumerate(range(_HEADER, len(record), _LINE)):
        code, gene_test, price_item_code, sendout_lab_id, consent = record[pos : pos + _LINE]
        category = _GENE_TEST if gene_test else _UNSPECIFIED_CATEGORY
        # Line ids are not kept: numbered again (they only appear in a duplicate's
        # message, which an impact does not read).
        line = (str(k + 1), code, category, price_item_code, sendout_lab_id, consent)
        items.append(new_tuple(OrderItem, line))
    encounter = _EMERGENCY if record[3] else _UNSPECIFIED_ENCOUNTER
    return new_tuple(
        Order,
        (
            "",
            record[2],
            "",
            "",
            encounter,
            record[1],
            record[6],
            record[4],
            "1" if record[5] else "",
            tuple(items),
            record[0],
        ),
    )


class _Slices:
    """Hands the event loop back once ``SLICE_S`` is used up, and lets it wait for
    events while checks are coming (see ``BUSY_SLICES``): ``activity()`` changes when
    one was checked (the newest recent order)."""

    __slots__ = ("_activity", "_busy", "_last", "_n", "_until")

    def __init__(self, activity: Callable[[], object]) -> None:
        self._activity = activity
        self._last = activity()
        self._busy = BUSY_SLICES  # assume checks at first: the cost is one wait a slice
        self._n = 0
        self._until = time.perf_counter() + SLICE_S

    async def maybe_yield(self) -> None:
        if time.perf_counter() < self._until:
            return
        self._n += 1
        newest = self._activity()
        if newest is not self._last:
            self._last = newest
            self._busy = BUSY_SLICES
        if self._busy > 0 or self._n % PROBE_EVERY == 0:
            self._busy = max(0, self._busy - 1)
            await asyncio.sleep(BREATHE_S)
        else:
            await asyncio.sleep(0)
        self._until = time.perf_counter() + SLICE_S


def _nothing() -> object:
    return None


def footprint(old: Snapshot, new: Snapshot) -> frozenset[str] | None:
    """The item codes whose lines ``new`` may answer differently from ``old``; None: any.

    A line's decision and reason codes depend on its own code's entries and on a few
    catalogue-wide facts: severities (silent codes included), the institutions' groups
    (recognition scope) and the send-out labs. When none of those changed, only lines
    of a code whose recognition item or gene test changed (added, removed, edited) can
    change, and an order without such a line need not be judged, nor its results read.
    Names, sources, messages and override reasons change no decision.
    """
    if (
        old.severity != new.severity
        or old.silent_codes != new.silent_codes
        or old.sendout_labs != new.sendout_labs
        or _groups(old) != _groups(new)
    ):
        return None
    changed: set[str] = set()
    for before, after in (
        (old.recognition_items, new.recognition_items),
        (old.gene_tests, new.gene_tests),
    ):
        changed.update(c for c in before.keys() | after.keys() if before.get(c) != after.get(c))
    return frozenset(changed)


def _groups(snapshot: Snapshot) -> dict[str, frozenset[str]]:
    return {i.id: i.groups for i in snapshot.institutions.values()}


def _touches(record: Record, codes: frozenset[str]) -> bool:
    return any(record[pos] in codes for pos in range(_HEADER, len(record), _LINE))


async def replay(
    records: Sequence[Record],
    read: Reader,
    before: Engine,
    after: Engine,
    now_us: int,
    activity: Callable[[], object] = _nothing,
) -> Impact:
    """``records`` judged by ``before`` and by ``after``: what changes, line by line.

    Orders older than ``BACKDATE_LIMIT_US`` are left out, and so are orders whose
    patient's results could not be read (the store was down): neither counts in
    ``orders_replayed``. An order the change cannot reach (:func:`footprint`) counts,
    its answer unchanged, without being judged. ``activity()`` changes whenever a check
    is answered meanwhile (:meth:`RecentOrders.newest`): then the replay makes room.
    """
    tally = ImpactTally()
    slices = _Slices(activity)
    oldest = now_us - BACKDATE_LIMIT_US
    reach = footprint(before.snapshot, after.snapshot)
    unread = 0
    for start in range(0, len(records), CHUNK):
        chunk = [r for r in records[start : start + CHUNK] if r[0] >= oldest]
        if reach is not None:
            reached = [r for r in chunk if _touches(r, reach)]
            tally.orders += len(chunk) - len(reached)
            chunk = reached
        # Filtering alone is ~0.25 ms a chunk: a change that reaches no order would
        # otherwise hold the loop for all 100,000 kept orders (~50 ms) in one stretch.
        await slices.maybe_yield()
        results = await _read_all(list(dict.fromkeys(r[1] for r in chunk)), read, slices)
        for record in chunk:
            patient = results.get(record[1])
            if patient is None:
                unread += 1
                continue
            order = rebuild(record)
            tally.add(before.evaluate(order, patient), after.evaluate(order, patient))
            await slices.maybe_yield()
    if unread:
        log.warning("catalogue impact: %d recent orders not replayed (results unavailable)", unread)
    return tally.impact()


async def _read_all(
    patient_ids: list[str], read: Reader, slices: _Slices
) -> dict[str, PatientResults]:
    """Each patient's results; unreadable patients are absent.

    One at a time while reads are quick (the in-process store answers without ever
    suspending, and idle readers would only cost); once one takes network time (Redis),
    the rest go ``READERS`` at a time, which the store pipelines.
    """
    found: dict[str, PatientResults] = {}
    pending = iter(patient_ids)
    for patient_id in pending:
        started = time.perf_counter()
        with contextlib.suppress(ResultsUnavailable, TimeoutError):
            found[patient_id] = await read(patient_id)
        if time.perf_counter() - started > _SLOW_READ_S:
            break
        await slices.maybe_yield()
    else:
        return found

    async def reader() -> None:
        for patient_id in pending:
            with contextlib.suppress(ResultsUnavailable, TimeoutError):
                found[patient_id] = await read(patient_id)
            await slices.maybe_yield()

    await asyncio.gather(*(reader() for _ in range(READERS)))
    return found


class Replayer:
    """Replays this process's recent orders against two engines (a reload's preview)."""

    def __init__(self, recent: RecentOrders | None, read: Reader) -> None:
        self._recent = recent
        self._read = read

    async def __call__(self, before: Engine, after: Engine) -> Impact:
        if self._recent is None:
            return await replay([], self._read, before, after, time.time_ns() // 1000)
        recent = self._recent
        return await replay(
            recent.records(), self._read, before, after, time.time_ns() // 1000, recent.newest
        )
