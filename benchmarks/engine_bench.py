"""Engine micro-benchmark: ``Engine.evaluate`` alone, no gRPC, µs per order.

Orders of 1, 3 and 10 LAB items for a patient holding a handful of results, one of
which is a recognisable prior result of the first ordered item (so the recognition
path with its prior-result lookup runs, as on a real warning), plus a one-item
gene-test order. Each figure is the median of repeated timed batches
(``time.perf_counter_ns``) after a warm-up. Runs in its own process (pinned by the
runner), so the runner's heap and the load driver do not disturb it.

``python -m benchmarks.engine_bench --catalog PATH`` prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cds.domain import (
    US_PER_DAY,
    EncounterType,
    ItemCategory,
    Order,
    OrderItem,
    StoredResult,
)


def load_snapshot(path: Path) -> tuple[Any, str]:
    from cds.catalog.load import load_catalog

    return load_catalog(path), "cds.catalog.load_catalog"


def build_cases(cat: dict[str, Any], now_us: int) -> dict[str, tuple[Order, Any]]:
    labs = [r for r in cat["recognition_items"] if r["category"] == "LAB"]
    inst = cat["institutions"][0]["id"]
    other = cat["institutions"][-1]["id"]
    first = labs[0]
    results: dict[str, tuple[StoredResult, ...]] = {
        first["code"]: (StoredResult("R1", first["code"], inst, now_us - US_PER_DAY // 2, True),),
    }
    for n, r in enumerate(labs[-3:]):
        results[r["code"]] = (
            StoredResult(f"R{n + 2}", r["code"], other, now_us - US_PER_DAY, n % 2 == 0),
        )

    def order(items: tuple[OrderItem, ...], dx: tuple[str, ...] = ("E11.9",)) -> Order:
        return Order(
            request_id="bench",
            institution_id=inst,
            department_id="D001",
            clinician_id="C00001",
            encounter_type=EncounterType.OUTPATIENT,
            patient_id="P00000001",
            diagnosis_codes=dx,
            first_oncology_visit=False,
            mdt_record_id="",
            items=items,
            order_time_us=now_us,
        )

    cases: dict[str, tuple[Order, Any]] = {}
    for n in (1, 3, 10):
        items = tuple(
            OrderItem(str(k + 1), labs[k % len(labs)]["code"], ItemCategory.LAB, "", "", False)
            for k in range(n)
        )
        cases[f"lab_{n}_items"] = (order(items), results)
    gene = cat["gene_tests"][0]
    dx = (f"{(gene.get('indications') or ['C34'])[0]}.9",)
    gitem = (OrderItem("1", gene["code"], ItemCategory.GENE_TEST, "", "", True),)
    cases["gene_1_item"] = (order(gitem, dx), {})
    return cases


def bench(fn: Any, arg1: Any, arg2: Any, *, calls: int, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(arg1, arg2)
    per_call = []
    clock = time.perf_counter_ns
    rng = range(calls)
    for _ in range(repeats):
        t0 = clock()
        for _ in rng:
            fn(arg1, arg2)
        per_call.append((clock() - t0) / calls / 1000)
    return per_call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", required=True, type=Path)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=5_000)
    args = p.parse_args(argv)
    from cds.rules.engine import Engine

    snapshot, how = load_snapshot(args.catalog)
    cat = json.loads(args.catalog.read_text(encoding="utf-8"))
    engine = Engine(snapshot)
    now_us = time.time_ns() // 1000
    out: dict[str, Any] = {"snapshot_from": how, "cases": {}}
    gc.collect()
    gc.freeze()
    for name, (order, results) in build_cases(cat, now_us).items():
        ev = engine.evaluate(order, results)
        samples = bench(
            engine.evaluate,
            order,
            results,
            calls=args.calls,
            repeats=args.repeats,
            warmup=args.warmup,
        )
        out["cases"][name] = {
            "median_us": statistics.median(samples),
            "min_us": min(samples),
            "samples_us": samples,
            "decision": int(ev.decision),
            "reasons": sorted({r.code for i in ev.items for r in i.reasons}),
        }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
