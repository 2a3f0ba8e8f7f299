"""Every Prometheus metric the service exports, defined in one place (contract §4).

The hot path never looks a label up by string: every child it touches is created
here at start and handed out as a plain attribute (a tuple indexed by decision, a dict
keyed by reason code, one bundle per RPC). Label values are closed sets — RPC names,
status code names, decisions, reason codes, reload results — so no patient,
clinician or free-text value can ever become a label.

A :class:`Metrics` owns its own registry rather than the process-global one, so
several servers (or a test) in one process do not collide.

With ``cds serve --workers N`` every worker writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client multiprocess mode) and the parent
serves their sum. Counters and histograms simply add up; each gauge says how its
per-worker values combine (``multiprocess_mode``), and callback gauges cannot cross
processes, so the worker sets ``cds_results_cached`` on a timer instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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

from cds.domain import Decision, ReasonCode

# Fine at the low end: a Check costs well under a millisecond, and the buckets must
# separate 0.25 ms, 0.5 ms, 1 ms and 2.5 ms (issue 3, §7); the tail is kept for stalls.
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
    """A label child created on first increment (for values that should never occur)."""

    __slots__ = ("_child", "_label", "_parent")

    def __init__(self, parent: Counter, label: str) -> None:
        self._parent = parent
        self._label = label
        self._child: Counter | None = None

    def inc(self, amount: float = 1) -> None:
        if self._child is None:
            self._child = self._parent.labels(self._label)
        self._child.inc(amount)


class RpcMetrics:
    """The children one RPC method touches on every call, resolved once."""

    __slots__ = ("_handled", "_labels", "handled_ok", "name", "seconds", "started")

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        self.name = f"{service}/{method}"
        self._labels = (_GRPC_TYPE, service, method)
        self.started = metrics.grpc_started.labels(*self._labels)
        self.seconds = metrics.grpc_seconds.labels(*self._labels)
        self._handled = metrics.grpc_handled
        self.handled_ok = self._handled.labels(*self._labels, grpc.StatusCode.OK.name)

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
        self.item_decisions: tuple[Counter | _LazyChild, ...] = (
            _LazyChild(item_decisions, Decision.UNSPECIFIED.name.lower()),
            *(item_decisions.labels(d.name.lower()) for d in Decision if d),
        )
        reasons = Counter(
            "cds_reasons_total",
            "Reasons given on order lines, by reason code.",
            ("code",),
            registry=r,
        )
        self.reasons: dict[str, Counter] = {str(c): reasons.labels(str(c)) for c in ReasonCode}
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
        self.results_cached = Gauge(
            "cds_results_cached",
            "Results currently held by the results store.",
            registry=r,
            # Workers share one (Redis) store and each reports its count: the latest
            # report of a live worker, not a sum.
            multiprocess_mode="livemostrecent",
        )
        if cached_count is not None:
            self.results_cached.set_function(cached_count)
        degraded = Counter(
            "cds_checks_degraded_total",
            "Checks answered without a source they normally consult, by what was missing.",
            ("what",),
            registry=r,
        )
        self.degraded_results = degraded.labels("RESULTS_UNAVAILABLE")
        feedback = Counter(
            "cds_feedback_total",
            "Feedback recorded, by outcome.",
            ("outcome",),
            registry=r,
        )
        self.feedback_accepted = feedback.labels("accepted")
        self.feedback_overridden = feedback.labels("overridden")
        self.decision_log_dropped = Counter(
            "cds_decision_log_dropped_total",
            "Decision records dropped because the decision log's queue was full.",
            registry=r,
        )
        self.catalog_loaded = Gauge(
            "cds_catalog_loaded_timestamp_seconds",
            "When the active catalogue was activated (Unix time).",
            registry=r,
            # Across workers, the oldest activation: a worker that missed a reload shows.
            multiprocess_mode="livemin",
        )

    def rpc(self, service: str, method: str) -> RpcMetrics:
        return RpcMetrics(self, service, method)

    def precreate(self, methods: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RpcMetrics]:
        """Children for every (service, method), so each series exists from the first scrape."""
        return {(s, m): self.rpc(s, m) for s, m in methods}
