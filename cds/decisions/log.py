"""The decision log: pseudonymised decision and feedback records (JSON lines), one writer.

Modelled on Open Policy Agent's decision logs: one self-contained JSON object per line,
each naming the decision it belongs to, the policy (catalogue) version that produced it,
and only the fields supervision needs. Patient and clinician ids never reach the file:
they are replaced by keyed hashes (``Pseudonymizer``) inside the writer thread.

Two very different callers share one writer:

* ``log_decision`` sits on the ``Check`` hot path (every Check supervision reads: a
  WARN/BLOCK, a line with any reason, a gene-test line). It must never
  block or cost more than a tuple append, so it enqueues the domain objects as they are
  and all hashing, formatting and I/O happen in the writer thread. When the queue is
  full the record is **dropped** and ``on_drop()`` is called (the server counts it in a
  metric). Blocking instead would let a slow or full disk stall every order screen in
  the hospital; a warning the clinician already saw is less important than the order.
* ``log_feedback`` is a clinician's explicit accept/override, which supervision must be
  able to count. It is acknowledged only after its record is written, flushed and
  fsynced, and it is never dropped: when its own bounded queue is full the caller waits
  (bounded by the caller's deadline, e.g. via cancellation). Several feedback records
  arriving together share one fsync (group commit).
* ``log_counts`` takes a process's line and order counts once a minute and at
  shutdown (the denominators of every rate in the supervision report). It is never
  dropped for a full queue: one record a minute cannot crowd the writer.

Record types (``type``): ``decision``, ``feedback`` and ``counts``; docs/supervision.md
describes every field. New fields are only ever added.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from cds.config import DEFAULT_DECISION_LOG_BACKUPS, DEFAULT_DECISION_LOG_MAX_BYTES
from cds.domain import (
    US_PER_SECOND,
    Decision,
    EncounterType,
    Evaluation,
    FeedbackOutcome,
    ItemCategory,
    Order,
    Reason,
)
from cds.security.pseudonyms import Pseudonymizer

_LOG = logging.getLogger(__name__)

SCHEMA = "cds.audit/v1"

# Keyed by int so a plain int from any caller formats the same as the enum member.
_DECISION = {int(d): d.name for d in Decision}
_ENCOUNTER = {int(e): e.name for e in EncounterType}
_DECISIONS = tuple(int(d) for d in Decision)


def _reason_entry(r: Reason) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "code": r.code,
        "decision": _DECISION[r.decision],
        "prior_result_ids": [pr.result_id for pr in r.prior_results],
    }
    if r.silent:  # only when true: a record without it reads as before
        entry["silent"] = True
    if r.prior_results_omitted:  # counted beyond the newest listed ones
        entry["prior_results_omitted"] = r.prior_results_omitted
    return entry


# A decision record's bound. 100 lines of 128-character codes with ten prior result ids
# each can reach ~200 KB; one such line once was 131 MB, and size rotation then had
# room for nothing else. Past the bound a record stays valid JSON that says what it
# left out (``truncated``), never a line cut in the middle.
MAX_DECISION_RECORD_BYTES = 64 * 1024


def _shortened(record: dict[str, Any]) -> bytes:
    """``record`` within MAX_DECISION_RECORD_BYTES: first the prior result ids give way
    (counted into each reason's ``prior_results_omitted``), then, if still too long,
    the last lines (counted in ``items_omitted``)."""
    for item in record["items"]:
        for reason in item["reasons"]:
            ids = reason.pop("prior_result_ids")
            reason["prior_result_ids"] = []
            if ids:
                reason["prior_results_omitted"] = reason.get("prior_results_omitted", 0) + len(ids)
    record["truncated"] = ["prior_result_ids"]
    line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    items = record["items"]
    if len(line) <= MAX_DECISION_RECORD_BYTES or not items:
        return line
    # Keep the lines that fit, in order: the sizes of their JSON add up (plus commas).
    budget = MAX_DECISION_RECORD_BYTES - (len(line) - len(orjson.dumps(items))) - 64
    kept = 0
    for item in items:
        budget -= len(orjson.dumps(item)) + 1
        if budget < 0:
            break
        kept += 1
    record["items"] = items[:kept]
    record["items_omitted"] = len(items) - kept
    record["truncated"] = ["prior_result_ids", "items"]
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


_FEEDBACK_TYPE = b'"type":"feedback"'


def _is_feedback(line: bytes) -> bool:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:  # a line torn by a crash: not an acknowledged record
        return False
    return isinstance(record, dict) and record.get("type") == "feedback"


@lru_cache(maxsize=4)
def _minute_prefix(minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute since the epoch. Records arrive in time
    order, so a new minute is formatted about once a minute."""
    return _dt.datetime.fromtimestamp(minute * 60, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:")


def _rfc3339(at_us: int) -> str:
    """UTC, microseconds, ``Z``. ``datetime.strftime`` (a time tuple, the format
    rewritten, libc's strftime) was a fifth of what formatting a decision record cost
    the writer, which shares the interpreter with the event loop: only a new minute
    goes through it, the seconds are formatted here."""
    # Whole seconds and microseconds from the int: exact, no float rounding.
    seconds, us = divmod(at_us, US_PER_SECOND)
    minute, second = divmod(seconds, 60)
    return f"{_minute_prefix(minute)}{second:02d}.{us:06d}Z"


_GENE_TEST = ItemCategory.GENE_TEST


class DecisionEntry(NamedTuple):
    """One decided order as the Check path hands it over: the domain objects as they are,
    so the hot path pays a tuple; what the record holds is worked out by the writer."""

    decision_id: str
    order: Order
    evaluation: Evaluation
    catalog_version: str
    degraded: tuple[str, ...]
    at_us: int
    # The catalogue's gene-test codes (one shared frozenset per catalogue): lines of
    # these codes are recorded with their send-out lab and price item, reasons or not.
    gene_codes: frozenset[str] = frozenset()


# What the Check path counts, as cheap to update as Python allows: institution_id ->
# [orders, {department_id -> {item_code -> row}}], a row being one count per Decision
# (indexed by its number) and then GENE_FLAG (1 when the code is a gene test). A key
# of None is "other": where keys beyond the per-interval bound were folded.
CountsTree = dict[str | None, list[Any]]
GENE_FLAG = 4


class CountsEntry(NamedTuple):
    """What one process checked over one interval: the denominators of supervision."""

    start_us: int
    end_us: int
    tree: CountsTree


class _Feedback(NamedTuple):
    fields: dict[str, Any]
    clinician_id: str
    patient_id: str
    future: concurrent.futures.Future[None]
    loop: asyncio.AbstractEventLoop


# How long the writer gathers decisions before writing them. Waking the writer for each
# WARN/BLOCK decision cost the Check path a thread switch, a GIL hand-over and a write
# system call per decision, on the server's core; batched, they are paid a few times a
# second. Feedback never waits for this: its fsync is awaited by the clinician.
DECISION_GATHER_S = 0.05


class DecisionLog:
    """The audit log file and its single writer thread.

    Only the writer thread touches the file (writes, fsync, size rotation), so rotation
    needs no lock against writers. Callers share a deque under one short lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        pseudonymizer: Pseudonymizer,
        *,
        max_bytes: int = DEFAULT_DECISION_LOG_MAX_BYTES,
        backups: int = DEFAULT_DECISION_LOG_BACKUPS,
        max_pending_decisions: int = 10_000,
        max_pending_feedback: int = 1_000,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be > 0 and backups >= 0")
        self.path = Path(path)
        self._pseudonymizer = pseudonymizer
        self._max_bytes = max_bytes
        self._backups = backups
        self._max_decisions = max_pending_decisions
        self._max_feedback = max_pending_feedback
        self._on_drop = on_drop or (lambda: None)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: deque[DecisionEntry | _Feedback | CountsEntry] = deque()
        self._n_decisions = 0
        self._closing = False
        self._idle = False  # the writer waits for work (a decision must wake it)
        self._gather_s = DECISION_GATHER_S
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._size = 0
        # Created lazily inside the running loop (an asyncio primitive belongs to one loop).
        self._feedback_slots: asyncio.Semaphore | None = None

    # -- configuration ------------------------------------------------------------------

    def set_pseudonymizer(self, pseudonymizer: Pseudonymizer) -> None:
        """Swap keys (e.g. after a key-file rotation on SIGHUP); the next record uses them."""
        self._pseudonymizer = pseudonymizer

    @property
    def pending(self) -> int:
        return len(self._items)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the file (raising ``OSError`` now, not on the first record) and start writing."""
        if self._thread is not None:
            raise RuntimeError("DecisionLog already started")
        self._open()
        self._thread = threading.Thread(target=self._run, name="cds-audit-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Write everything already queued, fsync, and stop the writer."""
        with self._lock:
            self._closing = True
            self._ready.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        else:
            self._fail_pending(RuntimeError("decision log closed before start"))

    # -- producers ----------------------------------------------------------------------

    def log_decision(self, record: DecisionEntry) -> None:
        """Queue a decision; never blocks. Dropped (``on_drop()``) when full."""
        with self._lock:
            if self._n_decisions < self._max_decisions and not self._closing:
                self._items.append(record)
                self._n_decisions += 1
                if self._idle:
                    self._ready.notify()
                return
        self._on_drop()

    def log_counts(self, entry: CountsEntry) -> None:
        """Queue an interval's counts; never blocks and never dropped for a full queue."""
        with self._lock:
            if self._closing:
                return
            self._items.append(entry)
            if self._idle:
                self._ready.notify()

    async def log_feedback(
        self,
        *,
        decision_id: str,
        line_id: str,
        outcome: FeedbackOutcome,
        override_code: str,
        comment: str,
        clinician_id: str,
        patient_id: str,
        institution_id: str,
        department_id: str,
        item_code: str,
        reason_codes: Sequence[str],
        catalog_version: str,
        at_us: int,
        prior_result_ids: Sequence[str] = (),
    ) -> None:
        """Return only once the record is on disk (written, flushed, fsynced).

        The record is self-contained (reasons and prior results of the line included):
        its decision record may have been dropped under load, feedback never is.

        Raises ``OSError`` if it could not be written (the caller must not acknowledge).
        Cancelling the caller (its deadline) while waiting for a queue slot enqueues
        nothing; cancelling after enqueueing still lets the record be written, which is
        harmless because a repeated feedback is harmless (docs/reference.md, Feedback).
        """
        if self._closing:
            raise RuntimeError("decision log is closed")
        loop = asyncio.get_running_loop()
        # Everything that can fail is built before a queue slot is taken.
        fields = {
            "schema": SCHEMA,
            "type": "feedback",
            "decision_id": decision_id,
            "line_id": line_id,
            "timestamp": at_us,
            "catalog_version": catalog_version,
            "institution_id": institution_id,
            "department_id": department_id,
            "item_code": item_code,
            "reason_codes": list(reason_codes),
            "prior_result_ids": list(prior_result_ids),
            "outcome": FeedbackOutcome(outcome).name,
            "override_code": override_code,
            "comment": comment,
        }
        if self._feedback_slots is None:
            self._feedback_slots = asyncio.Semaphore(self._max_feedback)
        await self._feedback_slots.acquire()
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closing:
                loop.call_soon(self._release_feedback_slot)
                raise RuntimeError("decision log is closed")
            self._items.append(_Feedback(fields, clinician_id, patient_id, future, loop))
            self._ready.notify()
        await asyncio.wrap_future(future)

    def _release_feedback_slot(self) -> None:
        if self._feedback_slots is not None:
            self._feedback_slots.release()

    # -- writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._closing:
                    self._idle = True
                    self._ready.wait()
                    self._idle = False
                if not self._items:
                    break
                if not self._closing and 0 < self._n_decisions == len(self._items):
                    # Decisions only: gather more before writing (feedback or close
                    # notifies and ends the wait at once).
                    self._ready.wait(self._gather_s)
                batch = list(self._items)
                self._items.clear()
                self._n_decisions = 0
            self._write_batch(batch)
        self._close_file()

    def _write_batch(self, batch: list[DecisionEntry | _Feedback | CountsEntry]) -> None:
        feedback: list[_Feedback] = []
        error: OSError | None = None
        dropped = 0
        for item in batch:
            if isinstance(item, _Feedback):
                feedback.append(item)
                line = self._feedback_line(item)
            elif isinstance(item, CountsEntry):
                line = self._counts_line(item)
            else:
                line = self._decision_line(item)
            try:
                self._append(line)
            except OSError as exc:
                error = exc
                if not isinstance(item, _Feedback):
                    dropped += 1
        try:
            if feedback and error is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            elif self._file is not None:
                self._file.flush()  # decisions: into the OS, survives a crash of this process
        except OSError as exc:
            error = exc
        if error is not None:
            _LOG.error("audit log write failed: %s", error.strerror)
            self._close_file()  # reopened on the next record
        for _ in range(dropped):
            self._on_drop()
        for fb in feedback:
            try:
                if error is None:
                    fb.future.set_result(None)
                else:
                    fb.future.set_exception(error)
            except concurrent.futures.InvalidStateError:
                pass  # the caller was cancelled; the record is written all the same
            # RuntimeError: that loop is closed; nobody waits on its slots any more.
            with contextlib.suppress(RuntimeError):
                fb.loop.call_soon_threadsafe(self._release_feedback_slot)

    def _fail_pending(self, exc: Exception) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        for item in items:
            if isinstance(item, _Feedback):
                item.future.set_exception(exc)

    def _decision_line(self, d: DecisionEntry) -> bytes:
        p = self._pseudonymizer
        order = d.order
        genes = d.gene_codes
        silent: dict[int, list[Reason]] = {}
        for hushed in d.evaluation.silent:
            silent.setdefault(hushed.line, []).append(hushed.reason)
        items = []
        # One ItemDecision per order line, in request order (the engine's contract).
        lines = enumerate(zip(order.items, d.evaluation.items, strict=True))
        for index, (line, it) in lines:
            gene = line.category == _GENE_TEST or it.item_code in genes
            reasons = [*it.reasons, *silent.get(index, ())] if silent else it.reasons
            if not reasons and not gene:
                continue  # data minimisation: a line with nothing to say is not recorded
            entry: dict[str, Any] = {
                "line_id": it.line_id,
                "item_code": it.item_code,
                "decision": _DECISION[it.decision],
                "reasons": [_reason_entry(r) for r in reasons],
            }
            if gene:
                # What a kickback pattern is made of: an allowed send-out is recorded too.
                entry["gene_test"] = True
                entry["sendout_lab_id"] = line.sendout_lab_id
                entry["price_item_code"] = line.price_item_code
            items.append(entry)
        record = {
            "schema": SCHEMA,
            "type": "decision",
            "decision_id": d.decision_id,
            "timestamp": _rfc3339(d.at_us),
            "catalog_version": d.catalog_version,
            "institution_id": order.institution_id,
            "department_id": order.department_id,
            "encounter_type": _ENCOUNTER[order.encounter_type],
            "decision": _DECISION[d.evaluation.decision],
            "items": items,
            "degraded": list(d.degraded),
            "key_id": p.key_id,
            "patient": p.patient(order.patient_id),
            "clinician": p.clinician(order.clinician_id),
        }
        encoded = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        return encoded if len(encoded) <= MAX_DECISION_RECORD_BYTES else _shortened(record)

    def _counts_line(self, c: CountsEntry) -> bytes:
        lines = []
        orders = []
        folded_lines = folded_orders = 0
        for institution, (n_orders, departments) in c.tree.items():
            orders.append({"institution_id": institution, "n": n_orders})
            if institution is None:
                folded_orders += n_orders
            for department, rows in departments.items():
                for item_code, row in rows.items():
                    folded = institution is None or department is None or item_code is None
                    for decision in _DECISIONS:
                        n = row[decision]
                        if n:
                            lines.append(
                                {
                                    "institution_id": institution,
                                    "department_id": department,
                                    "item_code": item_code,
                                    "decision": _DECISION[decision],
                                    "n": n,
                                }
                            )
                            if folded:
                                folded_lines += n
        record = {
            "schema": SCHEMA,
            "type": "counts",
            "timestamp": _rfc3339(c.end_us),
            "from": _rfc3339(c.start_us),
            "to": _rfc3339(c.end_us),
            "lines": lines,
            "orders": orders,
            "folded": {"lines": folded_lines, "orders": folded_orders},
        }
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    def _feedback_line(self, f: _Feedback) -> bytes:
        p = self._pseudonymizer
        record = f.fields
        record["timestamp"] = _rfc3339(record["timestamp"])
        record["key_id"] = p.key_id
        record["patient"] = p.patient(f.patient_id)
        record["clinician"] = p.clinician(f.clinician_id)
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    # -- file handling (writer thread only, after start) --------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=1024 * 1024)
        self._size = os.fstat(fd).st_size
        if self._size and os.pread(fd, 1, self._size - 1) != b"\n":
            # A crash tore the last line: end it, or the next record (an acknowledged
            # feedback, say) would share its line and be unreadable with it.
            self._file.write(b"\n")
            self._size += 1
        self._fsync_dir()  # the file's directory entry must survive a power cut too

    def _archive_feedback(self, doomed: Path) -> None:
        try:
            with open(doomed, "rb") as f:
                kept = [line for line in f if _FEEDBACK_TYPE in line and _is_feedback(line)]
        except FileNotFoundError:
            return
        if not kept:
            return
        fd = os.open(self.feedback_archive, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _close_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            _LOG.error("audit log flush failed: %s", exc.strerror)
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _append(self, line: bytes) -> None:
        if self._file is None:
            self._open()
        if self._size and self._size + len(line) > self._max_bytes:
            self._rotate()
        self._file.write(line)
        self._size += len(line)

    @property
    def feedback_archive(self) -> Path:
        """Where the feedback of a rotated-away file is kept: ``decisions.feedback.jsonl``
        beside ``decisions.jsonl``."""
        return self.path.with_name(f"{self.path.stem}.feedback{self.path.suffix}")

    def _rotate(self) -> None:
        """``path`` → ``path.1`` → … → ``path.N``; the oldest beyond ``backups`` goes,
        but not its feedback records: those are appended to :attr:`feedback_archive`
        first. A clinician was told each was recorded, and supervision counts them;
        size rotation must not make that untrue. The archive grows by one line per
        feedback (a few MB a day for a large hospital) and is never rotated here."""
        self._close_file()  # fsynced: nothing acknowledged is lost in the rename
        oldest = (
            self.path
            if self._backups == 0
            else self.path.with_name(f"{self.path.name}.{self._backups}")
        )
        self._archive_feedback(oldest)
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self._backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()
