"""Hot-path metrics are counted without locks and still read exactly at scrape time."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram

from cds.domain import Decision
from cds.metrics import LATENCY_BUCKETS, LatencyTally, Metrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_folded_histogram_exposes_exactly_what_observing_would():
    observed_reg, folded_reg = CollectorRegistry(), CollectorRegistry()
    observed = Histogram("h", "x", buckets=LATENCY_BUCKETS, registry=observed_reg)
    folded = Histogram("h", "x", buckets=LATENCY_BUCKETS, registry=folded_reg)
    tally = LatencyTally(folded)
    values = [0.0, 0.0001, 0.00011, 0.0004, 0.0005, 0.003, 0.7, 10.0, 11.0, 1e-9]
    for v in values[:6]:
        observed.observe(v)
        tally.observe(v)
    tally.fold()
    for v in values[6:]:
        observed.observe(v)
        tally.observe(v)
    tally.fold()
    tally.fold()  # nothing new: changes nothing
    assert _samples(folded_reg) == _samples(observed_reg)


def test_a_scrape_from_another_thread_sees_every_count_made_on_the_loop():
    metrics = Metrics()
    check = metrics.rpc("cds.v1.OrderCheckService", "Check")

    async def main() -> dict:
        metrics.attach(asyncio.get_running_loop())
        for _ in range(3):
            check.started.inc()
            check.handled_ok.inc()
            check.seconds.observe(0.0003)
        metrics.item_decisions[Decision.WARN].inc()
        metrics.reasons["RECOGNIZABLE_RESULT_EXISTS"].inc()
        # The HTTP exporter collects on its own thread while the loop keeps running.
        return await asyncio.to_thread(_samples, metrics.registry)

    samples = asyncio.run(main())
    rpc = (
        ("grpc_method", "Check"),
        ("grpc_service", "cds.v1.OrderCheckService"),
        ("grpc_type", "unary"),
    )
    assert samples[("grpc_server_started_total", rpc)] == 3
    assert samples[("grpc_server_handled_total", (("grpc_code", "OK"), *rpc))] == 3
    assert samples[("grpc_server_handling_seconds_count", rpc)] == 3
    assert samples[("cds_item_decisions_total", (("decision", "warn"),))] == 1
    given = (("code", "RECOGNIZABLE_RESULT_EXISTS"), ("silent", ""))
    assert samples[("cds_reasons_total", given)] == 1
    # never decided: that series does not exist rather than sitting at 0
    assert ("cds_item_decisions_total", (("decision", "unspecified"),)) not in samples


def test_silent_reasons_are_their_own_series_and_appear_only_once_counted():
    metrics = Metrics()
    code = "GENE_TEST_REPEATED"
    silent = ("cds_reasons_total", (("code", code), ("silent", "true")))
    assert silent not in _samples(metrics.registry)
    metrics.silent_reasons[code].inc()
    metrics.fold()
    samples = _samples(metrics.registry)
    assert samples[silent] == 1
    assert samples[("cds_reasons_total", (("code", code), ("silent", "")))] == 0


def test_results_cached_is_read_on_the_loop_thread():
    import threading

    metrics = Metrics()
    seen: list[int] = []

    def count() -> int:
        seen.append(threading.get_ident())
        return 42

    metrics.watch_cached(count)

    async def main() -> tuple[int, dict]:
        metrics.attach(asyncio.get_running_loop())
        return threading.get_ident(), await asyncio.to_thread(_samples, metrics.registry)

    loop_thread, samples = asyncio.run(main())
    assert samples[("cds_results_cached", ())] == 42
    assert seen == [loop_thread]
