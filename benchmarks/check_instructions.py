"""Instructions per ``OrderChecker.check``, counted by valgrind's callgrind.

Wall-clock timings on a shared, noisy machine cannot tell a change of a few percent
on the Check path from noise; instruction counts can, and they repeat to the
instruction. The script runs the real checker (shipped catalogue, in-process store
holding a few results, real decision memory and metrics) over a fixed mix of orders —
a three-line lab order that is allowed, a recognition warning, an emergency
exemption, an allowed gene test with a send-out lab and a blocked one — under
callgrind twice, for 0 and for N rounds, and reports (difference) / (N × orders) per
Check, so start-up and imports cancel out.

The recorder takes each decision entry onto a bounded deque (what the decision log's
enqueue costs, give or take its lock); the writer thread's formatting is off the Check
path by design and not counted here.

``python -m benchmarks.check_instructions [--rounds N]`` prints one JSON line; with
``--inner N`` it is the body valgrind runs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "catalog" / "catalog.json"


class QueueRecorder:
    """Takes what the Check path hands over onto a bounded deque, as the log's queue
    would between two of its writer's batches (no writer: its formatting is not the
    Check path's, and its batches would make the count depend on thread timing)."""

    def __init__(self) -> None:
        self.entries: deque[Any] = deque(maxlen=256)
        self.decision = self.entries.append

    def counts(self, entry: Any) -> None:
        self.entries.append(entry)

    async def feedback(self, record: Any) -> None:
        return None

    def reload_keys(self, pseudonym_key: str) -> None:
        return None

    async def close(self) -> None:
        return None


def _orders(now_us: int) -> list[Any]:
    from cds.domain import EncounterType, ItemCategory, Order, OrderItem

    lab, gene = ItemCategory.LAB, ItemCategory.GENE_TEST

    def order(patient: str, items: list[OrderItem], **kw: Any) -> Order:
        fields: dict[str, Any] = {
            "institution_id": "FJ-SL",
            "encounter_type": EncounterType.OUTPATIENT,
            "diagnosis_codes": ("C34.1",),
            "first_oncology_visit": False,
            "mdt_record_id": "",
        }
        fields.update(kw)
        return Order(
            "req",
            fields["institution_id"],
            "DEPT-1",
            "DOC-1",
            fields["encounter_type"],
            patient,
            fields["diagnosis_codes"],
            fields["first_oncology_visit"],
            fields["mdt_record_id"],
            tuple(items),
            now_us,
        )

    def line(n: str, code: str, cat: ItemCategory = lab, lab_id: str = "") -> OrderItem:
        return OrderItem(n, code, cat, "", lab_id, True)

    return [
        order("P-new", [line("1", "2823-3"), line("2", "2951-2"), line("3", "2075-0")]),
        order("P-prior", [line("1", "2823-3")]),
        order("P-prior", [line("1", "2823-3")], encounter_type=EncounterType.EMERGENCY),
        order("P-new", [line("1", "GENE-ROS1", gene, "EXAMPLE-LAB-A")]),
        order("P-new", [line("1", "GENE-EGFR", gene, "EXAMPLE-LAB-B")]),
    ]


def inner(rounds: int) -> None:
    import asyncio

    from cds.decisions.memory import DecisionMemory
    from cds.domain import US_PER_DAY, StoredResult
    from cds.metrics import Metrics
    from cds.orders.checker import OrderChecker
    from cds.results.base import StoredRow
    from cds.results.memory import MemoryResultStore
    from cds.rollout.state import CatalogState

    now_us = 1_780_000_000_000_000
    metrics = Metrics()
    state = CatalogState.load(str(CATALOG), metrics=metrics)
    store = MemoryResultStore(100_000, clock=lambda: now_us / 1e6)
    prior = StoredResult("R-1", "2823-3", "FJ-SL", now_us - US_PER_DAY, True)
    asyncio.run(store.put_many([StoredRow("P-prior", prior, now_us + 30 * US_PER_DAY)]))
    recorder = QueueRecorder()
    checker = OrderChecker(state, store, DecisionMemory(), metrics, recorder)  # type: ignore[arg-type]
    orders = _orders(now_us)
    check = checker.check
    for _ in range(rounds):
        for order in orders:
            coro = check(order, now_us)
            try:
                coro.send(None)
            except StopIteration:
                pass
            else:  # pragma: no cover - the in-process store never suspends
                raise RuntimeError("the check suspended")


def _instructions(rounds: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.check_instructions",
                "--inner",
                str(rounds),
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        text = out.read_text()
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE) or re.search(
        r"^totals:\s+(\d+)", text, re.MULTILINE
    )
    if match is None:
        raise RuntimeError("callgrind wrote no summary")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--inner", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner is not None:
        inner(args.inner)
        return 0
    checks = args.rounds * len(_orders(0))
    base = _instructions(0)
    loaded = _instructions(args.rounds)
    print(
        json.dumps(
            {
                "benchmark": "check_instructions",
                "checks": checks,
                "instructions_per_check": round((loaded - base) / checks),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
