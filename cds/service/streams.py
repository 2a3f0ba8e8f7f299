"""Long-lived streams (health ``Watch``, reflection) under a bound of their own.

A health ``Watch`` is unauthenticated (load balancers must reach it) and lasts as long
as its client likes. Counted in the same cap as the unary RPCs, 50 held watches once
made every ``Check`` fail ``RESOURCE_EXHAUSTED`` under ``--max-concurrent-rpcs 50``.
So streams get their own count (``--max-streams``), unary RPCs theirs (:class:`~cds.
service.admission.Admission`), and grpc's own cap is the sum of the two: neither kind
can take the other's room.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

REFUSED = "too many open streams (--max-streams {limit}); retry later"


class StreamGate:
    """How many streams are open and how many may be; loop thread only."""

    __slots__ = ("_on_refused", "limit", "open")

    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self._on_refused = on_refused

    def bound(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` (a servicer's streaming method: a coroutine writing through the
        context, as health's ``Watch``, or an async generator, as reflection's) refused
        beyond the limit."""
        if inspect.isasyncgenfunction(method):

            async def generated(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._enter(context)
                try:
                    async for response in method(request, context):
                        yield response
                finally:
                    self.open -= 1

            return generated

        async def gated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._enter(context)
            try:
                return await method(request, context)
            finally:
                self.open -= 1

        return gated

    async def _enter(self, context: grpc.aio.ServicerContext) -> None:
        if self.open >= self.limit:
            if self._on_refused is not None:
                self._on_refused()
            details = REFUSED.format(limit=self.limit)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.open += 1


class Gated:
    """A servicer whose streaming methods (by name) go through ``gate``; the rest as is.

    Handed to the generated ``add_*Servicer_to_server``, which reads each method once.
    """

    def __init__(self, servicer: object, gate: StreamGate, streaming: tuple[str, ...]) -> None:
        self._servicer = servicer
        self._gate = gate
        self._streaming = streaming

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._servicer, name)
        return self._gate.bound(attr) if name in self._streaming else attr
