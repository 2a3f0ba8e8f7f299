"""What a remembered decision costs in memory, measured: ``python -m benchmarks.decision_memory``.

Three kinds of answer, each remembered 20,000 times into a fresh ``DecisionMemory``
and measured with ``tracemalloc``: what stays allocated once each answer's own objects
are dropped, as after a Check (records, ids, the OrderedDict's entries, and any string
the memory still references). A WARN of three lines with one recognisable prior
result, an ALLOW of three lines, and a worst case of 100 lines each listing ten
128-character prior result ids.
The figures size ``--max-decisions`` and ``--max-decision-bytes`` (README, Operations)
and calibrate ``ENTRY_OVERHEAD_BYTES``, the fixed cost the bytes bound charges each
decision besides its record.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable

from cds.decisions.memory import DecisionMemory
from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    ItemDecision,
    Order,
    OverrideOption,
    PriorResult,
    Reason,
)

N = 20_000
OPTIONS = tuple(OverrideOption(f"OPT{i}", "病情变化需要复查" * 2, i == 2) for i in range(4))
ORDER = Order(
    "req", "H35010001", "ONCO", "DOC-0000001", EncounterType.OUTPATIENT, "PAT-000000001",
    ("C34.1",), False, "", (), 0,
)  # fmt: skip


def warn(i: int) -> Evaluation:
    prior = (PriorResult(f"RES-{i:012d}", "H35010001", "K", 1_780_000_000_000_000, 1),)
    message = (  # formatted per order, as the engine does: a new string each time
        f"患者已有可互认的血清钾检验结果（7 天内 1 份，最近一份 2026-11-{i % 28 + 1:02d}，"
        "福建省立医院出具），请优先调阅"
    )
    reason = Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, message, prior, OPTIONS, "闽卫")
    return Evaluation(
        Decision.WARN,
        (
            ItemDecision("1", "K", Decision.WARN, (reason,)),
            ItemDecision("2", "NA", Decision.ALLOW, ()),
            ItemDecision("3", "GLU", Decision.ALLOW, ()),
        ),
    )


def allow(i: int) -> Evaluation:
    lines = (ItemDecision(str(n), c, Decision.ALLOW, ()) for n, c in enumerate(("K", "NA", "GLU")))
    return Evaluation(Decision.ALLOW, tuple(lines))


def huge(i: int) -> Evaluation:
    priors = tuple(PriorResult(f"{i:08d}{k:03d}" + "R" * 117, "H2", "K", 1, 2) for k in range(10))
    reason = Reason("RECOGNIZABLE_RESULT_EXISTS", Decision.WARN, f"m{i}" * 50, priors, OPTIONS)
    items = tuple(ItemDecision(f"{n}", "K" * 128, Decision.WARN, (reason,)) for n in range(100))
    return Evaluation(Decision.WARN, items)


def per_decision(make: Callable[[int], Evaluation], n: int) -> tuple[float, float]:
    """(bytes per decision by tracemalloc, by the memory's own account when it has one).

    Each evaluation and order is built inside the measurement and dropped after it is
    remembered, as a Check's are: what stays is what the memory keeps, strings it
    references included (an older memory kept the clinician-facing message by reference).
    """
    gc.collect()
    memory = DecisionMemory(max_decisions=n + 1, ttl_seconds=3600, **_unbounded())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        order = ORDER._replace(patient_id=f"PAT-{i:09d}")
        memory.remember(f"{'ab' * 8}-{i}", order, make(i), "v1")
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    accounted = getattr(memory, "bytes", None)
    return (after - before) / n, (accounted / n if accounted is not None else float("nan"))


def _unbounded() -> dict[str, int]:
    # An older DecisionMemory has no bytes bound: measure it as it is.
    code = DecisionMemory.__init__.__code__
    return {"max_bytes": 1 << 40} if "max_bytes" in code.co_varnames else {}


def main() -> int:
    print(f"bytes per remembered decision ({N:,} of each; tracemalloc / the bytes bound's account)")
    for name, make, n in (("warn, 3 lines", warn, N), ("allow, 3 lines", allow, N),
                          ("100 lines x 10 priors", huge, N // 20)):  # fmt: skip
        measured, accounted = per_decision(make, n)
        print(f"  {name:24s} {measured:>10,.0f} B   accounted {accounted:>10,.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
