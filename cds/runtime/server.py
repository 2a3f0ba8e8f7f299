"""Wiring: catalogue, store, services, health, reflection, metrics, signals.

Start-up order matters: the catalogue is loaded and validated before anything listens
(a bad file exits non-zero with every error), health turns SERVING only after the
server has started, and shutdown goes the other way round (:meth:`CdsServer.stop`):
health NOT_SERVING first while calls are still answered for ``drain_seconds``, so load
balancers move traffic away before anything is refused; then new calls are refused
``UNAVAILABLE`` and those in flight get ``grace`` seconds; then the decision log and
the store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from cds.catalog.load import CatalogError, parse_catalog
from cds.config import ServeConfig, split_host_port
from cds.decisions.memory import DecisionMemory
from cds.decisions.recorder import DecisionRecorder, open_recorder
from cds.domain import US_PER_SECOND
from cds.hooks.ids import new_decision_ids
from cds.hooks.server import HooksDoor
from cds.metrics import Metrics
from cds.orders.checker import OrderChecker
from cds.orders.feedback import FeedbackDesk
from cds.results.base import ResultStore
from cds.results.factory import open_store
from cds.rollout.replay import RecentOrders, Replayer
from cds.rollout.state import CatalogState
from cds.runtime.lifecycle import check_transport, print_refused_catalog, serve
from cds.runtime.metrics_http import MetricsServer
from cds.security.auth import Authenticator, AuthInterceptor
from cds.security.pseudonyms import Pseudonymizer
from cds.security.transport import https_context, server_credentials, server_options
from cds.service.admin import CatalogAdmin, Reloader
from cds.service.admission import Admission
from cds.service.check import OrderCheck
from cds.service.feed import ResultFeed
from cds.service.rpcs import METHOD_ROLES, SERVICE_NAMES, register
from cds.service.streams import Gated, StreamGate

log = logging.getLogger(__name__)

# After the drain window, new calls are refused UNAVAILABLE for at least this long (and
# until those in flight have finished) before grpc's own stop, which cancels whatever
# it finds, calls just arrived included. A busy caller sends its next call within a
# round trip of its last answer: by then each has had its refusal and backs off (a retry
# policy's backoff, an EMR's fail-open) instead of racing the stop. Measured by
# benchmarks/sigterm.py.
REFUSE_MIN_S = 0.25
# Once our own calls have drained, how long grpc.aio's stop waits for what is left
# (health checks, reflection) before it cancels it: those answer in microseconds, and a
# stream held open (a health Watch, an idle reflection client) must not hold the exit
# for the whole grace.
STOP_REST_GRACE_S = 0.5


# How often a worker of several publishes the store's count (a callback gauge cannot
# cross processes; a mmap write a second costs nothing).
RESULTS_COUNT_INTERVAL_S = 1.0


class WorkerRole(NamedTuple):
    """How one worker of ``cds serve --workers N`` differs from a lone server (cds.runtime.worker).

    The parent read the catalogue file once and hands every worker the same bytes;
    it also hands out one pseudonym key (without a key file) so pseudonyms link across
    workers, and a ``reload`` that has the parent reload every worker.
    """

    number: int  # which worker: 0 .. N - 1
    catalog_content: bytes
    pseudonymizer: Pseudonymizer | None
    reload: Reloader


def worker_log_path(path: str, index: int) -> str:
    """``var/decisions.jsonl`` -> ``var/decisions.w0.jsonl``: rotation is per writer."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.w{index}{p.suffix}"))


def open_memory(config: ServeConfig, metrics: Metrics) -> DecisionMemory:
    """Shared through Redis when results are (several workers/replicas), else local."""
    if config.results is None:
        return DecisionMemory(
            config.max_decisions, config.decision_ttl, max_bytes=config.max_decision_bytes
        )
    from cds.decisions.shared import SharedDecisionMemory

    return SharedDecisionMemory(
        config.results,
        config.max_decisions,
        config.decision_ttl,
        on_unshared=metrics.decisions_unshared.inc,
        max_bytes=config.max_decision_bytes,
    )


class CdsServer:
    """One running service: build with :meth:`create`, then :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        config: ServeConfig,
        state: CatalogState,
        store: ResultStore,
        metrics: Metrics,
        recorder: DecisionRecorder,
        *,
        authenticator: Authenticator | None = None,
        credentials: grpc.ServerCredentials | None = None,
        memory: DecisionMemory | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.store = store
        self.metrics = metrics
        self.recorder = recorder
        self.memory = (  # not `or`: an empty memory is falsy (__len__)
            memory
            if memory is not None
            else DecisionMemory(
                config.max_decisions, config.decision_ttl, max_bytes=config.max_decision_bytes
            )
        )
        self.role = role
        # The orders a reload's impact is replayed on (in memory only, never logged).
        self.recent = RecentOrders(config.replay_orders) if config.replay_orders else None
        state.replayer = Replayer(self.recent, store.get_patient)
        self.health = health.aio.HealthServicer()
        self.checker: OrderChecker | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._httpd: MetricsServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Our calls in flight, and the refusal of new ones once the drain window is over.
        self.admission = Admission(config.max_concurrent_rpcs)
        self.streams = StreamGate(config.max_streams, metrics.streams_refused.inc)
        self._serving = False  # started: a stop then owes load balancers the drain window
        self._hurry = asyncio.Event()
        self.authenticator = authenticator
        self._credentials = credentials
        self.hooks: HooksDoor | None = None  # the CDS Hooks door, with --hooks-listen
        interceptors = (
            [AuthInterceptor(authenticator, METHOD_ROLES)] if authenticator is not None else []
        )
        self.server = grpc.aio.server(
            interceptors=interceptors,
            # One process owns the port: fail loudly if it is taken instead of sharing it.
            # Workers of one `cds serve --workers N` share it on purpose (SO_REUSEPORT).
            options=[*server_options(), ("grpc.so_reuseport", 0 if role is None else 1)],
            # Each kind is bounded by our own count, Admission (unary calls) and the
            # StreamGate (streams): neither can starve the other, and a refusal is
            # counted and says which bound. grpc's cap, twice their sum, leaves room
            # for those refusals and sheds a flood beyond them before any Python runs.
            maximum_concurrent_rpcs=2 * (config.max_concurrent_rpcs + config.max_streams),
        )
        self._register()

    @classmethod
    def create(cls, config: ServeConfig, role: WorkerRole | None = None) -> CdsServer:
        """Load the catalogue and open what the server needs before anything listens.

        Raises CatalogError for a bad catalogue and OSError/ValueError (message fit for
        the operator) for a TLS or token file or a log path that cannot be used. The
        listen policy is the caller's, once per ``cds serve`` (:func:`check_transport`).
        """
        credentials = None
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        authenticator = Authenticator(config.auth_tokens) if config.auth_tokens else None
        metrics = Metrics(multiprocess=role is not None)
        store = open_store(
            config.results,
            max_results=config.max_results,
            max_results_per_item=config.max_results_per_item,
        )
        decision_log = config.decision_log
        if role is None:
            state = CatalogState.load(config.catalog, metrics=metrics)
            metrics.watch_cached(store.cached_count)
        else:
            content = role.catalog_content
            snapshot = parse_catalog(content, source=config.catalog)
            state = CatalogState(config.catalog, snapshot, metrics=metrics)
            if decision_log is not None:
                decision_log = worker_log_path(decision_log, role.number)
        recorder = open_recorder(
            decision_log,
            config.pseudonym_key,
            metrics,
            max_bytes=config.decision_log_max_bytes,
            backups=config.decision_log_backups,
            pseudonymizer=role.pseudonymizer if role is not None else None,
        )
        return cls(
            config,
            state,
            store,
            metrics,
            recorder,
            authenticator=authenticator,
            credentials=credentials,
            memory=open_memory(config, metrics),
            role=role,
        )

    def _register(self) -> None:
        cap = self.config.deadline_cap
        # One checker for both doors, so the counts records cover every order; its ids
        # are the form CDS Hooks card uuids pack (cds.hooks.ids).
        checker = OrderChecker(
            self.state,
            self.store,
            self.memory,
            self.metrics,
            self.recorder,
            ids=new_decision_ids(),
            recent=self.recent,
            now_us=_now_us(),
        )
        self.checker = checker
        desk = FeedbackDesk(self.memory, self.metrics, self.recorder)
        adapters = (
            OrderCheck(checker, desk, deadline_cap_s=cap),
            ResultFeed(self.state, self.store, self.metrics, deadline_cap_s=cap),
            CatalogAdmin(self.state, self.role.reload if self.role is not None else None),
        )
        register(self.server, adapters, self.metrics, self.admission)
        if self.config.hooks_listen is not None:
            self.hooks = HooksDoor(
                self.config, self.state, checker, desk, self.memory, self.metrics,
                ssl_context=self._hooks_tls(), reuse_port=self.role is not None,
            )  # fmt: skip
        health_pb2_grpc.add_HealthServicer_to_server(
            Gated(self.health, self.streams, ("Watch",)), self.server
        )
        reflection_servicer = reflection.aio.ReflectionServicer(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            Gated(reflection_servicer, self.streams, ("ServerReflectionInfo",)), self.server
        )

    def _hooks_tls(self) -> Any:
        config = self.config
        if config.tls_cert is None or config.tls_key is None:
            return None
        return https_context(config.tls_cert, config.tls_key, config.tls_client_ca)

    async def start(self) -> None:
        # The aio servicer starts out SERVING; nothing is served until we say so.
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._credentials is not None:
            self.grpc_port = self.server.add_secure_port(self.config.listen, self._credentials)
        else:
            self.grpc_port = self.server.add_insecure_port(self.config.listen)
        await self.memory.start()
        start_store = getattr(self.store, "start", None)
        if start_store is not None and not await start_store():
            log.warning(
                "results store %s not reachable yet: checks degrade until it is",
                _redacted(self.config.results),
            )
        self.metrics.attach(asyncio.get_running_loop())
        if self.role is None:
            host, port = split_host_port(self.config.metrics_listen)
            self._httpd = MetricsServer(self.metrics.registry, host, port)
            self.metrics_port = self._httpd.server_port
        else:  # the parent serves every worker's metrics
            self.spawn(self._publish_results_count())
        await self.server.start()
        if self.hooks is not None:
            await self.hooks.start()
        self.spawn(self._write_counts())
        # What start-up built (modules, the catalogue, the engine: ~100k objects) lives
        # as long as the process: out of the collector's sight, a full collection walks
        # only what was made since (cached results and remembered decisions are kept
        # untracked by design). Collected first so no start-up garbage is frozen.
        gc.collect()
        gc.freeze()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True

    async def reload_on_signal(self) -> None:
        """SIGHUP: the catalogue (as the RPC would), the tokens file and the pseudonym keys.

        Each is refused whole on error, keeping what is in force; outcomes go to the log.
        """
        with contextlib.suppress(CatalogError):
            await self.state.reload()
        await self.reload_credentials()

    async def reload_credentials(self) -> None:
        """The tokens file and pseudonym keys (a worker's share of the parent's SIGHUP)."""
        if self.authenticator is not None:
            try:
                await asyncio.to_thread(self.authenticator.reload)
            except (OSError, ValueError) as e:
                log.warning("tokens file not reloaded, the old credentials stay: %s", e)
        if self.hooks is not None:
            self.hooks.reload_credentials()
        if self.config.pseudonym_key is not None:
            try:
                self.recorder.reload_keys(self.config.pseudonym_key)
            except (OSError, ValueError) as e:
                log.warning("pseudonym keys not reloaded, the old keys stay: %s", e)

    async def _write_counts(self) -> None:
        """Hand the checker's counts to the decision log on wall-clock multiples of the
        interval, so an interval never straddles midnight and a report's days add up."""
        interval_us = int(self.config.counts_interval * US_PER_SECOND)
        while True:
            now = _now_us()
            await asyncio.sleep((interval_us - now % interval_us) / US_PER_SECOND)
            self._flush_counts()

    def _flush_counts(self) -> None:
        if self.checker is not None:
            entry = self.checker.take_counts(_now_us())
            if entry is not None:
                self.recorder.counts(entry)

    async def _publish_results_count(self) -> None:
        gauge = self.metrics.results_cached
        while True:
            gauge.set(self.store.cached_count())
            await asyncio.sleep(RESULTS_COUNT_INTERVAL_S)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> bool:
        """Health NOT_SERVING at once; calls answered for ``drain_seconds`` while load
        balancers notice; then new calls refused ``UNAVAILABLE`` while those in flight get
        ``grace`` seconds; then grpc's own stop, the decision log, the store.

        Refusing before grpc's stop is what keeps calls from ending ``CANCELLED``: grpc
        cancels every call its shutdown finds, those just arrived included, and a standard
        retry policy does not retry that (benchmarks/sigterm.py counts them).
        """
        loop = asyncio.get_running_loop()
        await self.health.enter_graceful_shutdown()
        if self._serving and self.config.drain_seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_seconds):
                    await self._hurry.wait()  # a second SIGTERM ends the window early
        grace_ends = loop.time() + self.config.grace
        self.admission.refuse_new()
        if self._serving:
            log.info("refusing new calls; %d in flight", self.admission.inflight)
        stopping: list[Coroutine[Any, Any, Any]] = [self.admission.drained(self.config.grace)]
        if self._serving:
            stopping.append(asyncio.sleep(min(REFUSE_MIN_S, self.config.grace)))
        if self.hooks is not None:
            stopping.append(self.hooks.stop())  # its requests in progress get --grace too
        drained, *_ = await asyncio.gather(*stopping)
        if not drained:
            log.warning(
                "%d calls still in flight after --grace %.1f s: cancelled",
                self.admission.inflight,
                self.config.grace,
            )
        await self.server.stop(min(STOP_REST_GRACE_S, max(0.0, grace_ends - loop.time())))
        for task in list(self._tasks):
            task.cancel()
        self._flush_counts()  # drained: the last interval's counts are complete
        await self.recorder.close()
        await self.memory.close()
        await self.store.close()
        if self._httpd is not None:
            self._httpd.close()
        return True

    def hurry(self) -> None:
        if not self._hurry.is_set():
            self._hurry.set()
            log.info("second stop signal: the drain window ends now")

    def serving(self) -> str:
        host = split_host_port(self.config.listen, flag="--listen")[0]
        where = f"on {host}:{self.grpc_port}"
        version = self.state.active.version
        hooks = f", CDS Hooks on {self.hooks.url}" if self.hooks is not None else ""
        if self.role is not None:
            return (
                f"serving catalogue version {version} {where} (metrics through the parent)" + hooks
            )
        metrics_host = split_host_port(self.config.metrics_listen, flag="--metrics-listen")[0]
        return (
            f"serving catalogue version {version} {where}, "
            f"metrics on http://{metrics_host}:{self.metrics_port}/metrics{hooks}"
        )

    def draining(self) -> str:
        return (
            f"health NOT_SERVING, calls answered for {self.config.drain_seconds:.1f} s more "
            f"(--drain-seconds), then refused while those in flight get up to "
            f"{self.config.grace:.1f} s"
        )


def _now_us() -> int:
    return time.time_ns() // 1000


def _redacted(url: str | None) -> str:
    """A store URL fit for a log line: no password."""
    if url is None:
        return "in-process"
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2]


async def run(config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    try:
        check_transport(config, log)
        server = CdsServer.create(config)
    except CatalogError as refused:
        return print_refused_catalog(config.catalog, refused.errors)
    except (OSError, ValueError) as e:  # listen policy, TLS/tokens/key files, log path
        print(f"cds: cannot start: {e}", file=sys.stderr)
        return 1
    return await serve(server, log=log, reload=server.reload_on_signal)
