"""Every Prometheus metric the service exports, defined in one place (docs/reference.md).

The hot path never looks a label up by string: every child it touches is created
here at start and handed out as a plain attribute (a tuple indexed by decision, a dict
keyed by reason code, one bundle per RPC). Label values are closed sets — RPC names,
status code names, decisions, reason codes, reload results — so no patient,
clinician or free-text value can ever become a label.

A :class:`Metrics` owns its own registry rather than the process-global one, so
several servers (or a test) in one process do not collide.

On the hot path nothing takes a lock: a lone server counts into plain ints
(:class:`Tally`, :class:`LatencyTally`) that are folded into the Prometheus children
when the registry is read, on the event loop's thread (:meth:`Metrics.attach`).
Prometheus' own ``inc()`` takes a lock, and a Check touches five to eight counters.
Scrapes see every call answered before the scrape began.

With ``cds serve --workers N`` every worker writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client multiprocess mode) and the parent
serves their sum. Counters and histograms simply add up; each gauge says how its
per-worker values combine (``multiprocess_mode``), and callback gauges cannot cross
processes, so the worker sets ``cds_results_cached`` on a timer instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from cds.domain import RESULTS_UNAVAILABLE, Decision, ReasonCode

T = TypeVar("T")
# How long a scrape waits for the event loop to fold in the hot path's counts; past it
# (a loop stuck or stopping) the scrape serves what was folded before.
FOLD_WAIT_S = 0.5

# Fine at the low end: a Check costs well under a millisecond, and the buckets must
# tell a quarter, a half, one and two and a half milliseconds apart; the tail is kept
# for stalls.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_GRPC_TYPE = "unary"


class _LazyChild:
    """A label child created on first increment (for values that should never occur, or
    rarely do)."""

    __slots__ = ("_child", "_labels", "_parent")

    def __init__(self, parent: Counter, *labels: str) -> None:
        self._parent = parent
        self._labels = labels
        self._child: Counter | None = None

    def inc(self, amount: float = 1) -> None:
        if self._child is None:
            self._child = self._parent.labels(*self._labels)
        self._child.inc(amount)


class Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observable(Protocol):
    def observe(self, amount: float) -> None: ...


class Tally:
    """A counter child counted as a plain int; :meth:`fold` adds the news to the child.

    Only the event loop's thread counts and folds, so no lock is needed.
    """

    __slots__ = ("_child", "_folded", "n")

    def __init__(self, child: Incrementable) -> None:
        self._child = child
        self.n: float = 0
        self._folded: float = 0

    def inc(self, amount: float = 1) -> None:
        self.n += amount

    def fold(self) -> None:
        n = self.n
        if n != self._folded:
            self._child.inc(n - self._folded)
            self._folded = n


class LatencyTally:
    """A histogram child observed into plain per-bucket counts, folded like a Tally.

    Folding writes the child's own bucket and sum values (prometheus-client keeps
    per-bucket, not cumulative, counts: ``Histogram.observe`` does exactly this per
    observation); ``tests/test_metrics.py`` proves a folded and an observed histogram
    expose the same samples.
    """

    __slots__ = ("_bounds", "_child", "_folded", "_folded_sum", "counts", "sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self._bounds)
        self._folded = [0] * len(self._bounds)
        self.sum = 0.0
        self._folded_sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount, as Histogram.observe; the last bound is +Inf.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount

    def fold(self) -> None:
        child = self._child
        for i, n in enumerate(self.counts):
            if n != self._folded[i]:
                child._buckets[i].inc(n - self._folded[i])
                self._folded[i] = n
        total = self.sum
        if total != self._folded_sum:
            child._sum.inc(total - self._folded_sum)
            self._folded_sum = total


class _FoldFirst:
    """Registered first, so a scrape folds the hot path's counts before it reads them."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        self._metrics.on_loop(self._metrics.fold)
        return iter(())


class RpcMetrics:
    """The children one RPC method touches on every call, resolved once."""

    __slots__ = ("_handled", "_labels", "handled_ok", "name", "seconds", "started")

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        self.name = f"{service}/{method}"
        self._labels = (_GRPC_TYPE, service, method)
        self.started: Incrementable = metrics.tally(metrics.grpc_started.labels(*self._labels))
        self.seconds: Observable = metrics.latency_tally(metrics.grpc_seconds.labels(*self._labels))
        self._handled = metrics.grpc_handled
        self.handled_ok: Incrementable = metrics.tally(
            self._handled.labels(*self._labels, grpc.StatusCode.OK.name)
        )

    def handled(self, code: grpc.StatusCode) -> Counter:
        """The counter for a non-OK code (error path only, so a label look-up is fine)."""
        return self._handled.labels(*self._labels, code.name)


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(
        self, cached_count: Callable[[], int] | None = None, *, multiprocess: bool = False
    ) -> None:
        # The *_created series double every counter in each scrape and no dashboard of
        # ours reads them (process-wide switch; the server owns its process).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess
        self._tallies: list[Tally | LatencyTally] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        if not multiprocess:
            self.registry.register(_FoldFirst(self))
        if not multiprocess:
            # Per-process collectors read this process only; a worker's would be lost
            # (the parent serves the files), so they exist in single-process mode only.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        rpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            rpc_labels,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*rpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its response, in seconds.",
            rpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        item_decisions = Counter(
            "cds_item_decisions_total",
            "Order lines decided, by the line's decision.",
            ("decision",),
            registry=r,
        )
        # Indexed by Decision's int value. The engine never decides UNSPECIFIED; should it
        # ever, that series appears on first use instead of sitting at 0 in every scrape.
        self.item_decisions: tuple[Incrementable, ...] = (
            self.tally(_LazyChild(item_decisions, Decision.UNSPECIFIED.name.lower())),
            *(self.tally(item_decisions.labels(d.name.lower())) for d in Decision if d),
        )
        reasons = Counter(
            "cds_reasons_total",
            'Reasons found on order lines, by reason code; silent="true": by a silent rule, '
            "counted and logged but not answered.",
            ("code", "silent"),
            registry=r,
        )
        # A reason given is silent="", which Prometheus stores as no label at all: the
        # series dashboards already read ({code="..."}) keep their identity and history.
        # "false" would have started new series and left queries matching two.
        self.reasons: dict[str, Incrementable] = {
            str(c): self.tally(reasons.labels(str(c), "")) for c in ReasonCode
        }
        # Created on first use: silent rules are a trial, most catalogues have none.
        self.silent_reasons: dict[str, Incrementable] = {
            str(c): self.tally(_LazyChild(reasons, str(c), "true")) for c in ReasonCode
        }
        reloads = Counter(
            "cds_catalog_reloads_total",
            "Catalogue reloads that activated (or, for a dry run, validated) or failed.",
            ("result",),
            registry=r,
        )
        self.reload_success = reloads.labels("success")
        self.reload_failure = reloads.labels("failure")
        self.results_ingested = Counter(
            "cds_results_ingested_total",
            "Results accepted by PutResults.",
            registry=r,
        )
        self.results_rejected = Counter(
            "cds_results_rejected_total",
            "Results rejected by PutResults as invalid.",
            registry=r,
        )
        self.results_expired = Counter(
            "cds_results_expired_total",
            "Valid results PutResults did not keep: already past their retention.",
            registry=r,
        )
        self.streams_refused = Counter(
            "cds_streams_refused_total",
            "Health Watch and reflection streams refused over --max-streams.",
            registry=r,
        )
        self.results_cached = Gauge(
            "cds_results_cached",
            "Results currently held by the results store.",
            registry=r,
            # Workers share one (Redis) store and each reports its count: the latest
            # report of a live worker, not a sum.
            multiprocess_mode="livemostrecent",
        )
        self._cached_count = 0.0
        if cached_count is not None:
            self.watch_cached(cached_count)
        degraded = Counter(
            "cds_checks_degraded_total",
            "Checks answered without a source they normally consult, by what was missing.",
            ("what",),
            registry=r,
        )
        self.degraded_results = degraded.labels(RESULTS_UNAVAILABLE)
        feedback = Counter(
            "cds_feedback_total",
            "Feedback recorded, by outcome.",
            ("outcome",),
            registry=r,
        )
        self.feedback_accepted = feedback.labels("accepted")
        self.feedback_overridden = feedback.labels("overridden")
        # The live recognition figures (supervision report, docs/supervision.md).
        # ``institution`` is a catalogue id or "other", ``reason`` an override code of the
        # catalogue or "": both bounded, whatever a request carries.
        self._recognition_reminded = Counter(
            "cds_recognition_reminded_total",
            "Order lines shown a recognisable prior result (RECOGNIZABLE_RESULT_EXISTS), "
            "by ordering institution.",
            ("institution",),
            registry=r,
        )
        self._recognition_feedback = Counter(
            "cds_recognition_feedback_total",
            "Feedback recorded on reminded lines, by institution, outcome and override "
            'reason ("" for accepted).',
            ("institution", "outcome", "reason"),
            registry=r,
        )
        self._recognition_feedback_replaced = Counter(
            "cds_recognition_feedback_replaced_total",
            "Feedback on reminded lines that a later, different feedback of the same line "
            "replaced (in the same process): subtract it for the lines' latest feedback.",
            ("institution", "outcome", "reason"),
            registry=r,
        )
        self._institution_ids: frozenset[str] = frozenset()
        self._reminded: dict[str, Incrementable] = {}
        self.decision_log_dropped = Counter(
            "cds_decision_log_dropped_total",
            "Decision records dropped because the decision log's queue was full.",
            registry=r,
        )
        self.decisions_unshared = Counter(
            "cds_decisions_unshared_total",
            "Decisions with reasons that could not be written to Redis: feedback for them "
            "that reaches another worker or replica is not found.",
            registry=r,
        )
        # The CDS Hooks door, counted like RPCs: endpoint (discovery, service, feedback,
        # other), our service ids or "" (never a caller's path), the HTTP status.
        self.hooks_requests = Counter(
            "cds_hooks_requests_total",
            "CDS Hooks HTTP requests answered, by endpoint, service and HTTP status.",
            ("endpoint", "service", "status"),
            registry=r,
        )
        self.hooks_seconds = Histogram(
            "cds_hooks_request_seconds",
            "Time from a CDS Hooks request's arrival to its response, in seconds.",
            ("endpoint", "service"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.hooks_jwt_refused = Counter(
            "cds_hooks_jwt_refused_total",
            "CDS Hooks requests refused (401) for their JWT, by the rule that failed.",
            ("reason",),
            registry=r,
        )
        self._hooks_children: dict[tuple[str, ...], Any] = {}
        self.catalog_loaded = Gauge(
            "cds_catalog_loaded_timestamp_seconds",
            "When the active catalogue was activated (Unix time).",
            registry=r,
            # Across workers, the oldest activation: a worker that missed a reload shows.
            multiprocess_mode="livemin",
        )

    # -- counting on the hot path without locks -----------------------------------------

    def tally(self, child: Incrementable) -> Incrementable:
        """What the hot path increments: a :class:`Tally` of ``child``, or the child itself
        in a worker (whose files the parent reads at any moment: no later fold)."""
        if self.multiprocess:
            return child
        t = Tally(child)
        self._tallies.append(t)
        return t

    def latency_tally(self, child: Histogram) -> Observable:
        if self.multiprocess:
            return child
        t = LatencyTally(child)
        self._tallies.append(t)
        return t

    def fold(self) -> None:
        """Add what the tallies counted since the last fold to the Prometheus children."""
        for t in self._tallies:
            t.fold()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose thread counts: scrapes (another thread) fold on it."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def on_loop(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` run on the attached loop's thread (here if none, or if this is it).

        None if the loop does not get to it within ``FOLD_WAIT_S`` (stopped or stuck).
        """
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread or loop.is_closed():
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as e:  # handed to the waiting thread
                done.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
            return done.result(timeout=FOLD_WAIT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return None

    def watch_cached(self, cached_count: Callable[[], int]) -> None:
        """``cds_results_cached`` read at scrape time, on the loop's thread: the store is
        single-threaded, and counting may sweep expired rows."""

        def read() -> float:
            n = self.on_loop(cached_count)
            if n is not None:
                self._cached_count = float(n)
            return self._cached_count

        self.results_cached.set_function(read)

    # -- recognition -------------------------------------------------------------------

    def set_institutions(self, ids: frozenset[str]) -> None:
        """The catalogue's institution ids: the only ``institution`` labels besides "other"."""
        self._institution_ids = ids

    def institution_label(self, institution: str) -> str:
        return institution if institution in self._institution_ids else "other"

    def recognition_reminded(self, institution: str) -> Incrementable:
        """What a reminder increments (a tally per label, made once: few labels)."""
        label = self.institution_label(institution)
        child = self._reminded.get(label)
        if child is None:
            child = self._reminded[label] = self.tally(self._recognition_reminded.labels(label))
        return child

    def recognition_feedback(
        self, institution: str, outcome: str, reason: str, *, replaced: bool = False
    ) -> Counter:
        family = self._recognition_feedback_replaced if replaced else self._recognition_feedback
        return family.labels(self.institution_label(institution), outcome, reason)

    def rpc(self, service: str, method: str) -> RpcMetrics:
        return RpcMetrics(self, service, method)

    def hooks_answered(self, endpoint: str, service: str, status: int, seconds: float) -> None:
        """Count one CDS Hooks request; the children are made on first use (few: the
        label values are our endpoints, our service ids and the statuses we send)."""
        handled = (endpoint, service, str(status))
        counter = self._hooks_children.get(handled)
        if counter is None:
            counter = self.tally(self.hooks_requests.labels(*handled))
            self._hooks_children[handled] = counter
        counter.inc()
        timed = (endpoint, service)
        latency = self._hooks_children.get(timed)
        if latency is None:
            latency = self.latency_tally(self.hooks_seconds.labels(*timed))
            self._hooks_children[timed] = latency
        latency.observe(seconds)
