"""Decisions shared through Redis, so feedback is found whichever worker or replica gets it.

With several workers (or replicas) the Check and its SubmitFeedback rarely reach the
same process: SO_REUSEPORT and load balancers spread connections. So, next to the
local :class:`~cds.decisions.DecisionMemory` (every decision, no round trip), each
decision that carries a reason is written to Redis as one small key
``<prefix>d:<decision_id>`` that expires after ``--decision-ttl`` (default an hour).

What is shared, and why not more:

* Only decisions with at least one reason. Feedback answers a warning or block the
  clinician was shown; an answer with no reasons has nothing to accept or override.
  Writing every ALLOW would cost a Redis write per order for nothing (feedback on
  such a decision is still found by the worker that made it).
* Only what feedback and its log record need: the ids, the catalogue version, each
  line's code and decision, each reason's code and decision and the offered override
  codes with their "comment required" flag and the listed prior results' ids: the
  local memory's own record (:func:`cds.decisions.memory.encode`), so it is encoded
  once — not the clinician-facing texts.

Off the Check path: ``remember`` appends to a list and, once per event-loop tick,
schedules a callback that sends what gathered as ``SET``s into the pipelined
connection opened at start and counts their replies when the last arrives — no task
wake-up and no await per batch, the write leaves after this tick's checks, typically
before the answer has reached the EMR, while a clinician takes seconds to click. (On
Cluster or TLS, redis-py's pipeline writes instead: :mod:`cds.results.redis_connection`
says which client serves the URL.) For the rare feedback that still overtakes its
write (an automated EMR, a slow Redis), a miss is asked again once after
``MISS_RETRY_S``. If Redis is down the decisions stay local (logged, rate-limited) and
feedback that reaches another process gets ``UNAVAILABLE`` (retry) rather than a wrong
``NOT_FOUND``. A decision that could not be written stays local for good: once Redis
answers again, feedback for it that reaches another process is not found, so each one
is counted (``on_unshared``: the server's ``cds_decisions_unshared_total``).

Whether the same feedback was already recorded stays per process: a retry that lands
on another worker is written to that worker's decision log too (the records carry
``decision_id`` and ``line_id``, so supervision can count each line once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from redis.exceptions import RedisError

from cds.config import (
    DEFAULT_DECISION_TTL_SECONDS,
    DEFAULT_MAX_DECISION_BYTES,
    DEFAULT_MAX_DECISIONS,
)
from cds.decisions.memory import DecisionMemory, Remembered, decode
from cds.decisions.memory import encode as encode_record
from cds.domain import Decision, Evaluation, Order
from cds.results.base import ResultsUnavailable
from cds.results.redis_connection import RedisConnection
from cds.results.redis_wire import pack

log = logging.getLogger(__name__)

_ALLOW = Decision.ALLOW
# Decisions waiting for the writer beyond this are kept locally only (Redis too slow).
MAX_PENDING = 10_000
_WARN_EVERY_S = 10.0
# A decision written by another process may be a write away: ask once more after this.
MISS_RETRY_S = 0.05


def encode(r: Remembered) -> bytes:
    """The compact record, the local memory's own (cds.decisions.memory.encode)."""
    return encode_record(
        r.patient_id,
        r.clinician_id,
        r.institution_id,
        r.department_id,
        r.catalog_version,
        r.evaluation,
    )


def _worth_sharing(evaluation: Evaluation) -> bool:
    if evaluation.decision > _ALLOW:
        return True
    return any(item.reasons for item in evaluation.items)  # e.g. an emergency exemption


class SharedDecisionMemory(DecisionMemory):
    """The local memory plus Redis; :meth:`lookup` falls back to Redis on a local miss."""

    def __init__(
        self,
        url: str,
        max_decisions: int = DEFAULT_MAX_DECISIONS,
        ttl_seconds: float = DEFAULT_DECISION_TTL_SECONDS,
        *,
        key_prefix: str = "cds:",
        timeout_s: float = 0.5,
        on_unshared: Callable[[int], object] | None = None,
        max_bytes: int = DEFAULT_MAX_DECISION_BYTES,
    ) -> None:
        super().__init__(max_decisions, ttl_seconds, max_bytes=max_bytes)
        self._prefix = f"{key_prefix}d:"
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        # Writes follow the answer and lookups serve feedback: off the Check path, so they
        # may wait longer than a check's read of results.
        self._connection = RedisConnection(url, connect_timeout_s=timeout_s, timeout_s=timeout_s)
        # Writes and lookups go through the pipelined link where it serves the URL:
        # redis-py's pipeline and a task wake-up per batch cost a loaded server a
        # noticeable share of its CPU.
        self._pipe = self._connection.pipe
        self._pending: list[tuple[str, bytes]] = []  # (decision_id, its record)
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(): sharing on
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None  # a write that has to await (connect)
        self._in_flight: set[asyncio.Future[Any]] = set()  # last SET of each sent batch
        self._warned_at = 0.0
        self.unshared = 0  # decisions that could not be written (kept locally only)
        self._on_unshared = on_unshared

    async def start(self) -> None:
        # Connect now (not on the first decision), so the first write is not slower
        # than the feedback that follows it. Redis being down is fine: writes retry.
        await self._connection.start()
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if self._loop is not None:
            self._loop = None  # no more sharing; write what the last checks remembered
            if self._task is not None:
                await self._task
            await self._flush()
            if self._in_flight:
                await asyncio.wait(self._in_flight)  # each bounded by the command timeout
        await self._connection.close()

    def remember(
        self, decision_id: str, order: Order, evaluation: Evaluation, catalog_version: str
    ) -> bytes:
        record = super().remember(decision_id, order, evaluation, catalog_version)
        loop = self._loop
        if loop is not None and _worth_sharing(evaluation):
            if len(self._pending) < MAX_PENDING:
                self._pending.append((decision_id, record))
                if not self._scheduled:  # one write per event-loop tick, after this check
                    self._scheduled = True
                    loop.call_soon(self._write_pending)
            else:
                self._count_unshared(1)
        return record

    async def lookup(self, decision_id: str) -> Remembered | None:
        local = self.recall(decision_id)
        if local is not None:
            return local
        key = self._prefix + decision_id
        try:
            data = await self._get(key)
            if data is None:
                await asyncio.sleep(MISS_RETRY_S)
                data = await self._get(key)
        except (RedisError, OSError) as e:
            raise ResultsUnavailable(f"redis read failed: {type(e).__name__}") from e
        return None if data is None else decode(data)

    async def _get(self, key: str) -> bytes | None:
        if self._pipe is not None:  # raises ResultsUnavailable itself
            data: bytes | None = await self._pipe.call(pack("GET", key))
            return data
        # bytes, as the pipe's: the clients leave replies undecoded
        return cast("bytes | None", await self._connection.client.get(key))

    def _write_pending(self) -> None:
        """Send what gathered during this tick: with the pipelined connection open, the
        SETs go straight into it and one callback counts their replies (no task, no
        wake-up per batch); else a task connects (or uses redis-py) and writes."""
        self._scheduled = False
        if not self._pending:
            return
        link = self._pipe.open_link() if self._pipe is not None else None
        if link is None or (self._task is not None and not self._task.done()):
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(
                    self._flush(), name="cds-shared-decisions"
                )
            return  # a running _flush takes this batch too
        batch, self._pending = self._pending, []
        prefix, ttl_ms = self._prefix, self._ttl_ms
        futures = [link.send(pack("SET", prefix + d, r, "PX", ttl_ms)) for d, r in batch]
        last = futures[-1]  # replies come in order: when it is done, all are
        self._in_flight.add(last)
        last.add_done_callback(lambda _: self._written(futures))

    def _written(self, futures: list[asyncio.Future[Any]]) -> None:
        self._in_flight.discard(futures[-1])
        failures = 0
        error: BaseException | None = None
        for future in futures:
            failed = future.cancelled() or future.exception()  # also marks it retrieved
            if failed:
                failures += 1
                error = error or (failed if isinstance(failed, BaseException) else None)
        if failures:
            self._count_unshared(failures)
        if error is not None:
            self._warn(error)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                if self._pipe is not None:
                    prefix, ttl_ms = self._prefix, self._ttl_ms
                    await self._pipe.call_many(
                        [pack("SET", prefix + d, r, "PX", ttl_ms) for d, r in batch]
                    )
                else:
                    pipe = self._connection.client.pipeline(transaction=False)
                    for decision_id, record in batch:
                        pipe.set(self._prefix + decision_id, record, px=self._ttl_ms)
                    await pipe.execute()
            except (RedisError, OSError, ResultsUnavailable) as e:
                self._count_unshared(len(batch))
                self._warn(e)

    def _count_unshared(self, n: int) -> None:
        self.unshared += n
        if self._on_unshared is not None:
            self._on_unshared(n)

    def _warn(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at > _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "decisions not shared through Redis (%s): feedback for them is found "
                "only by this process until Redis answers again",
                type(error).__name__,
            )
