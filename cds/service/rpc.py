"""How a handler fails with a status, and the cheap per-call measurement around it.

Handlers raise :class:`RpcFailure`; :func:`instrumented` turns it into the status and
counts it. Measuring in a plain wrapper rather than a ``grpc.aio`` server interceptor
saves the interceptor's extra coroutine and handler look-up on every call; the wrapper
touches only children that :mod:`cds.metrics` resolved at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from cds.metrics import RpcMetrics
from cds.security.transport import DEFAULT_MAX_SEND_BYTES
from cds.service.admission import Admission

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class RpcFailure(Exception):
    """Answer the call with this status; ``details`` names the field or the cause."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def invalid_argument(details: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, details)


CLIENT_FAULT_LOG_EVERY_S = 60.0


class ClientFaults:
    """A WARNING for a client's malformed calls at most once per interval, with a count.

    Whoever can reach the port can send them as fast as the network allows; a line per
    call would let them fill the disk. The first is logged at once (an integrator
    testing a new client sees it), later ones in the same interval are only counted and
    reported with the next line. Never the body: it may carry patient identifiers.
    """

    def __init__(self, every_s: float = CLIENT_FAULT_LOG_EVERY_S) -> None:
        self._every_s = every_s
        self._logged_at = -every_s
        self._unlogged = 0

    def note(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged_at < self._every_s:
            self._unlogged += 1
            return
        since = f"; {self._unlogged} more since the last report" if self._unlogged else ""
        log.warning("client fault: %s%s", what, since)
        self._logged_at = now
        self._unlogged = 0


def instrumented(
    handler: Handler,
    m: RpcMetrics,
    admission: Admission,
    request_type: Any,
    faults: ClientFaults,
    max_response_bytes: int = DEFAULT_MAX_SEND_BYTES,
) -> Handler:
    """Wrap one bound handler: admission, parsing the body, started/handled counters,
    latency, failures to status. A call refused admission is counted too (started, and
    handled by its code).

    The body arrives as bytes and is parsed here, not by grpc: grpc's own deserializer
    answers a bad body ``UNKNOWN`` with an ERROR traceback and no metric. Here it is the
    client's fault it is: ``INVALID_ARGUMENT`` naming the message (``request_type``, a
    generated message class), counted, logged through ``faults``. The response is
    serialized here too, so one over grpc's send limit is counted as what the client
    gets, ``RESOURCE_EXHAUSTED``, not as an OK that grpc then refuses to send.
    """
    started_inc = m.started.inc
    ok_inc = m.handled_ok.inc
    observe = m.seconds.observe
    parse = request_type.FromString
    undecodable = f"cannot decode {request_type.DESCRIPTOR.full_name}"

    async def call(body: bytes, context: grpc.aio.ServicerContext) -> Any:
        if admission.inflight >= admission.limit:
            code, details = admission.refusal()
            started_inc()
            m.handled(code).inc()
            observe(0.0)
            await context.abort(code, details)
        admission.inflight += 1
        started_inc()
        t0 = perf_counter()
        try:
            try:
                request = parse(body)
            except DecodeError:
                faults.note(f"{undecodable} ({m.name})")
                raise invalid_argument(undecodable) from None
            response = (await handler(request, context)).SerializeToString()
            if len(response) > max_response_bytes:
                raise RpcFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"response of {len(response)} bytes over the {max_response_bytes}-byte limit",
                )
        except RpcFailure as failure:
            m.handled(failure.code).inc()
            observe(perf_counter() - t0)
            await context.abort(failure.code, failure.details)
        except asyncio.CancelledError:
            m.handled(grpc.StatusCode.CANCELLED).inc()
            observe(perf_counter() - t0)
            raise
        except Exception:
            # Never the request body: it carries patient identifiers.
            log.exception("unexpected error in %s", m.name)
            m.handled(grpc.StatusCode.INTERNAL).inc()
            observe(perf_counter() - t0)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            admission.inflight -= 1
            if not admission.limit:  # stopping: the shutdown waits for the last one
                admission.wake()
        ok_inc()
        observe(perf_counter() - t0)
        return response

    return call


def capped_timeout(time_remaining: float | None, cap_s: float) -> float:
    """The budget a handler may spend: the client's remaining deadline, never above the cap.

    ``None`` (the client set no deadline) gets the cap: a client cannot buy unbounded
    server time by omitting its deadline.
    """
    if time_remaining is None:
        return cap_s
    return max(0.0, min(time_remaining, cap_s))


def deadline_cap(context: grpc.aio.ServicerContext, cap_s: float) -> asyncio.Timeout:
    """``async with deadline_cap(context, cap):`` around a handler's awaits.

    gRPC enforces the client's own deadline only by cancelling the call when it expires;
    it has no server-side maximum. This bounds the handler's work by
    ``min(client deadline, cap)``; on expiry ``TimeoutError`` is raised (and
    ``.expired()`` on the returned object tells the cap from a store's own timeout).
    The service wraps the feed's store writes (``DEADLINE_EXCEEDED``) and feedback's
    wait for the decision log (``UNAVAILABLE``, retry). Not ``Check``: its one await is
    the store read, which the store bounds itself far tighter (the Redis read timeout),
    so a timer per call on the hot path would buy nothing. Not pure CPU work either,
    which a timeout cannot interrupt anyway.
    """
    return asyncio.timeout(capped_timeout(context.time_remaining(), cap_s))
