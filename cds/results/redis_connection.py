"""How the service reaches Redis: the URLs it accepts, which client serves each, how long
a call may take and when it is tried again — written once for both users of Redis, the
result store (:mod:`cds.results.redis_store`) and the shared decision memory
(:mod:`cds.decisions.shared`).

URLs (``cds serve --results``): ``redis://HOST:PORT/DB``, ``rediss://`` (TLS),
``unix://PATH`` and ``redis+cluster://HOST:PORT`` (any node of a Redis Cluster; the
clients are given it as ``redis://``). They are checked before anything listens, so a
typo fails the start with a message rather than degrading every check later.

A :class:`RedisConnection` is one timeout profile on one Redis, with two clients:

* the pipelined link (:class:`~cds.results.redis_wire.PipelinedRedis`) for the hot,
  idempotent commands, where it serves the URL (plain TCP and Unix sockets without
  query options; not TLS, not Cluster);
* a redis-py client (``Redis``, or ``RedisCluster`` on Cluster) for everything else:
  scripts, pub/sub, and every command where the link does not serve the URL.

Both are made on first use and connect on their first command, so opening a connection
never fails because Redis is down, and a user pays only for the clients it touches.
Retries: once, at once, on a lost connection (Redis closed it on restart), and never on
a timeout, so a timeout is not paid twice — redis-py's pool is told so, and the link's
:meth:`~cds.results.redis_wire.PipelinedRedis.call` does the same. (``RedisCluster``
takes only the count from the policy: on Cluster a timed-out command is tried once
more, after it re-reads the slot map.)

Why each user opens its own connection rather than sharing one per process: the timeout
belongs to the socket (redis-py's ``socket_timeout``; the link gives every command it
carries the same deadline) and the users need different ones — a check's read gives up
quickly, a decision write and a store write may wait longer. And a link answers in
order: a burst of decision writes queued on the checks' link would make the reads
behind it wait, and time out. A few more sockets per process cost less than coupling
those.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from cds.config import results_url_problem
from cds.results.base import ResultsUnavailable
from cds.results.redis_wire import PipelinedRedis, pack
from cds.results.redis_wire import supports as wire_supports

_CLUSTER = "redis+cluster"
_PING = pack("PING")


class RedisAddress(NamedTuple):
    """A checked ``--results`` URL and what follows from it."""

    url: str  # as the clients are given it: a Cluster URL in its redis:// form
    cluster: bool
    pipelined: bool  # whether the pipelined link serves it


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisAddress:
    """Raise ValueError, worded for the operator, unless ``url`` names a Redis we can use.

    ``cluster`` treats a ``redis://`` URL as a node of a Cluster too.
    """
    problem = results_url_problem(url)
    if problem:
        raise ValueError(problem)
    parts = urlsplit(url)
    if parts.scheme == _CLUSTER:
        url = urlunsplit(parts._replace(scheme="redis"))
        cluster = True
    return RedisAddress(url, cluster, not cluster and wire_supports(url))


class RedisConnection:
    """The clients of one Redis with one set of timeouts; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        cluster: bool = False,
    ) -> None:
        self.address = parse_redis_url(url, cluster=cluster)
        self.cluster = self.address.cluster
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._pipe: PipelinedRedis | None = None
        self._client: Redis | RedisCluster | None = None

    @property
    def pipe(self) -> PipelinedRedis | None:
        """The pipelined link, or ``None`` where it does not serve the URL (use
        :attr:`client`)."""
        if self._pipe is None and self.address.pipelined:
            self._pipe = PipelinedRedis(
                self.address.url,
                connect_timeout_s=self._connect_timeout_s,
                timeout_s=self._timeout_s,
            )
        return self._pipe

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client: ``RedisCluster`` on Cluster, else ``Redis``."""
        if self._client is None:
            # One immediate retry, only on a connection error: a pooled connection that
            # Redis closed (restart) is replaced at once; a timeout is not paid twice.
            retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            cls = RedisCluster if self.cluster else Redis
            self._client = cls.from_url(
                self.address.url,
                socket_connect_timeout=self._connect_timeout_s,
                socket_timeout=self._timeout_s,
                retry=retry,
            )
        return self._client

    async def start(self) -> bool:
        """Connect now, so the first real command does not pay for it; whether Redis
        answered. Never raises: with Redis down, the next command connects again."""
        with contextlib.suppress(RedisError, OSError, ResultsUnavailable):
            pipe = self.pipe
            if pipe is not None:
                await pipe.call(_PING)
            else:
                await self.client.ping()
            return True
        return False

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.aclose()
        if self._client is not None:
            await self._client.aclose()
