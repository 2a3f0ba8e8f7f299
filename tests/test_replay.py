"""Recent orders kept compactly and replayed against a candidate catalogue: the impact."""

from __future__ import annotations

import asyncio
import gc

import pytest

from cds.catalog.snapshot import Snapshot
from cds.domain import BACKDATE_LIMIT_US, Decision, EncounterType, ReasonCode
from cds.results.base import ResultsUnavailable, StoredRow
from cds.results.memory import MemoryResultStore
from cds.rollout.impact import Impact, ImpactRow, ImpactTally, render
from cds.rollout.replay import RecentOrders, footprint, rebuild, replay
from cds.rules.engine import Engine
from tests.support.snapshots import (
    CHEST_CT,
    DAY,
    DEFAULT_RECOGNITION,
    EGFR,
    HOSP_B,
    POTASSIUM,
    at,
    item,
    make_order,
    make_snapshot,
    recognition_item,
    result,
)

C = ReasonCode
NOW = at("2025-03-10 09:00")
SODIUM = "LAB-NA"


def candidate() -> Snapshot:
    """Potassium valid 1 day instead of 7, consent silent, sodium now recognised."""
    return make_snapshot(
        version="test-2",
        recognition_items=[
            recognition_item(POTASSIUM, "血清钾", validity_days=1),
            DEFAULT_RECOGNITION[1],
            recognition_item(SODIUM, "血清钠", validity_days=7),
        ],
        silent_codes=[C.CONSENT_REQUIRED],
    )


async def store_with(*rows: tuple[str, object]) -> MemoryResultStore:
    store = MemoryResultStore(1000, clock=lambda: NOW / 1e6)
    await store.put_many([StoredRow(patient, r, NOW + 30 * DAY) for patient, r in rows])
    return store


def order(*items, patient="p1", at_us=NOW - 3_600_000_000, **kw):
    return make_order(*items, order_time_us=at_us, **kw)._replace(patient_id=patient)


def test_a_dry_run_over_recorded_orders_gives_exactly_the_impact_they_imply():
    async def main() -> Impact:
        store = await store_with(
            ("p1", result("k1", NOW - 2 * DAY)),
            ("p3", result("na1", NOW - DAY, item_code=SODIUM)),
        )
        recent = RecentOrders(100)
        recent.record(order(item(POTASSIUM), patient="p1"))  # WARN -> ALLOW (window 1 day)
        recent.record(order(item(POTASSIUM), patient="p1"))  # the same again
        recent.record(order(item(EGFR, consent_signed=False), patient="p2"))  # BLOCK -> ALLOW
        recent.record(order(item(SODIUM), patient="p3"))  # ALLOW -> WARN, newly recognised
        recent.record(order(item(CHEST_CT), patient="p4"))  # nothing to say either way
        too_old = NOW - BACKDATE_LIMIT_US - 1
        recent.record(order(item(POTASSIUM), patient="p1", at_us=too_old))  # not replayed
        recent.record(order(item(POTASSIUM), patient="down"))  # results unreadable

        async def read(patient_id):
            if patient_id == "down":
                raise ResultsUnavailable("redis down")
            return await store.get_patient(patient_id)

        before, after = Engine(make_snapshot()), Engine(candidate())
        return await replay(recent.records(), read, before, after, NOW)

    impact = asyncio.run(main())
    assert impact == Impact(
        orders_replayed=5,
        lines_changed=4,
        rows=(
            ImpactRow(
                POTASSIUM, Decision.WARN, Decision.ALLOW, 2, (), (C.RECOGNIZABLE_RESULT_EXISTS,)
            ),
            ImpactRow(EGFR, Decision.BLOCK, Decision.ALLOW, 1, (), (C.CONSENT_REQUIRED,)),
            ImpactRow(
                SODIUM, Decision.ALLOW, Decision.WARN, 1, (C.RECOGNIZABLE_RESULT_EXISTS,), ()
            ),
        ),
    )


def test_a_line_whose_decision_stays_but_whose_reasons_change_is_a_change():
    tally = ImpactTally()
    engine = Engine(make_snapshot())
    mdt_silent = Engine(make_snapshot(silent_codes=[C.MDT_REQUIRED]))
    o = order(item(EGFR, consent_signed=False), first_oncology_visit=True)
    tally.add(mdt_silent.evaluate(o, {}), engine.evaluate(o, {}))  # BLOCK both, +MDT
    tally.add(engine.evaluate(o, {}), engine.evaluate(o, {}))  # identical answers
    assert tally.impact().rows == (
        ImpactRow(EGFR, Decision.BLOCK, Decision.BLOCK, 1, (C.MDT_REQUIRED,), ()),
    )
    assert tally.impact().orders_replayed == 2


def test_a_replayed_order_is_judged_as_the_original_was():
    engine = Engine(make_snapshot())
    rows = {POTASSIUM: (result("k1", NOW - DAY, institution_id=HOSP_B, mark=True),)}
    orders = [
        order(item(POTASSIUM), item(POTASSIUM, "2"), item("LAB-X", "3")),
        order(item(EGFR, sendout_lab_id="LAB-OUT-1"), institution_id=HOSP_B),
        order(item(EGFR, price_item_code="OTHER", consent_signed=False), diagnosis_codes=("E11",)),
        order(item(EGFR), first_oncology_visit=True, mdt_record_id="MDT-1"),
        order(item(EGFR), first_oncology_visit=True),
        order(item(POTASSIUM), encounter_type=EncounterType.EMERGENCY),
        order(item("GENE-UNLISTED"), diagnosis_codes=()),
    ]
    recent = RecentOrders(10)
    for o in orders:
        recent.record(o)
    for original, record in zip(orders, recent.records(), strict=True):
        want = engine.evaluate(original, rows)
        got = engine.evaluate(rebuild(record), rows)
        assert [(i.item_code, i.decision, [r.code for r in i.reasons]) for i in got.items] == [
            (i.item_code, i.decision, [r.code for r in i.reasons]) for i in want.items
        ]


def test_a_kept_order_holds_only_what_the_rules_read():
    recent = RecentOrders(10)
    recent.record(
        order(item(EGFR, "line-7"), mdt_record_id="MDT-SECRET", first_oncology_visit=True)
    )
    (record,) = recent.records()
    for never in ("doc-1", "dept-1", "req-1", "MDT-SECRET", "line-7"):
        assert never not in record
    assert "p1" in record  # the patient, to read their results again
    assert rebuild(record).mdt_record_id  # only that there was one


def test_the_buffer_keeps_the_most_recent_orders_and_costs_the_collector_nothing():
    recent = RecentOrders(3)
    for n in range(5):
        recent.record(order(item(POTASSIUM), patient=f"p{n}", diagnosis_codes=("C34.1", "E11")))
    assert [r[1] for r in recent.records()] == ["p2", "p3", "p4"]
    gc.collect()
    assert not any(gc.is_tracked(r) for r in recent.records())


def replay_beside_a_ticker(
    orders: int, line_codes: tuple[str, ...], after: Snapshot
) -> tuple[int, int]:
    """``orders`` kept orders of these codes replayed against ``after``, while a task
    ticks whenever the loop lets it: (orders replayed, ticks during the replay)."""

    async def main() -> tuple[int, int]:
        store = await store_with(("p1", result("k1", NOW - DAY)))
        recent = RecentOrders(orders)
        lines = [item(code, str(n)) for n, code in enumerate(line_codes, 1)]
        for _ in range(orders):
            recent.record(order(*lines, patient="p1"))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        start = ticks
        before = Engine(make_snapshot())
        impact = await replay(recent.records(), store.get_patient, before, Engine(after), NOW)
        during = ticks - start
        task.cancel()
        return impact.orders_replayed, during

    return asyncio.run(main())


def test_a_long_replay_lets_other_work_run_on_the_loop_between_slices():
    blocks = {C.RECOGNIZABLE_RESULT_EXISTS: Decision.BLOCK}  # reaches every order
    replayed, ticks_during = replay_beside_a_ticker(
        20_000, (POTASSIUM, CHEST_CT), make_snapshot(version="test-2", severity=blocks)
    )
    assert replayed == 20_000
    assert ticks_during > 1  # the loop was handed back, not held for the whole replay


def test_a_replay_that_reaches_no_order_still_hands_the_loop_back_between_chunks():
    """A change no recent order names (a reload adding 10,000 new codes, say) judges
    nothing, but filtering 100,000 kept orders is ~50 ms: not in one stretch, or
    every order screen waits for it."""
    shorter = make_snapshot(
        version="test-2",
        recognition_items=[recognition_item(validity_days=1), DEFAULT_RECOGNITION[1]],
    )  # potassium only, which no order names
    replayed, ticks_during = replay_beside_a_ticker(100_000, (CHEST_CT, EGFR), shorter)
    assert replayed == 100_000
    assert ticks_during > 1


def test_a_change_to_one_entry_judges_only_the_orders_that_order_it():
    reads: list[str] = []

    async def main() -> Impact:
        store = await store_with(("p1", result("k1", NOW - 2 * DAY)))

        async def read(patient_id):
            reads.append(patient_id)
            return await store.get_patient(patient_id)

        recent = RecentOrders(10)
        recent.record(order(item(POTASSIUM), patient="p1"))
        recent.record(order(item(CHEST_CT), item(EGFR, "2"), patient="p2"))
        recent.record(order(item("LAB-OTHER"), patient="p3"))
        shorter = make_snapshot(
            version="test-2",
            recognition_items=[recognition_item(validity_days=1), DEFAULT_RECOGNITION[1]],
        )
        return await replay(recent.records(), read, Engine(make_snapshot()), Engine(shorter), NOW)

    impact = asyncio.run(main())
    assert impact.orders_replayed == 3  # the other two are counted, their answer unchanged
    assert impact.rows == (
        ImpactRow(POTASSIUM, Decision.WARN, Decision.ALLOW, 1, (), (C.RECOGNIZABLE_RESULT_EXISTS,)),
    )
    assert reads == ["p1"]


@pytest.mark.parametrize(
    "change",
    [
        {"severity": {C.GENE_TEST_REPEATED: Decision.ALLOW}},
        {"silent_codes": [C.DUPLICATE_IN_REQUEST]},
        {"sendout_labs": ()},
        {"institutions": ()},
    ],
    ids=["severity", "silent code", "send-out labs", "institution groups"],
)
def test_a_catalogue_wide_change_reaches_every_order(change):
    assert footprint(make_snapshot(), make_snapshot(version="test-2", **change)) is None


def test_names_and_messages_reach_no_order():
    reworded = make_snapshot(version="test-2", messages={C.CONSENT_REQUIRED: "请签字"})
    assert footprint(make_snapshot(), reworded) == frozenset()


def test_impacts_of_several_processes_add_up_and_survive_the_control_channel():
    one = Impact.of(3, {(POTASSIUM, 2, 1, (), ("X",)): 2})
    two = Impact.of(4, {(POTASSIUM, 2, 1, (), ("X",)): 1, (EGFR, 1, 3, ("Y",), ()): 5})
    total = Impact.total([Impact.from_json(one.as_json()), Impact.from_json(two.as_json())])
    assert total == Impact(
        7,
        8,
        (
            ImpactRow(EGFR, Decision.ALLOW, Decision.BLOCK, 5, ("Y",), ()),
            ImpactRow(POTASSIUM, Decision.WARN, Decision.ALLOW, 3, (), ("X",)),
        ),
    )


def test_the_impact_table_puts_the_biggest_change_first_and_aligns_chinese_names():
    impact = Impact.of(
        120,
        {
            ("LAB-K", 1, 2, ("RECOGNIZABLE_RESULT_EXISTS",), ()): 3,
            ("GENE-EGFR", 3, 3, (), ("CONSENT_REQUIRED",)): 1200,
        },
    )
    text = render(impact, {"LAB-K": "血清钾", "GENE-EGFR": "EGFR基因突变检测"})
    head, blank, header, first, second = text.splitlines()
    assert blank == ""
    assert header.split()[:3] == ["lines", "item", "name"]
    assert head == "impact: 120 recent orders replayed, 1,203 lines answered differently"
    assert first.split() == ["1,200", "GENE-EGFR", "EGFR基因突变检测", "BLOCK", "->", "BLOCK",
                             "-CONSENT_REQUIRED"]  # fmt: skip
    assert second.split()[:2] == ["3", "LAB-K"]
    # the "before -> after" column starts at the same screen column on every row
    columns = [_display_column(line, "->") for line in (first, second)]
    assert columns[0] == columns[1]


def _display_column(line: str, token: str) -> int:
    import unicodedata

    prefix = line[: line.index(token)]
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in prefix)


def test_a_table_says_so_when_there_was_nothing_to_replay_or_nothing_changed():
    assert "no recent orders to replay" in render(Impact(0, 0, ()))
    assert (
        render(Impact(5, 0, ())) == "impact: 5 recent orders replayed, 0 lines answered differently"
    )


@pytest.mark.parametrize("capacity", [0, -1])
def test_a_buffer_needs_room_for_one_order(capacity):
    with pytest.raises(ValueError):
        RecentOrders(capacity)


def test_kept_orders_share_one_string_per_code():
    recent = RecentOrders(10)
    codes = ["".join(["LAB-", "K"]) for _ in range(2)]  # equal, but two objects
    assert codes[0] is not codes[1]
    for code in codes:
        recent.record(order(item(code), diagnosis_codes=()))
    first, second = recent.records()
    assert first[7] == POTASSIUM
    assert first[7] is second[7]
