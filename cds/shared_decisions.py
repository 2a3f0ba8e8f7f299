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
  codes with their "comment required" flag — not the clinician-facing texts or the
  listed prior results (~150 bytes as JSON for a one-line warning).

Off the Check path: ``remember`` appends to a list; a background task writes what has
gathered in one pipeline, on a connection opened at start, as soon as the loop is free
— typically before the answer has reached the EMR, while a clinician takes seconds to
click. For the rare feedback that still overtakes its write (an automated EMR, a slow
Redis), a miss is asked again once after ``MISS_RETRY_S``. If Redis is down the
decisions stay local (logged, rate-limited) and feedback that reaches another process
gets ``UNAVAILABLE`` (retry) rather than a wrong ``NOT_FOUND``.

Whether the same feedback was already recorded stays per process: a retry that lands
on another worker is written to that worker's decision log too (the records carry
``decision_id`` and ``line_id``, so supervision can count each line once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from cds.config import DEFAULT_DECISION_TTL_SECONDS, DEFAULT_MAX_DECISIONS
from cds.decisions import DecisionMemory, Remembered
from cds.domain import (
    Decision,
    Evaluation,
    ItemDecision,
    Order,
    OverrideOption,
    Reason,
)
from cds.results.base import ResultsUnavailable

log = logging.getLogger(__name__)

_ALLOW = Decision.ALLOW
_CLUSTER_SCHEME = "redis+cluster://"
# Decisions waiting for the writer beyond this are kept locally only (Redis too slow).
MAX_PENDING = 10_000
_WARN_EVERY_S = 10.0
# A decision written by another process may be a write away: ask once more after this.
MISS_RETRY_S = 0.05


def encode(r: Remembered) -> bytes:
    """The compact record (see the module docstring for what is left out)."""
    ev = r.evaluation
    return orjson.dumps(
        [
            r.patient_id,
            r.clinician_id,
            r.institution_id,
            r.department_id,
            r.catalog_version,
            int(ev.decision),
            [
                [
                    i.line_id,
                    i.item_code,
                    int(i.decision),
                    [
                        [
                            x.code,
                            int(x.decision),
                            [[o.code, o.requires_comment] for o in x.override_options],
                        ]
                        for x in i.reasons
                    ],
                ]
                for i in ev.items
            ],
        ]
    )


def decode(data: bytes) -> Remembered:
    patient, clinician, institution, department, version, decision, items = orjson.loads(data)
    return Remembered(
        patient,
        clinician,
        institution,
        department,
        version,
        Evaluation(
            Decision(decision),
            tuple(
                ItemDecision(
                    line_id,
                    item_code,
                    Decision(line_decision),
                    tuple(
                        Reason(
                            code,
                            Decision(reason_decision),
                            "",
                            (),
                            tuple(OverrideOption(o, "", comment) for o, comment in options),
                        )
                        for code, reason_decision, options in reasons
                    ),
                )
                for line_id, item_code, line_decision, reasons in items
            ),
        ),
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
    ) -> None:
        super().__init__(max_decisions, ttl_seconds)
        self._prefix = f"{key_prefix}d:"
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        options: dict[str, Any] = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
        if url.startswith(_CLUSTER_SCHEME):
            self._redis: Any = RedisCluster.from_url(
                "redis://" + url[len(_CLUSTER_SCHEME) :], **options
            )
        else:
            self._redis = Redis.from_url(url, **options)
        self._pending: list[tuple[str, Remembered]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0.0
        self.unshared = 0  # decisions that could not be written (kept locally only)

    async def start(self) -> None:
        # Connect now (not on the first decision), so the first write is not slower
        # than the feedback that follows it. Redis being down is fine: writes retry.
        with contextlib.suppress(RedisError, OSError):
            await self._redis.ping()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._write_forever(), name="cds-shared-decisions"
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await self._flush()  # what the last checks remembered
        await self._redis.aclose()

    def remember(
        self, decision_id: str, order: Order, evaluation: Evaluation, catalog_version: str
    ) -> None:
        super().remember(decision_id, order, evaluation, catalog_version)
        if _worth_sharing(evaluation) and self._wake is not None:
            remembered = Remembered(
                order.patient_id,
                order.clinician_id,
                order.institution_id,
                order.department_id,
                catalog_version,
                evaluation,
            )
            if len(self._pending) < MAX_PENDING:
                self._pending.append((decision_id, remembered))
                self._wake.set()
            else:
                self.unshared += 1

    async def lookup(self, decision_id: str) -> Remembered | None:
        local = self.recall(decision_id)
        if local is not None:
            return local
        key = self._prefix + decision_id
        try:
            data = await self._redis.get(key)
            if data is None:
                await asyncio.sleep(MISS_RETRY_S)
                data = await self._redis.get(key)
        except (RedisError, OSError) as e:
            raise ResultsUnavailable(f"redis read failed: {type(e).__name__}") from e
        return None if data is None else decode(data)

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        pipe = self._redis.pipeline(transaction=False)
        for decision_id, remembered in batch:
            pipe.set(self._prefix + decision_id, encode(remembered), px=self._ttl_ms)
        try:
            await pipe.execute()
        except (RedisError, OSError) as e:
            self.unshared += len(batch)
            now = time.monotonic()
            if now - self._warned_at > _WARN_EVERY_S:
                self._warned_at = now
                log.warning(
                    "decisions not shared through Redis (%s): feedback for them is found "
                    "only by this process until Redis answers again",
                    type(e).__name__,
                )
