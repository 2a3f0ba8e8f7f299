"""What only the in-process store promises: a bound in results, LRU patients, exact count."""

from __future__ import annotations

import asyncio
import gc
import random

import pytest

from cds.domain import US_PER_DAY, US_PER_SECOND
from cds.results import memory
from cds.results.memory import MemoryResultStore
from tests.support.stores import FakeClock, row

HOUR = 3600 * US_PER_SECOND


def rows_for(patient_id: str, n: int, clock: FakeClock, expires_in_us: int = US_PER_DAY):
    return [
        row(patient_id, f"{patient_id}-{i}", reported_at_us=clock.now_us - i,
            expires_at_us=clock.now_us + expires_in_us)
        for i in range(n)
    ]  # fmt: skip


def test_the_bound_counts_results_and_evicts_the_least_recently_used_patient() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=5, clock=clock)
        await store.put_many(rows_for("p1", 2, clock))
        await store.put_many(rows_for("p2", 2, clock))
        await store.get_patient("p1")  # p1 is now more recent than p2
        await store.put_many(rows_for("p3", 2, clock))  # 6 > 5: one patient must go
        assert dict(await store.get_patient("p2")) == {}
        assert len((await store.get_patient("p1"))["K"]) == 2
        assert len((await store.get_patient("p3"))["K"]) == 2
        assert store.cached_count() == 4

    asyncio.run(scenario())


def test_a_write_counts_as_a_use_for_eviction() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=4, clock=clock)
        await store.put_many(rows_for("p1", 2, clock))
        await store.put_many(rows_for("p2", 2, clock))
        await store.put_many([rows_for("p1", 3, clock)[2]])  # p1 written again: 5 > 4
        assert dict(await store.get_patient("p2")) == {}
        assert len((await store.get_patient("p1"))["K"]) == 3

    asyncio.run(scenario())


def test_a_patient_larger_than_the_whole_bound_keeps_its_newest_results() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=3, clock=clock)
        await store.put_many(rows_for("p", 5, clock))
        assert [r.result_id for r in (await store.get_patient("p"))["K"]] == ["p-0", "p-1", "p-2"]
        assert store.cached_count() == 3

    asyncio.run(scenario())


def test_cached_count_is_exact_through_puts_upserts_withdrawals_and_expiry() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=100, clock=clock)
        assert store.cached_count() == 0
        await store.put_many(rows_for("p1", 3, clock) + rows_for("p2", 2, clock, HOUR))
        assert store.cached_count() == 5
        await store.put_many(rows_for("p1", 1, clock))  # an upsert, not a new row
        assert store.cached_count() == 5
        assert await store.withdraw_many([("p1", "p1-1"), ("p1", "nope")]) == 1
        assert store.cached_count() == 4
        clock.advance(HOUR / US_PER_SECOND)  # p2's rows expire; nobody reads p2
        assert store.cached_count() == 2

    asyncio.run(scenario())


def test_expired_rows_of_unread_patients_are_swept_and_free_the_bound() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=4, clock=clock)
        await store.put_many(rows_for("p2", 2, clock))
        await store.put_many(rows_for("old", 2, clock, HOUR))  # the most recently used
        clock.advance(2 * HOUR / US_PER_SECOND)
        # "old" is swept, so the least recently used p2 need not make room for p3
        await store.put_many(rows_for("p3", 2, clock, 3 * US_PER_DAY))
        assert len((await store.get_patient("p2"))["K"]) == 2
        assert store.cached_count() == 4

    asyncio.run(scenario())


def test_sweeping_a_patient_does_not_count_as_a_use() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=4, clock=clock)
        await store.put_many(
            [
                row("p1", "soon", reported_at_us=clock.now_us, expires_at_us=clock.now_us + HOUR),
                row(
                    "p1", "late", reported_at_us=clock.now_us, expires_at_us=clock.now_us + 9 * HOUR
                ),
            ]
        )
        await store.put_many(rows_for("p2", 2, clock))
        clock.advance(2 * HOUR / US_PER_SECOND)
        assert store.cached_count() == 3  # p1's "soon" swept; p1 is still least recent
        await store.put_many(rows_for("p3", 2, clock))
        assert dict(await store.get_patient("p1")) == {}
        assert len((await store.get_patient("p2"))["K"]) == 2

    asyncio.run(scenario())


def test_a_reader_keeps_its_view_when_a_later_write_replaces_the_rows() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=10, clock=clock)
        await store.put_many(rows_for("p", 2, clock))
        first = await store.get_patient("p")
        await store.put_many([row("p", "new", reported_at_us=clock.now_us + 1,
                                  expires_at_us=clock.now_us + US_PER_DAY)])  # fmt: skip
        assert [r.result_id for r in first["K"]] == ["p-0", "p-1"]  # readers keep their view
        assert (await store.get_patient("p"))["K"][0].result_id == "new"

    asyncio.run(scenario())


def test_cached_rows_give_the_garbage_collector_nothing_to_walk() -> None:
    """A million cached results must not make every full collection stall the loop.

    The server freezes what start-up built (the store's own dicts among it); what the
    collector would then walk is the tracked objects made since and what they refer to.
    """

    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=100_000, clock=clock)
        rows = [
            row(f"p{i % 3000}", f"r{i}", f"K{i % 7}", reported_at_us=clock.now_us - i,
                expires_at_us=clock.now_us + (1 + i % 50) * HOUR)
            for i in range(10_000)
        ]  # fmt: skip
        gc.collect()
        gc.freeze()
        try:
            before = {id(o) for o in gc.get_objects()}
            await store.put_many(rows)
            await store.get_patient("p1")
            del rows
            gc.collect()
            made = [o for o in gc.get_objects() if id(o) not in before]
            assert store.cached_count() == 10_000
            assert sum(len(gc.get_referents(o)) for o in made) < 100
        finally:
            gc.unfreeze()

    asyncio.run(scenario())


def test_codes_past_the_shared_table_are_kept_in_the_row_and_round_trip(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_MAX_CODES", 2)

    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=10, clock=clock)
        later = clock.now_us + US_PER_DAY
        rows = [
            row("p", "a", "K1", institution_id="H1", reported_at_us=3, expires_at_us=later),
            row("p", "b", "血钾", institution_id="福建省立医院", reported_at_us=2,
                expires_at_us=later, mark=False),
            row("p", "c", "K1", institution_id="H2", reported_at_us=1, expires_at_us=later),
        ]  # fmt: skip
        await store.put_many(rows)
        got = await store.get_patient("p")
        assert dict(got) == {"K1": (rows[0].result, rows[2].result), "血钾": (rows[1].result,)}
        await store.withdraw_many([("p", "a")])  # a rewrite decodes the inline codes too
        assert dict(await store.get_patient("p")) == {
            "K1": (rows[2].result,),
            "血钾": (rows[1].result,),
        }

    asyncio.run(scenario())


def test_codes_are_interned_so_rows_share_one_string() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=10, clock=clock)
        later = clock.now_us + US_PER_DAY
        a = row("p", "a", "".join(["L", "AB-1"]), institution_id="".join(["H", "9"]),
                reported_at_us=1, expires_at_us=later)  # fmt: skip
        b = row("q", "b", "".join(["LA", "B-1"]), institution_id="".join(["H9"]),
                reported_at_us=1, expires_at_us=later)  # fmt: skip
        assert a.result.item_code is not b.result.item_code
        await store.put_many([a, b])
        ra = (await store.get_patient("p"))["LAB-1"][0]
        rb = (await store.get_patient("q"))["LAB-1"][0]
        assert ra.item_code is rb.item_code
        assert ra.institution_id is rb.institution_id

    asyncio.run(scenario())


def test_a_write_to_an_item_with_room_appends_even_when_the_patient_holds_more_than_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-item bound must not push every write of a patient with many results
    through the slower merge (decode, rebuild) path."""

    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=10_000, clock=clock, max_results_per_item=5)
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [row("p", f"r{i}", f"K{i % 30}", reported_at_us=i, expires_at_us=later)
             for i in range(120)]
        )  # fmt: skip
        merges = 0
        decode = store._decode_entries

        def counting(record: bytes, now: int):  # type: ignore[no-untyped-def]
            nonlocal merges
            merges += 1
            return decode(record, now)

        monkeypatch.setattr(store, "_decode_entries", counting)
        await store.put_many([row("p", "x1", "K1", reported_at_us=500, expires_at_us=later)])
        await store.put_many([row("p", "x2", "NEW", reported_at_us=500, expires_at_us=later)])
        assert merges == 0
        await store.put_many([row("p", "x3", "K1", reported_at_us=501, expires_at_us=later)])
        assert merges == 1  # K1 held 5: this one displaces its oldest
        assert [r.result_id for r in (await store.get_patient("p"))["K1"]] == [
            "x3",
            "x1",
            "r91",
            "r61",
            "r31",
        ]
        assert store.cached_count() == 120 + 2

    asyncio.run(scenario())


@pytest.mark.parametrize("max_codes", [2, memory._MAX_CODES])
def test_the_row_count_stays_exact_while_items_are_trimmed_and_patients_evicted(
    monkeypatch: pytest.MonkeyPatch, max_codes: int
) -> None:
    monkeypatch.setattr(memory, "_MAX_CODES", max_codes)  # 2: codes stored inline too

    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=60, clock=clock, max_results_per_item=3)
        rng = random.Random(7)
        later = clock.now_us + US_PER_DAY
        patients = [f"p{i}" for i in range(8)]
        for step in range(300):
            batch = [
                row(rng.choice(patients), f"r{rng.randrange(200)}", rng.choice("ABCD"),
                    reported_at_us=rng.randrange(50), expires_at_us=later)
                for _ in range(rng.choice([1, 1, 4, 12]))
            ]  # fmt: skip
            if step % 10 == 9:
                await store.withdraw_many([(r.patient_id, r.result.result_id) for r in batch])
            else:
                await store.put_many(batch)
            held = 0
            for patient_id in list(store._patients):
                groups = await store.get_patient(patient_id)
                assert all(len(group) <= 3 for group in groups.values())
                held += sum(len(group) for group in groups.values())
            assert store.cached_count() == held <= 60

    asyncio.run(scenario())


def test_a_read_of_codes_the_patient_has_no_rows_of_still_counts_as_a_use() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=5, clock=clock)
        await store.put_many(rows_for("p1", 2, clock))
        await store.put_many(rows_for("p2", 2, clock))
        assert dict(await store.get_patient("p1", ["NOT-CACHED"])) == {}  # a use of p1
        await store.put_many(rows_for("p3", 2, clock))  # 6 > 5: the older use goes
        assert dict(await store.get_patient("p2")) == {}
        assert len((await store.get_patient("p1"))["K"]) == 2

    asyncio.run(scenario())


def test_a_read_of_some_codes_prunes_expired_rows_of_every_code() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryResultStore(max_results=10, clock=clock)
        now = clock.now_us
        await store.put_many(
            [
                row("p", "short", "K", reported_at_us=now, expires_at_us=now + US_PER_SECOND),
                row("p", "long", "NA", reported_at_us=now, expires_at_us=now + US_PER_DAY),
            ]
        )
        clock.advance(2)
        assert dict(await store.get_patient("p", ["NA"])) == {
            "NA": ((await store.get_patient("p"))["NA"][0],)
        }
        assert store._rows == 1  # the K row went with the read, as a whole read drops it

    asyncio.run(scenario())


@pytest.mark.parametrize("max_codes", [3, memory._MAX_CODES])
def test_reads_of_random_codes_match_the_whole_read_with_and_without_inline_codes(
    monkeypatch: pytest.MonkeyPatch, max_codes: int
) -> None:
    monkeypatch.setattr(memory, "_MAX_CODES", max_codes)  # 3: later codes stored inline

    async def scenario() -> None:
        rng = random.Random(12)
        clock = FakeClock()
        store = MemoryResultStore(max_results=10_000, clock=clock, max_results_per_item=4)
        later = clock.now_us + US_PER_DAY
        codes = ["K", "NA", "血钾", "GLU", "CA", "MG"]
        for n in range(300):
            patient = f"p{rng.randrange(20)}"
            result_id = rng.choice(["r", "結果-", "é"]) + str(rng.randrange(60))
            await store.put_many(
                [row(patient, result_id, rng.choice(codes), reported_at_us=rng.randrange(50),
                     expires_at_us=later, institution_id=rng.choice(["H1", "医院"]))]
            )  # fmt: skip
            if n % 3 == 0:
                await store.withdraw_many([(patient, rng.choice(["r", "é"]) + "1")])
            asked = rng.sample([*codes, "NONE"], rng.randrange(4))
            whole = await store.get_patient(patient)
            some = await store.get_patient(patient, asked)
            for code in asked:
                assert some.get(code) == whole.get(code)

    asyncio.run(scenario())
