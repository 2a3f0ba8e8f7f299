"""A catalogue reload's parts, in-process: where its time goes before any server is involved.

The bench's ``reload`` section times ``ReloadCatalog`` under load as a whole. This
splits the work it always does (PERF-NOTES, "Reload under load"): parsing and
validating the bigger catalogue, building its engine, the diff the answer lists, the
impact replay's footprint; and, since the build runs in ``asyncio.to_thread`` so checks
keep being answered, the longest an event loop beside it waited between two 0.5 ms
sleeps (how long the build thread kept the GIL in one stretch).

``python -m benchmarks.reload_parts --catalog catalog/catalog.json --entries 10000``
prints JSON: milliseconds, each the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.catalog_gen import grow_catalog
from cds.catalog.diff import diff_snapshots
from cds.catalog.load import parse_catalog
from cds.catalog.snapshot import Snapshot
from cds.rollout.replay import footprint
from cds.rules.engine import Engine

TICK_S = 0.0005


def _ms(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = f()
    return (time.perf_counter() - t0) * 1000, out


async def _loop_wait_ms(build: Callable[[], Any]) -> float:
    """The longest gap between a ticker's wake-ups while ``build`` runs in a thread."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(TICK_S * 4)
    await asyncio.to_thread(build)
    done.set()
    await task
    return max(gaps) * 1000


def measure(base: dict[str, Any], entries: int) -> dict[str, float]:
    """One reload of ``base`` grown to ``entries``, part by part, in ms."""
    old = parse_catalog(json.dumps(base).encode(), source="base")
    content = json.dumps(grow_catalog(base, entries, "reload-parts")).encode()
    parse_ms, new = _ms(lambda: parse_catalog(content, source="grown"))
    engine_ms, _ = _ms(lambda: Engine(new))
    diff_ms, _ = _ms(lambda: diff_snapshots(old, new))
    footprint_ms, reach = _ms(lambda: footprint(old, new))

    def build() -> tuple[Snapshot, Engine]:
        snapshot = parse_catalog(content, source="grown")
        return snapshot, Engine(snapshot)

    return {
        "catalogue_bytes": float(len(content)),
        "parse_ms": parse_ms,
        "engine_ms": engine_ms,
        "diff_ms": diff_ms,
        "footprint_ms": footprint_ms,
        "footprint_codes": float(-1 if reach is None else len(reach)),
        "loop_longest_wait_ms": asyncio.run(_loop_wait_ms(build)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reload_parts", description=__doc__)
    p.add_argument("--catalog", type=Path, default=Path("catalog/catalog.json"))
    p.add_argument("--entries", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    base = json.loads(args.catalog.read_text(encoding="utf-8"))
    runs = [measure(base, args.entries) for _ in range(max(1, args.repeat))]
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    json.dump({"entries": args.entries, "repeat": len(runs), **out}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
