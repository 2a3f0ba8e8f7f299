"""Private, durable audit trail: pseudonymised decision and feedback records (JSON lines).

Modelled on Open Policy Agent's decision logs: one self-contained JSON object per line,
each naming the decision it belongs to, the policy (catalogue) version that produced it,
and only the fields supervision needs. Patient and clinician ids never reach the file:
they are replaced by keyed hashes (``Pseudonymizer``) inside the writer thread.

Two very different callers share one writer:

* ``log_decision`` sits on the ``Check`` hot path (every WARN/BLOCK). It must never
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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from cds.domain import Decision, EncounterType, Evaluation, FeedbackOutcome, Order

_LOG = logging.getLogger(__name__)

SCHEMA = "cds.audit/v1"

# 128 bits of HMAC-SHA256 output. Safe because (1) guessing a pseudonym without the key
# is a 2**-128 event per guess — the secrecy of the key, not the length, is what stops a
# dictionary attack over the small space of hospital ids; (2) by the birthday bound the
# chance that two of n ids share a pseudonym is about n**2 / 2**129: for 10**9 ids that
# is ~1.5e-21, so records never merge two people. Half the hex keeps lines short.
PSEUDONYM_HEX_CHARS = 32
MIN_KEY_BYTES = 32
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")

# Separate namespaces: the same string used as a patient id and as a clinician id
# gets unrelated pseudonyms, so the two populations cannot be joined through the log.
_PATIENT = b"patient\x00"
_CLINICIAN = b"clinician\x00"


class PseudonymKeyError(ValueError):
    """The pseudonym key file is missing, unreadable or malformed (message says which)."""


def new_key_line(key_id: str) -> str:
    """A fresh line for the key file (256 random bits, hex); append it to rotate.

    Shell equivalent:
    ``python -c 'import secrets; print("2025-06", secrets.token_hex(32))' >> KEYFILE``
    """
    if not _KEY_ID_RE.match(key_id):
        raise ValueError(f"key id {key_id!r} must match {_KEY_ID_RE.pattern}")
    return f"{key_id} {secrets.token_hex(MIN_KEY_BYTES)}"


class Pseudonymizer:
    """Keyed hash (HMAC-SHA256) of patient and clinician ids, with rotatable keys.

    Why keyed: hospital ids are a small, guessable space, so a plain hash would be
    reversed by hashing every possible id. Why several keys: rotation appends a new key;
    the newest (last) signs new records, each record names its ``key_id``, and the older
    keys stay in the file so an investigator holding a patient id can still find that
    patient's older records (``pseudonyms_of``).
    """

    __slots__ = ("_active", "_keys", "key_id")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise PseudonymKeyError("no pseudonym key given")
        seen: set[str] = set()
        for key_id, key in keys:
            if not _KEY_ID_RE.match(key_id):
                raise PseudonymKeyError(f"key id {key_id!r} must match {_KEY_ID_RE.pattern}")
            if key_id in seen:
                raise PseudonymKeyError(f"key id {key_id!r} appears twice")
            if len(key) < MIN_KEY_BYTES:
                raise PseudonymKeyError(
                    f"key {key_id!r} has {len(key)} bytes; at least {MIN_KEY_BYTES} are required"
                )
            seen.add(key_id)
        # A prepared HMAC per key; .copy() per id skips re-deriving the padded key blocks.
        self._keys = {key_id: hmac.new(key, digestmod=hashlib.sha256) for key_id, key in keys}
        self.key_id: str = keys[-1][0]
        self._active = self._keys[self.key_id]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pseudonymizer:
        """Read ``KEY_ID HEXKEY`` lines (``#`` comments allowed); the last key signs.

        Refuses a missing file, a malformed line or a key under 256 bits, naming the line,
        so a server never starts writing records it could not later link.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            mode = p.stat().st_mode
        except OSError as exc:
            raise PseudonymKeyError(f"cannot read pseudonym key file {p}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            _LOG.warning("pseudonym key file %s is accessible by group/others; chmod 600 it", p)
        keys: list[tuple[str, bytes]] = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise PseudonymKeyError(f"{p}:{lineno}: expected 'KEY_ID HEXKEY'")
            try:
                key = bytes.fromhex(parts[1])
            except ValueError:
                raise PseudonymKeyError(f"{p}:{lineno}: key is not hexadecimal") from None
            if len(key) < MIN_KEY_BYTES:
                raise PseudonymKeyError(
                    f"{p}:{lineno}: key has {len(key)} bytes; at least {MIN_KEY_BYTES} are "
                    f"required (generate one with cds.audit.new_key_line)"
                )
            keys.append((parts[0], key))
        if not keys:
            raise PseudonymKeyError(f"pseudonym key file {p} holds no key")
        return cls(keys)

    @classmethod
    def ephemeral(cls) -> Pseudonymizer:
        """A random key that lives only in this process.

        Used when no key file is configured, so raw ids are still never written. The
        trade-off: pseudonyms do not link across restarts (or across worker processes),
        so supervision cannot follow one patient over time. Configure a key file for that.
        """
        return cls([(f"ephemeral-{secrets.token_hex(4)}", secrets.token_bytes(MIN_KEY_BYTES))])

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None) -> Pseudonymizer:
        """The server's choice: the key file if given, else an ephemeral key and a warning."""
        if path is not None:
            return cls.from_file(path)
        _LOG.warning(
            "no --pseudonym-key configured: audit pseudonyms use a per-process random key "
            "and will not link across restarts"
        )
        return cls.ephemeral()

    def _hash(self, mac: hmac.HMAC, namespace: bytes, raw: str) -> str:
        if not raw:
            return ""  # an absent id stays absent; hashing "" would invent a shared person
        h = mac.copy()
        h.update(namespace)
        h.update(raw.encode("utf-8"))
        return h.hexdigest()[:PSEUDONYM_HEX_CHARS]

    def patient(self, patient_id: str) -> str:
        return self._hash(self._active, _PATIENT, patient_id)

    def clinician(self, clinician_id: str) -> str:
        return self._hash(self._active, _CLINICIAN, clinician_id)

    def pseudonyms_of(self, *, patient_id: str = "", clinician_id: str = "") -> dict[str, str]:
        """``{key_id: pseudonym}`` under every key: how to find one person's records."""
        if bool(patient_id) == bool(clinician_id):
            raise ValueError("give exactly one of patient_id or clinician_id")
        ns, raw = (_PATIENT, patient_id) if patient_id else (_CLINICIAN, clinician_id)
        return {key_id: self._hash(mac, ns, raw) for key_id, mac in self._keys.items()}


# Keyed by int so a plain int from any caller formats the same as the enum member.
_DECISION = {int(d): d.name for d in Decision}
_ENCOUNTER = {int(e): e.name for e in EncounterType}


def _rfc3339(at_us: int) -> str:
    # Whole seconds and microseconds from the int: exact, no float rounding.
    dt = _dt.datetime.fromtimestamp(at_us // 1_000_000, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_us % 1_000_000:06d}Z"


class _Decision(NamedTuple):
    decision_id: str
    order: Order
    evaluation: Evaluation
    catalog_version: str
    degraded: tuple[str, ...]
    at_us: int


class _Feedback(NamedTuple):
    fields: dict[str, Any]
    clinician_id: str
    patient_id: str
    future: concurrent.futures.Future[None]
    loop: asyncio.AbstractEventLoop


# How long the writer gathers decisions before writing them. Waking the writer for each
# WARN/BLOCK decision cost the Check path a thread switch, a GIL hand-over and a write
# system call per decision, on the server's core; batched, those are paid ~20 times a
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
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 10,
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
        self._items: deque[_Decision | _Feedback] = deque()
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

    def log_decision(
        self,
        *,
        decision_id: str,
        order: Order,
        evaluation: Evaluation,
        catalog_version: str,
        degraded: Sequence[str],
        at_us: int,
    ) -> None:
        """Queue a WARN/BLOCK decision; never blocks. Dropped (``on_drop()``) when full."""
        record = _Decision(decision_id, order, evaluation, catalog_version, tuple(degraded), at_us)
        with self._lock:
            if self._n_decisions < self._max_decisions and not self._closing:
                self._items.append(record)
                self._n_decisions += 1
                if self._idle:
                    self._ready.notify()
                return
        self._on_drop()

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
        harmless because a repeated feedback is harmless (contract §1 Feedback).
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
                if not self._closing and self._n_decisions == len(self._items):
                    # Decisions only: gather more before writing (feedback or close
                    # notifies and ends the wait at once).
                    self._ready.wait(self._gather_s)
                batch = list(self._items)
                self._items.clear()
                self._n_decisions = 0
            self._write_batch(batch)
        self._close_file()

    def _write_batch(self, batch: list[_Decision | _Feedback]) -> None:
        feedback: list[_Feedback] = []
        error: OSError | None = None
        dropped = 0
        for item in batch:
            if isinstance(item, _Feedback):
                feedback.append(item)
                line = self._feedback_line(item)
            else:
                line = self._decision_line(item)
            try:
                self._append(line)
            except OSError as exc:
                error = exc
                if isinstance(item, _Decision):
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

    def _decision_line(self, d: _Decision) -> bytes:
        p = self._pseudonymizer
        order = d.order
        items = []
        for it in d.evaluation.items:
            if not it.reasons:
                continue  # data minimisation: an item with nothing to say is not recorded
            items.append(
                {
                    "line_id": it.line_id,
                    "item_code": it.item_code,
                    "decision": _DECISION[it.decision],
                    "reasons": [
                        {
                            "code": r.code,
                            "decision": _DECISION[r.decision],
                            "prior_result_ids": [pr.result_id for pr in r.prior_results],
                        }
                        for r in it.reasons
                    ],
                }
            )
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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=1024 * 1024)
        self._size = os.fstat(fd).st_size
        self._fsync_dir()  # the file's directory entry must survive a power cut too

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

    def _rotate(self) -> None:
        """``path`` → ``path.1`` → … → ``path.N``; the oldest beyond ``backups`` goes."""
        self._close_file()  # fsynced: nothing acknowledged is lost in the rename
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self._backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()
