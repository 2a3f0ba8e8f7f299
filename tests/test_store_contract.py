"""The ResultStore contract, proved identically against the in-process and Redis stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from cds.domain import US_PER_DAY, US_PER_SECOND
from cds.results.base import ResultStore
from cds.results.memory import MemoryResultStore
from cds.results.redis_store import RedisResultStore
from tests.support.redis_server import redis_server_fixture  # noqa: F401
from tests.support.stores import FakeClock, row

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
    return Harness(lambda clock: RedisResultStore(server.url, clock=clock))


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
