"""The Prometheus endpoint: only ``GET /metrics``, a bounded number of connections, and
none of them held by a client that connects and sends nothing.

``prometheus_client.start_http_server`` answers every path and method (OPTIONS with 200)
and spends a thread per connection: 300 half-open connections were 309 threads. Here
one thread runs an event loop of its own, so a scrape neither waits on nor delays the
gRPC loop's scheduling (a stalled gRPC loop still lets scrapes through), and one more
renders the text, so a slow collector does not stop the loop from enforcing the
timeouts. A connection costs a coroutine and a socket, and there are at most
``max_connections`` of them.

At the cap, a new connection takes the place of the oldest one still waiting for its
request head (the one most likely idle or abusive); only when every slot is answering a
request is the newcomer closed at once. So a handful of idle connections cannot lock a
scraper out, and what the process spends stays bounded either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import logging
import socket
import threading
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_HEAD_BYTES = 8 * 1024
# After an answer to a request that may have carried a body, how long its remainder is
# read and dropped: closing with unread input sends a reset, which can cost the client
# the answer it was sent.
LINGER_S = 1.0
_BACKLOG = 128
_START_WAIT_S = 10.0
_STOP_WAIT_S = 10.0
_ALLOW = "GET, HEAD"


class _Connection:
    __slots__ = ("answering", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.answering = False  # its request head is in: not to be displaced


class MetricsServer:
    """``registry`` at ``http://HOST:PORT/metrics``, from the moment the constructor returns.

    The socket is bound here, in the caller's thread, so a port in use is an ``OSError``
    to the caller, as with ``start_http_server``. ``timeout_s`` bounds both the wait for
    a request head and the wait for the client to take the answer.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._registry = registry
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.max_head_bytes = max_head_bytes
        self._sock = _bind(host, port)
        self.server_port: int = self._sock.getsockname()[1]
        self._connections: dict[_Connection, None] = {}  # insertion order: the oldest first
        self._renderer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cds-metrics-render"
        )
        self._renderer.submit(lambda: None).result()  # its thread exists from now on
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cds-metrics", daemon=True)
        self._thread.start()
        self._started.wait(_START_WAIT_S)
        if self._failure is not None or not self._started.is_set():
            self.close()
            raise OSError(f"metrics endpoint did not start: {self._failure!r}")

    def close(self) -> None:
        """Stop listening, drop every connection, and join both threads."""
        if self._closed:
            return
        self._closed = True
        stopping = self._stopping
        if stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                self._loop.call_soon_threadsafe(stopping.set)
        self._thread.join(_STOP_WAIT_S)
        self._renderer.shutdown(wait=True, cancel_futures=True)
        self._sock.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to the constructor, or logged if later
            if not self._started.is_set():
                self._failure = e
            else:
                log.error("metrics endpoint stopped: %s", type(e).__name__)
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._handle, sock=self._sock, limit=self.max_head_bytes, backlog=_BACKLOG
        )
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for connection in list(self._connections):
                connection.writer.transport.abort()
            self._connections.clear()
            await server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _admit(self, connection: _Connection) -> bool:
        if len(self._connections) >= self.max_connections:
            waiting = next((c for c in self._connections if not c.answering), None)
            if waiting is None:
                return False
            del self._connections[waiting]
            waiting.writer.transport.abort()
        self._connections[connection] = None
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        if not self._admit(connection):
            writer.transport.abort()
            return
        try:
            await self._exchange(connection, reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            writer.transport.abort()
        finally:
            self._connections.pop(connection, None)
            writer.close()

    async def _exchange(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            connection.answering = True
            await self._answer(writer, reader, _plain(431, "Request Header Fields Too Large"))
            return
        connection.answering = True
        request = _parse(head)
        if request is None:
            await self._answer(writer, reader, _plain(400, "Bad Request"))
            return
        method, path, headers = request
        has_body = "content-length" in headers or "transfer-encoding" in headers
        if path != METRICS_PATH:
            response = _plain(404, "Not Found", f"only {METRICS_PATH} is served")
        elif method not in ("GET", "HEAD"):
            response = _plain(405, "Method Not Allowed", f"use GET {METRICS_PATH}")
            response.headers.append(("Allow", _ALLOW))
        else:
            response = await asyncio.get_running_loop().run_in_executor(
                self._renderer,
                self._render,
                headers.get("accept", ""),
                headers.get("accept-encoding", ""),
            )
            response.head_only = method == "HEAD"
        await self._answer(writer, reader, response, linger=has_body)

    def _render(self, accept: str, accept_encoding: str) -> _Response:
        """On the render thread: collectors may wait (briefly) on the gRPC loop."""
        try:
            encoder, content_type = choose_encoder(accept)
            body = encoder(self._registry)
        except Exception as e:  # a collector's failure is the scrape's, not the server's
            log.warning("metrics scrape failed: %s", type(e).__name__)
            return _plain(500, "Internal Server Error")
        headers = [("Content-Type", content_type)]
        if gzip_accepted(accept_encoding):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return _Response("200 OK", headers, body)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        response: _Response,
        *,
        linger: bool = True,
    ) -> None:
        writer.write(response.encode())
        async with asyncio.timeout(self.timeout_s):
            await writer.drain()
        if not linger:
            return
        if writer.can_write_eof():
            writer.write_eof()
        try:
            async with asyncio.timeout(LINGER_S):
                while await reader.read(64 * 1024):
                    pass
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError):
            pass


class _Response:
    __slots__ = ("body", "head_only", "headers", "status")

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.head_only = False

    def encode(self) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status}",
            *(f"{name}: {value}" for name, value in self.headers),
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "",
            "",
        ]
        head = "\r\n".join(lines).encode("latin-1")
        return head if self.head_only else head + self.body


def _plain(code: int, reason: str, detail: str = "") -> _Response:
    text = f"{code} {reason}" + (f": {detail}" if detail else "") + "\n"
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    return _Response(f"{code} {reason}", headers, text.encode())


def _parse(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """Method, path (query dropped) and lower-cased headers; None if not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    try:
        path = urlsplit(target).path
    except ValueError:
        return None
    return method, path, headers


def _bind(host: str, port: int) -> socket.socket:
    """The first address ``host`` resolves to (an IPv6 literal binds IPv6), as
    ``start_http_server`` picks it; an empty host is every IPv4 interface."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.create_server(address[:2], family=family, backlog=_BACKLOG)
    sock.setblocking(False)
    return sock
