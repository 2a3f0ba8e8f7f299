"""Instructions per call of ``Engine.evaluate`` and of a whole ``Check``, by callgrind.

CPU time on this shared machine moves with the neighbours; an instruction count does
not. Each target runs twice under ``valgrind --tool=callgrind`` in a fresh interpreter:
once with 0 calls and once with ``--calls`` calls, after the same set-up and warm-up,
so (difference) / calls is the cost of one call and nothing else. ``--tree`` runs the
same calls against another source tree (e.g. ``git archive`` of the parent commit), for
an A/B of a change to the hot path.

Targets, each cycling through the same five orders for one patient (a recognised lab
result, two plain lab lines, a three-line lab order with a duplicate, a gene test with
a prior result inside its repeat interval sent out to an unapproved lab, an emergency):

* ``engine``: ``Engine.evaluate(order, results)`` alone;
* ``check``: the gRPC handler ``OrderCheck.check`` from the ``CheckRequest`` proto to the
  ``CheckResponse`` proto (validation, the in-process store read, the engine, memory,
  metrics, the recent-orders buffer where the tree has one), without the network;
* ``record``: the decision log's writer turning one decided order into its JSON line
  (``DecisionLog._decision_line``: pseudonyms, reasons, prior results), which runs on
  a thread sharing the interpreter with the event loop. The decisions the log keeps
  of those five orders are each given a new patient id every call and a clinician
  drawn in turn from ``--clinicians`` ids, as a hospital's day has (a clinician
  orders all day; a patient a few times).

``python -m benchmarks.instructions [--tree DIR ...] [--calls N]`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog" / "catalog.json"
TARGETS = ("engine", "check", "record")
WARMUP = 500
# record: decided orders prepared at set-up, the same number in the 0-call run, so the
# difference is the formatting alone; more than the pseudonym memo holds, so a
# patient is new to it even when the pool wraps.
RECORD_POOL = 20_000
_TOTAL = re.compile(r"Collected\s*:\s*(\d+)")


def _requests(cat: dict[str, Any], now_us: int) -> tuple[list[Any], list[Any]]:
    """The CheckRequests of the mix and the patient's results as StoredRows."""
    from cds.domain import US_PER_DAY, US_PER_SECOND, StoredResult
    from cds.results.base import StoredRow
    from cds.v1 import order_check_pb2, types_pb2

    labs = [r["code"] for r in cat["recognition_items"] if r["category"] == "LAB"]
    inst = cat["institutions"][0]["id"]
    gene = next(g for g in cat["gene_tests"] if g.get("repeat_interval_days"))
    lab_id = cat["sendout_labs"][0]["id"]
    day = US_PER_DAY
    rows = [
        StoredRow("P1", StoredResult("R1", labs[0], inst, now_us - day, True), now_us + 9 * day),
        StoredRow("P1", StoredResult("R2", labs[1], inst, now_us - 2 * day, True), now_us + day),
        StoredRow(
            "P1",
            StoredResult("R3", gene["code"], inst, now_us - 30 * day, True),
            now_us + 400 * day,
        ),
    ]

    def request(items: list[tuple[str, int, str]], encounter: int = 1) -> Any:
        req = order_check_pb2.CheckRequest(
            request_id="bench",
            institution_id=inst,
            department_id="D1",
            clinician_id="C1",
            encounter_type=encounter,  # type: ignore[arg-type]
            patient=types_pb2.Patient(patient_id="P1", diagnosis_codes=["C34.1"]),
        )
        for n, (code, category, lab) in enumerate(items, start=1):
            req.items.add(
                line_id=str(n),
                item_code=code,
                category=category,
                sendout_lab_id=lab,  # type: ignore[arg-type]
            )
        req.order_time.seconds = now_us // US_PER_SECOND
        return req

    lab = types_pb2.ITEM_CATEGORY_LAB
    g = types_pb2.ITEM_CATEGORY_GENE_TEST
    mix = [
        request([(labs[0], lab, "")]),
        request([(labs[2], lab, ""), (labs[3], lab, "")]),
        request([(labs[1], lab, ""), (labs[4], lab, ""), (labs[4], lab, "")]),
        request([(gene["code"], g, lab_id)]),
        request([(labs[0], lab, "")], encounter=3),
    ]
    return mix, rows


def _inner(target: str, calls: int, catalog: Path, clinicians: int = 200) -> None:
    """The measured process: set up, warm up, then ``calls`` calls."""
    import gc

    from cds.catalog.load import load_catalog
    from cds.decisions.memory import DecisionMemory
    from cds.decisions.recorder import NoRecorder
    from cds.metrics import Metrics
    from cds.orders.checker import OrderChecker
    from cds.orders.feedback import FeedbackDesk
    from cds.results.memory import MemoryResultStore
    from cds.rollout.state import CatalogState
    from cds.service.check import OrderCheck
    from cds.service.convert import checked_order

    cat = json.loads(catalog.read_text(encoding="utf-8"))
    now_us = time.time_ns() // 1000
    mix, rows = _requests(cat, now_us)
    state = CatalogState(str(catalog), load_catalog(catalog))
    store = MemoryResultStore(1000)
    _run(store.put_many(rows))
    if target == "engine":
        engine = state.active.engine
        results = _run(store.get_patient("P1"))
        cases = [(checked_order(r, now_us), results) for r in mix]

        def once(i: int) -> None:
            order, res = cases[i % 5]
            engine.evaluate(order, res)

    elif target == "record":
        import tempfile

        from cds.decisions.log import DecisionLog
        from cds.security.pseudonyms import Pseudonymizer

        class Capture(NoRecorder):
            def __init__(self) -> None:
                self.entries: list[Any] = []

            def decision(self, entry: Any) -> None:
                self.entries.append(entry)

        capture = Capture()
        checker = OrderChecker(state, store, DecisionMemory(), Metrics(), capture)
        handler = OrderCheck(checker, FeedbackDesk(DecisionMemory(), Metrics(), capture))
        for req in mix:
            _run(handler.check(req, None))  # type: ignore[arg-type]
        decided = capture.entries  # the orders supervision reads (an all-ALLOW is not)
        entries = []
        for i in range(RECORD_POOL):
            e = decided[i % len(decided)]
            order = e.order._replace(patient_id=f"P{i:09d}", clinician_id=f"C{i % clinicians}")
            entries.append(e._replace(order=order))
        # Never started: only the formatting is measured, not the file's writes.
        writer = DecisionLog(Path(tempfile.mkdtemp()) / "d.jsonl", Pseudonymizer.ephemeral())

        def once(i: int) -> None:
            writer._decision_line(entries[i % RECORD_POOL])

    else:
        metrics = Metrics()
        memory = DecisionMemory()
        recorder = NoRecorder()
        kwargs: dict[str, Any] = {}
        params = inspect.signature(OrderChecker).parameters
        if "recent" in params:  # the recent-orders buffer, where the tree has one
            from cds.rollout.replay import RecentOrders

            kwargs["recent"] = RecentOrders(100_000)
        checker = OrderChecker(state, store, memory, metrics, recorder, **kwargs)
        handler = OrderCheck(checker, FeedbackDesk(memory, metrics, recorder))

        def once(i: int) -> None:
            _run(handler.check(mix[i % 5], None))  # type: ignore[arg-type]

    for i in range(WARMUP):
        once(i)
    # As the server does once started: what set-up built is out of the collector's
    # sight, so how much of it there is cannot change how often a collection runs.
    gc.collect()
    gc.freeze()
    for i in range(calls):
        once(i)


def _run(coro: Any) -> Any:
    """A coroutine that never suspends (the in-process store), run without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the call suspended: not an in-process run")


def _count(tree: Path, target: str, calls: int, catalog: Path, clinicians: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,  # by path: the other tree has a benchmarks package of its own
        "--inner",
        target,
        "--calls",
        str(calls),
        "--catalog",
        str(catalog),
        "--clinicians",
        str(clinicians),
    ]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    match = _TOTAL.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"valgrind run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", type=Path, help="source tree (default: this one)")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--catalog", type=Path, default=CATALOG)
    p.add_argument("--clinicians", type=int, default=200, help="record: clinician ids in turn")
    p.add_argument("--target", action="append", choices=TARGETS)
    p.add_argument("--inner", choices=TARGETS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        _inner(args.inner, args.calls, args.catalog, args.clinicians)
        return 0
    out: dict[str, Any] = {
        "calls": args.calls,
        "clinicians": args.clinicians,
        "instructions_per_call": {},
    }
    for tree in args.tree or [ROOT]:
        figures = {}
        for target in args.target or TARGETS:
            base = _count(tree, target, 0, args.catalog, args.clinicians)
            full = _count(tree, target, args.calls, args.catalog, args.clinicians)
            figures[target] = round((full - base) / args.calls)
        out["instructions_per_call"][str(tree)] = figures
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
