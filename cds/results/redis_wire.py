"""One multiplexed, pipelined Redis connection for the hot, idempotent commands.

Why not redis-py for these. Its asyncio client takes a pooled connection per command
(pid check, pool lock, health bookkeeping), wraps every send and every read in an
``asyncio.wait_for``, packs in Python and goes through its retry and observability
layers: under load, ``get_patient`` and the shared-decision writes through it were a
large share of the server's CPU. And under a burst it opens one connection per
concurrent command, each paying a connect against the read path's short connect
timeout.

What this does instead. Redis answers the commands of one connection in order, so one
connection carries every concurrent command: a command is appended to an output buffer
and a FIFO of futures; the buffer goes out in one ``write`` per event-loop tick; replies
are parsed by ``hiredis.Reader`` as they arrive and complete the futures in order.

Timeouts without a timer per call: each command records its deadline; one watchdog
timer, armed for the oldest unanswered command, fails every command past its deadline
with :class:`ReadTimeout` (a ``ResultsUnavailable``). Their replies, if Redis sends
them later, are read and dropped, so the connection stays usable after a short stall;
one stalled for ``stall_s`` is closed and the next command reconnects. A lost
connection fails its commands with :class:`ConnectionLost`; :meth:`call` retries those
once on a fresh connection (a Redis restart), so only idempotent commands belong here.
Connecting is shared by every caller and bounded by ``connect_timeout_s``.

Scope. Plain TCP (``redis://``) and Unix sockets (``unix://``), with the URL's user,
password and database. TLS (``rediss://``), Cluster and URL query options stay with
redis-py (:func:`supports` says which; :mod:`cds.results.redis_connection` picks the
client), as do writes needing scripts and pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

from cds.results.base import ResultsUnavailable

_PLAIN_KEYS = frozenset({"host", "port", "db", "username", "password", "path"})


class ReadTimeout(ResultsUnavailable):
    """Redis did not answer a command within its timeout."""


class ConnectionLost(ResultsUnavailable):
    """The connection closed (or could not be opened) before the command was answered."""


def supports(url: str) -> bool:
    """Whether :class:`PipelinedRedis` can serve ``url`` (else use redis-py)."""
    try:
        kwargs = parse_url(url)
    except ValueError:
        return False
    cls = kwargs.pop("connection_class", None)
    return (cls is None or cls is UnixDomainSocketConnection) and set(kwargs) <= _PLAIN_KEYS


def pack(*args: str | bytes | int) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def pack_hgetall(key: str) -> bytes:
    data = key.encode()
    return b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n" % (len(data), data)


class _Link(asyncio.Protocol):
    """One connection's state: its transport, parser, and unanswered commands in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, stall_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._stall_s = stall_s
        self._transport: asyncio.Transport | None = None
        self._parser = hiredis.Reader()
        self._futures: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[float] = deque()
        self._expired = 0  # how many leading futures the watchdog already failed
        self._out: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        self.open = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.open = True

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        futures = self._futures
        deadlines = self._deadlines
        try:
            while (reply := parser.gets()) is not False:
                if not futures:  # a reply nobody asked for: the stream is out of step
                    self.abort("unexpected reply")
                    return
                future = futures.popleft()
                deadlines.popleft()
                if self._expired:
                    self._expired -= 1
                if future.done():  # timed out or cancelled: drop its late reply
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ResultsUnavailable(f"redis error: {reply}"))
                else:
                    future.set_result(reply)
        except hiredis.ProtocolError:
            self.abort("protocol error")

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        futures, self._futures = self._futures, deque()
        self._deadlines.clear()
        self._out.clear()
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionLost("redis connection lost"))

    # -- sending --------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one command; its reply (or failure) completes the returned future."""
        loop = self._loop
        future = loop.create_future()
        if not self.open:
            future.set_exception(ConnectionLost("redis connection closed"))
            return future
        deadline = loop.time() + self._timeout_s
        self._futures.append(future)
        self._deadlines.append(deadline)
        out = self._out
        if not out:
            loop.call_soon(self._flush)
        out.append(packed)
        if self._watchdog is None:
            self._watch(deadline)
        elif deadline < self._watch_at:  # armed only for the stall check
            self._watchdog.cancel()
            self._watch(deadline)
        return future

    def _watch(self, when: float) -> None:
        self._watch_at = when
        self._watchdog = self._loop.call_at(when, self._check_deadlines)

    def _flush(self) -> None:
        out = self._out
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if not self.open:
            return
        now = self._loop.time()
        futures = self._futures
        deadlines = self._deadlines
        n = len(futures)
        i = self._expired
        while i < n and deadlines[i] <= now:
            future = futures[i]
            if not future.done():
                future.set_exception(ReadTimeout("redis did not answer in time"))
            i += 1
        self._expired = i
        if n and deadlines[0] + self._stall_s <= now:
            self.abort("stalled")  # fails everything still queued; the next call reconnects
        elif i < n:
            self._watch(deadlines[i])
        elif n:  # all expired, none answered yet: look again when it would count as stalled
            self._watch(deadlines[0] + self._stall_s)

    def abort(self, why: str) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()  # connection_lost follows and fails the queued commands
        else:
            self.connection_lost(ConnectionLost(why))


class PipelinedRedis:
    """A client for idempotent commands over one shared connection; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        stall_s: float | None = None,
    ) -> None:
        if not supports(url):
            raise ValueError("PipelinedRedis serves plain redis:// and unix:// URLs only")
        kwargs = parse_url(url)
        self._host: str = kwargs.get("host", "localhost")
        self._port: int = int(kwargs.get("port", 6379))
        self._path: str | None = kwargs.get("path")
        handshake = []
        if kwargs.get("password") is not None:
            user = kwargs.get("username")
            auth = ("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"])
            handshake.append(pack(*auth))
        if int(kwargs.get("db") or 0):
            handshake.append(pack("SELECT", int(kwargs["db"])))
        self._handshake = handshake
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._stall_s = max(1.0, 10 * timeout_s) if stall_s is None else stall_s
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None
        self._closed = False

    def open_link(self) -> _Link | None:
        """The open connection, for a caller that queues commands without awaiting
        (``_Link.send``); ``None`` while there is none (then use :meth:`call_many`)."""
        link = self._link
        return link if link is not None and link.open else None

    async def call(self, packed: bytes) -> Any:
        """One packed command's reply; raises ``ResultsUnavailable`` (or a subclass)."""
        link = self._link
        if link is None or not link.open:
            link = await self._connect()
        try:
            return await link.send(packed)
        except ConnectionLost:
            link = await self._connect()  # once: a connection Redis closed (restart)
            return await link.send(packed)

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        reply = await self.call(pack_hgetall(key))
        if not reply:
            return {}
        it = iter(reply)
        return dict(zip(it, it, strict=True))

    async def call_many(self, packed: list[bytes]) -> list[Any]:
        """Several commands in one write; their replies in order. Raises the first failure
        once every command has been answered or failed. No retry: a batch may be partly
        applied, so the caller decides."""
        link = self._link
        if link is None or not link.open:
            link = await self._connect()
        futures = [link.send(p) for p in packed]
        replies: list[Any] = []
        error: BaseException | None = None
        for future in futures:
            try:
                replies.append(await future)
            except ResultsUnavailable as e:
                error = error or e
        if error is not None:
            raise error
        return replies

    async def _connect(self) -> _Link:
        if self._closed:
            raise ConnectionLost("redis client closed")
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._connect_done)
        # shielded: one caller's cancellation must not cancel everyone's connect
        return await asyncio.shield(task)

    def _connect_done(self, task: asyncio.Task[_Link]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved, even if every caller was cancelled meanwhile

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()

        def factory() -> _Link:
            return _Link(loop, self._timeout_s, self._stall_s)

        link: _Link | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._path is not None:
                    _, link = await loop.create_unix_connection(factory, self._path)
                else:
                    _, link = await loop.create_connection(factory, self._host, self._port)
                for reply in [link.send(p) for p in self._handshake]:
                    await reply
        except (OSError, TimeoutError, ResultsUnavailable) as e:
            if link is not None:
                link.abort("handshake failed")
            raise ConnectionLost(f"redis connect failed: {type(e).__name__}") from e
        if self._closed:
            link.abort("closed")
            raise ConnectionLost("redis client closed")
        self._link = link
        return link

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
            self._connecting = None
        if self._link is not None:
            self._link.abort("closed")
            self._link = None
