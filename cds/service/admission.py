"""Which calls of ours may start: counted in flight, refused once the server stops.

The instrumented wrapper (:func:`cds.service.rpc.instrumented`) asks :class:`Admission`
before every call of the RPC table. A shutdown after the drain window refuses new calls
here with ``UNAVAILABLE`` (retryable, unlike the ``CANCELLED`` grpc gives the calls its
own shutdown catches) and waits for the ones in flight, so ``grpc.aio``'s stop finds
nothing of ours left to cancel.

The wrapper's whole cost is one comparison before the call and one decrement after it:
``inflight >= limit`` covers both refusals: ``limit`` is ``--max-concurrent-rpcs``
(``RESOURCE_EXHAUSTED``, the EMR fails open at once), dropping to 0 when stopping
(``UNAVAILABLE``).
"""

from __future__ import annotations

import asyncio
import sys

import grpc

REFUSED_STOPPING = "the server is shutting down: retry, another replica will answer"
REFUSED_BUSY = "server busy: --max-concurrent-rpcs {limit} calls in progress; retry shortly"


class Admission:
    """The calls in flight and how many more may start; one per server, loop thread only."""

    __slots__ = ("_idle", "cap", "inflight", "limit")

    def __init__(self, cap: int = sys.maxsize) -> None:
        self.inflight = 0
        # --max-concurrent-rpcs: unary calls only (streams have a gate of their own,
        # cds.service.streams), refused RESOURCE_EXHAUSTED at once rather than queued.
        self.cap = cap
        self.limit = cap
        self._idle: asyncio.Event | None = None

    @property
    def stopping(self) -> bool:
        return self.limit == 0

    def refusal(self) -> tuple[grpc.StatusCode, str]:
        """The status a call refused now gets."""
        if self.stopping:
            return grpc.StatusCode.UNAVAILABLE, REFUSED_STOPPING
        return grpc.StatusCode.RESOURCE_EXHAUSTED, REFUSED_BUSY.format(limit=self.cap)

    def wake(self) -> None:
        """While stopping, after a call ended: tell :meth:`drained` when it was the last."""
        if self._idle is not None and self.inflight <= 0:
            self._idle.set()

    def refuse_new(self) -> None:
        """From now on every new call is refused ``UNAVAILABLE``."""
        self.limit = 0

    async def drained(self, timeout: float) -> bool:
        """Wait until no admitted call is in flight (at most ``timeout`` s); True if none is."""
        if self.inflight <= 0:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
