"""The ResultStore contract, proved identically against the in-process and Redis stores."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from cds.domain import US_PER_DAY, US_PER_SECOND
from cds.results.base import ResultStore
from cds.results.memory import MemoryResultStore
from cds.results.redis_store import RedisResultStore
from tests.support.redis_server import redis_server_fixture  # noqa: F401
from tests.support.stores import FakeClock, eventually, row

Scenario = Callable[[ResultStore, FakeClock], Awaitable[None]]


class Harness:
    def __init__(self, make: Callable[[FakeClock], ResultStore]) -> None:
        self._make = make

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            clock = FakeClock()
            store = self._make(clock)
            try:
                await scenario(store, clock)
            finally:
                await store.close()

        asyncio.run(main())


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def harness(request: pytest.FixtureRequest) -> Harness:
    if request.param == "memory":
        return Harness(lambda clock: MemoryResultStore(max_results=10_000, clock=clock))
    server = request.getfixturevalue("redis_server")
    # The count refreshes often so the bound's effect on it is seen within a test.
    return Harness(
        lambda clock: RedisResultStore(
            server.url, clock=clock, count_refresh_s=0.05, maintenance_interval_s=0.05
        )
    )


def ids(results) -> dict[str, list[str]]:
    return {code: [r.result_id for r in rows] for code, rows in results.items()}


def test_unknown_patient_has_an_empty_mapping(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        assert dict(await store.get_patient("nobody")) == {}

    harness.run(scenario)


def test_results_come_back_by_item_code_newest_first(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "k-old", "K", reported_at_us=now - 300, expires_at_us=later),
                row("p", "k-new", "K", reported_at_us=now - 100, expires_at_us=later),
                row("p", "na", "NA", reported_at_us=now - 200, expires_at_us=later),
                row("p", "k-mid", "K", reported_at_us=now - 200, expires_at_us=later),
            ]
        )
        results = await store.get_patient("p")
        assert ids(results) == {"K": ["k-new", "k-mid", "k-old"], "NA": ["na"]}
        newest = results["K"][0]
        assert (newest.item_code, newest.institution_id, newest.reported_at_us) == (
            "K",
            "H1",
            now - 100,
        )
        assert newest.recognition_mark is True

    harness.run(scenario)


def test_fields_of_a_result_round_trip_exactly(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        put = row(
            "p",
            "结果-1",
            "血钾",
            institution_id="福建省立医院",
            reported_at_us=clock.now_us - 123_456_789,
            expires_at_us=clock.now_us + US_PER_DAY,
            mark=False,
        )
        await store.put_many([put])
        assert (await store.get_patient("p"))["血钾"] == (put.result,)

    harness.run(scenario)


def test_putting_the_same_result_id_again_replaces_it(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [row("p", "r1", reported_at_us=clock.now_us - 10, expires_at_us=later)]
        )
        await store.put_many(
            [row("p", "r1", reported_at_us=clock.now_us - 5, expires_at_us=later, mark=False)]
        )
        (only,) = (await store.get_patient("p"))["K"]
        assert (only.reported_at_us, only.recognition_mark) == (clock.now_us - 5, False)

    harness.run(scenario)


def test_the_last_of_two_puts_of_one_result_in_a_batch_wins(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "r1", "K", reported_at_us=clock.now_us - 10, expires_at_us=later),
                row("p", "r1", "NA", reported_at_us=clock.now_us - 5, expires_at_us=later),
            ]
        )
        assert ids(await store.get_patient("p")) == {"NA": ["r1"]}

    harness.run(scenario)


def test_a_result_repeated_in_a_batch_is_stored_and_counted_once_as_its_last_copy(
    harness: Harness,
) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        await store.put_many([row("p", "old", reported_at_us=now - 30, expires_at_us=later)])
        await store.put_many(
            [
                row("p", "new", "K", reported_at_us=now - 20, expires_at_us=later),
                row("p", "new", "NA", reported_at_us=now - 10, expires_at_us=later),
                row("p", "old", reported_at_us=now - 30, expires_at_us=later),
                row("p", "old", reported_at_us=now - 30, expires_at_us=later + US_PER_DAY),
                row("p", "gone", reported_at_us=now - 5, expires_at_us=later),
                row("p", "gone", reported_at_us=now - 5, expires_at_us=now),  # expired: last
            ]
        )
        assert ids(await store.get_patient("p")) == {"K": ["old"], "NA": ["new"]}
        await settled_count(store, 2)
        assert await store.withdraw_many([("p", "new"), ("p", "new")]) == 1
        assert ids(await store.get_patient("p")) == {"K": ["old"]}
        await settled_count(store, 1)

    harness.run(scenario)


def test_an_upsert_can_move_a_result_to_another_item_code(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "r1", "K", reported_at_us=clock.now_us - 10, expires_at_us=later),
                row("p", "r2", "K", reported_at_us=clock.now_us - 20, expires_at_us=later),
            ]
        )
        await store.put_many(
            [row("p", "r1", "NA", reported_at_us=clock.now_us - 10, expires_at_us=later)]
        )
        assert ids(await store.get_patient("p")) == {"K": ["r2"], "NA": ["r1"]}

    harness.run(scenario)


def test_withdraw_removes_only_the_named_results_and_counts_those_present(
    harness: Harness,
) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "r1", reported_at_us=clock.now_us - 10, expires_at_us=later),
                row("p", "r2", reported_at_us=clock.now_us - 20, expires_at_us=later),
                row("q", "r3", reported_at_us=clock.now_us - 20, expires_at_us=later),
            ]
        )
        withdrawn = await store.withdraw_many(
            [("p", "r1"), ("p", "absent"), ("nobody", "r1"), ("p", "r3")]
        )
        assert withdrawn == 1
        assert ids(await store.get_patient("p")) == {"K": ["r2"]}
        assert ids(await store.get_patient("q")) == {"K": ["r3"]}
        assert await store.withdraw_many([("p", "r1")]) == 0
        assert await store.withdraw_many([("p", "r2"), ("q", "r3")]) == 2
        assert dict(await store.get_patient("p")) == {}

    harness.run(scenario)


def test_a_result_is_kept_until_its_expiry_and_gone_from_then_on(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        expiry = clock.now_us + 60 * US_PER_SECOND
        await store.put_many(
            [
                row("p", "short", "K", reported_at_us=clock.now_us - 10, expires_at_us=expiry),
                row("p", "long", "NA", reported_at_us=clock.now_us - 10, expires_at_us=expiry * 2),
            ]
        )
        clock.now = expiry / US_PER_SECOND - 1e-6
        assert ids(await store.get_patient("p")) == {"K": ["short"], "NA": ["long"]}
        clock.now = expiry / US_PER_SECOND
        assert ids(await store.get_patient("p")) == {"NA": ["long"]}
        assert await store.withdraw_many([("p", "short")]) == 0

    harness.run(scenario)


def test_an_already_expired_row_is_not_kept_and_drops_the_earlier_version(
    harness: Harness,
) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now = clock.now_us
        await store.put_many([row("p", "r1", reported_at_us=now - 10, expires_at_us=now + 60)])
        await store.put_many(
            [
                row("p", "r1", reported_at_us=now - 10, expires_at_us=now),
                row("p", "r2", reported_at_us=now - 10, expires_at_us=now - 1),
            ]
        )
        assert dict(await store.get_patient("p")) == {}

    harness.run(scenario)


def test_patients_are_isolated_even_with_equal_result_ids(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "r1", "K", reported_at_us=clock.now_us - 10, expires_at_us=later),
                row("q", "r1", "NA", reported_at_us=clock.now_us - 10, expires_at_us=later),
            ]
        )
        assert await store.withdraw_many([("q", "r1")]) == 1
        assert ids(await store.get_patient("p")) == {"K": ["r1"]}
        assert dict(await store.get_patient("q")) == {}

    harness.run(scenario)


def test_batches_larger_than_a_pipeline_chunk_are_all_written(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        later = clock.now_us + US_PER_DAY
        rows = [
            row(f"p{n % 700}", f"r{n}", reported_at_us=clock.now_us - n, expires_at_us=later)
            for n in range(2_500)
        ]
        await store.put_many(rows)
        assert len((await store.get_patient("p0"))["K"]) == 4
        assert len((await store.get_patient("p699"))["K"]) == 3
        assert (
            await store.withdraw_many([(r.patient_id, r.result.result_id) for r in rows]) == 2_500
        )

    harness.run(scenario)


def test_empty_batches_change_nothing(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        await store.put_many([])
        assert await store.withdraw_many([]) == 0
        assert dict(await store.get_patient("p")) == {}

    harness.run(scenario)


# The default --max-results-per-item: the stores are built with their defaults above.
PER_ITEM = 100


async def settled_count(store: ResultStore, expected: int) -> None:
    """Exact at once for the in-process store; Redis's approximate count catches up."""

    async def matches() -> bool:
        await asyncio.sleep(0)
        return store.cached_count() == expected

    await eventually(matches)


def test_only_the_newest_results_of_an_item_are_kept_and_other_items_are_untouched(
    harness: Harness,
) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        many = [
            row("p", f"k{n:03}", "K", reported_at_us=now - 1_000 * n, expires_at_us=later)
            for n in range(150)
        ]
        random.Random(1).shuffle(many)  # arrival order is not reported order
        others = [
            row("p", "na", "NA", reported_at_us=now - 10**9, expires_at_us=later),
            row("q", "qk", "K", reported_at_us=now - 10**9, expires_at_us=later),
        ]
        await store.put_many(many + others)
        assert ids(await store.get_patient("p")) == {
            "K": [f"k{n:03}" for n in range(PER_ITEM)],
            "NA": ["na"],
        }
        assert ids(await store.get_patient("q")) == {"K": ["qk"]}
        await settled_count(store, PER_ITEM + 2)

    harness.run(scenario)


def test_an_older_result_than_those_kept_is_dropped_and_a_newer_one_displaces_the_oldest(
    harness: Harness,
) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", f"k{n:03}", reported_at_us=now - 1_000 * (n + 1), expires_at_us=later)
                for n in range(PER_ITEM)
            ]
        )
        kept = [f"k{n:03}" for n in range(PER_ITEM)]
        await store.put_many([row("p", "older", reported_at_us=now - 10**9, expires_at_us=later)])
        assert ids(await store.get_patient("p")) == {"K": kept}
        await store.put_many([row("p", "newer", reported_at_us=now, expires_at_us=later)])
        assert ids(await store.get_patient("p")) == {"K": ["newer", *kept[:-1]]}
        await settled_count(store, PER_ITEM)

    harness.run(scenario)


def test_equal_report_times_at_the_bound_keep_the_greater_result_ids(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        await store.put_many(
            [row("p", f"k{n:03}", reported_at_us=now, expires_at_us=later) for n in range(120)]
        )
        assert ids(await store.get_patient("p")) == {"K": [f"k{n:03}" for n in range(119, 19, -1)]}

    harness.run(scenario)


def test_the_bound_per_item_holds_across_many_puts_and_within_one(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        # K arrives one result per put (oldest first: each new one is the newest); NA in
        # batches of 30 mixed with K; Cl all in one put.
        for n in range(130):
            await store.put_many(
                [row("p", f"k{n:03}", "K", reported_at_us=now - 10**6 + n, expires_at_us=later)]
            )
        for batch in range(5):
            na = [
                row("p", f"na{batch * 30 + n:03}", "NA",
                    reported_at_us=now - 10**6 + batch * 30 + n, expires_at_us=later)
                for n in range(30)
            ]  # fmt: skip
            old_k = row("p", f"kb{batch}", "K", reported_at_us=now - 10**7, expires_at_us=later)
            await store.put_many([*na, old_k])
        await store.put_many(
            [
                row("p", f"cl{n:03}", "Cl", reported_at_us=now - 10**6 + n, expires_at_us=later)
                for n in range(250)
            ]
        )
        got = ids(await store.get_patient("p"))
        assert got == {
            "K": [f"k{n:03}" for n in range(129, 29, -1)],
            "NA": [f"na{n:03}" for n in range(149, 49, -1)],
            "Cl": [f"cl{n:03}" for n in range(249, 149, -1)],
        }
        await settled_count(store, 3 * PER_ITEM)

    harness.run(scenario)


def test_withdrawing_a_kept_result_does_not_bring_back_a_dropped_one(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", f"k{n:03}", reported_at_us=now - 1_000 * n, expires_at_us=later)
                for n in range(PER_ITEM + 1)
            ]
        )
        assert await store.withdraw_many([("p", "k000"), ("p", f"k{PER_ITEM:03}")]) == 1
        assert ids(await store.get_patient("p")) == {"K": [f"k{n:03}" for n in range(1, PER_ITEM)]}
        await settled_count(store, PER_ITEM - 1)

    harness.run(scenario)


def test_random_puts_upserts_and_withdrawals_keep_exactly_the_newest_per_item(
    harness: Harness,
) -> None:
    """Against a model: after every write each (patient, item) holds its newest results
    (by report time, then result id), at most the bound."""

    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        rng = random.Random(14)
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        model: dict[str, dict[str, tuple[str, int]]] = {"p": {}, "q": {}}

        def trim(results: dict[str, tuple[str, int]]) -> None:
            by_item: dict[str, list[tuple[int, str]]] = {}
            for result_id, (item, reported) in results.items():
                by_item.setdefault(item, []).append((reported, result_id))
            for group in by_item.values():
                group.sort(reverse=True)
                for _, result_id in group[PER_ITEM:]:
                    del results[result_id]

        for _ in range(40):
            if rng.random() < 0.2:
                # with repeats: a withdrawal may name a result twice
                refs = [("pq"[n % 2], f"r{n // 2}") for n in rng.choices(range(800), k=20)]
                await store.withdraw_many(refs)
                for patient, result_id in refs:
                    model[patient].pop(result_id, None)
                continue
            batch = []
            # with repeats: a batch may carry a result twice, the last copy wins
            for n in rng.choices(range(800), k=rng.choice([1, 5, 60])):
                patient, result_id = "pq"[n % 2], f"r{n // 2}"
                item, reported = rng.choice("KKKN"), now - rng.randrange(300) * 1_000
                batch.append(row(patient, result_id, item, reported_at_us=reported,
                                 expires_at_us=later))  # fmt: skip
                model[patient][result_id] = (item, reported)
            await store.put_many(batch)
            for patient in {stored.patient_id for stored in batch}:
                trim(model[patient])
            for patient, results in model.items():
                want: dict[str, list[tuple[int, str]]] = {}
                for result_id, (item, reported) in results.items():
                    want.setdefault(item, []).append((reported, result_id))
                expected = {
                    item: [result_id for _, result_id in sorted(group, reverse=True)]
                    for item, group in want.items()
                }
                assert ids(await store.get_patient(patient)) == expected
        await settled_count(store, sum(len(results) for results in model.values()))

    harness.run(scenario)


def test_a_read_of_the_ordered_codes_gives_those_codes_results_as_a_whole_read_does(
    harness: Harness,
) -> None:
    """A check asks only for its ordered codes; for each of them it must see exactly what
    a read of every code shows (rows before and after it of other codes, non-ASCII ids,
    an asked code with no row, one asked twice)."""

    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "甲-1", "NA", reported_at_us=now - 50, expires_at_us=later),
                row("p", "k-old", "K", reported_at_us=now - 300, expires_at_us=later),
                row("p", "é-glu", "GLU", reported_at_us=now - 10, expires_at_us=later,
                    institution_id="福建省立医院", mark=False),
                row("p", "k-new", "K", reported_at_us=now - 100, expires_at_us=later),
                row("q", "q-ca", "CA", reported_at_us=now - 100, expires_at_us=later),
            ]
        )  # fmt: skip
        whole = await store.get_patient("p")
        for codes in (["K"], ["GLU"], ["CA", "K", "K"], ["NONE"], [], ["NA", "GLU", "K"]):
            some = await store.get_patient("p", codes)
            for code in codes:
                assert some.get(code) == whole.get(code), (codes, code)
        assert ids(await store.get_patient("p", ["K"])).get("K") == ["k-new", "k-old"]
        assert (await store.get_patient("p", ["CA"])).get("CA") is None  # q's, not p's
        assert dict(await store.get_patient("nobody", ["K"])) == {}

    harness.run(scenario)


def test_a_read_of_some_codes_never_shows_an_expired_row_of_them(harness: Harness) -> None:
    async def scenario(store: ResultStore, clock: FakeClock) -> None:
        now = clock.now_us
        await store.put_many(
            [
                row("p", "short", "K", reported_at_us=now, expires_at_us=now + 10 * US_PER_SECOND),
                row("p", "long", "NA", reported_at_us=now, expires_at_us=now + US_PER_DAY),
            ]
        )
        clock.advance(11)
        assert (await store.get_patient("p", ["K"])).get("K") is None
        assert ids(await store.get_patient("p", ["NA"])).get("NA") == ["long"]
        assert ids(await store.get_patient("p")) == {"NA": ["long"]}

    harness.run(scenario)
