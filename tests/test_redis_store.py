"""What only the Redis store promises: Cluster-safe keys, a near-cache that stays correct
across instances, acknowledged writes, and faults that surface fast and heal by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from cds.domain import US_PER_DAY, US_PER_SECOND, StoredResult
from cds.results.base import ResultsUnavailable
from cds.results.redis_store import RedisResultStore, _expiry_s, _pack
from tests.support.redis_server import (  # noqa: F401  (fixtures)
    RedisCluster,
    RedisServer,
    redis_cluster_fixture,
    redis_server_fixture,
)
from tests.support.stores import FakeClock, eventually, row

pytestmark = pytest.mark.redis

FAST = {"read_timeout_s": 0.05, "connect_timeout_s": 0.05, "write_timeout_s": 0.2}


def run(
    server: RedisServer, scenario: Callable[..., Awaitable[None]], n: int = 1, **options
) -> None:
    """Run ``scenario(raw_client, clock, *stores)`` with ``n`` store instances on one Redis."""

    async def main() -> None:
        clock = FakeClock()
        options.setdefault("maintenance_interval_s", 0.02)
        stores = [RedisResultStore(server.url, clock=clock, **options) for _ in range(n)]
        raw = Redis.from_url(server.url.replace("redis+cluster://", "redis://"))
        try:
            for store in stores:
                assert await store.start(), "invalidation subscription not confirmed"
            await scenario(raw, clock, *stores)
        finally:
            for store in stores:
                await store.close()
            await raw.aclose()

    asyncio.run(main())


def ids(results) -> dict[str, list[str]]:
    return {code: [r.result_id for r in rows] for code, rows in results.items()}


def test_all_of_a_patients_results_live_in_one_key_hash_tagged_by_the_patient(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [row("p-42", f"r{i}", f"I{i}", reported_at_us=i, expires_at_us=later) for i in range(5)]
        )
        keys = [k async for k in raw.scan_iter(match="cds:r:*")]
        assert keys == [b"cds:r:{p-42}"]
        assert await raw.hlen(keys[0]) == 5
        assert key_slot(keys[0]) == key_slot(b"p-42")  # the hash tag decides the slot

    run(redis_server, scenario)


def test_an_acknowledged_put_is_in_redis_with_a_ttl_at_its_latest_expiry(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        now_s = int(clock.now)
        await store.put_many(
            [
                row("p", "a", reported_at_us=1, expires_at_us=(now_s + 100) * US_PER_SECOND),
                row("p", "b", reported_at_us=1, expires_at_us=(now_s + 900) * US_PER_SECOND),
            ]
        )
        assert set(await raw.hkeys("cds:r:{p}")) == {b"a", b"b"}
        assert await raw.expiretime("cds:r:{p}") == now_s + 900

    run(redis_server, scenario)


def test_a_write_through_one_instance_reaches_a_reader_that_had_it_cached(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, a: RedisResultStore, b: RedisResultStore):
        later = clock.now_us + US_PER_DAY
        assert dict(await b.get_patient("p")) == {}  # b caches "no results"
        # A write behind every store's back (no invalidation) stays unseen: b does cache.
        hidden = StoredResult("hidden", "K", "H1", 5, True)
        await raw.hset("cds:r:{p}", "hidden", _pack(hidden, later))
        assert dict(await b.get_patient("p")) == {}

        await a.put_many([row("p", "new", reported_at_us=9, expires_at_us=later)])

        async def b_sees_it():
            return ids(await b.get_patient("p")) == {"K": ["new", "hidden"]}

        await eventually(b_sees_it, timeout_s=2.0)  # near-cache TTL is 60 s: invalidation did it

    run(redis_server, scenario, n=2, near_cache_ttl_s=60.0)


def test_a_withdrawal_through_one_instance_reaches_a_reader_that_had_it_cached(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, a: RedisResultStore, b: RedisResultStore):
        later = clock.now_us + US_PER_DAY
        await a.put_many([row("p", "r1", reported_at_us=9, expires_at_us=later)])
        assert ids(await b.get_patient("p")) == {"K": ["r1"]}
        assert await a.withdraw_many([("p", "r1")]) == 1

        async def b_sees_it_gone():
            return dict(await b.get_patient("p")) == {}

        await eventually(b_sees_it_gone, timeout_s=2.0)

    run(redis_server, scenario, n=2, near_cache_ttl_s=60.0)


def test_a_cached_patient_is_reread_once_one_of_its_rows_expires(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        soon = clock.now_us + 60 * US_PER_SECOND
        await store.put_many(
            [
                row("p", "soon", reported_at_us=1, expires_at_us=soon),
                row("p", "late", "NA", reported_at_us=1, expires_at_us=soon + US_PER_DAY),
            ]
        )
        assert ids(await store.get_patient("p")) == {"K": ["soon"], "NA": ["late"]}
        clock.advance(60)
        assert ids(await store.get_patient("p")) == {"NA": ["late"]}

        async def pruned_in_redis():
            return await raw.hkeys("cds:r:{p}") == [b"late"]

        await eventually(pruned_in_redis)  # the read queued a background prune

    run(redis_server, scenario, near_cache_ttl_s=60.0)


def test_a_write_prunes_the_patients_expired_fields(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        await store.put_many([row("p", "old", reported_at_us=1, expires_at_us=clock.now_us + 60)])
        clock.advance(120)
        await store.put_many(
            [row("p", "new", reported_at_us=2, expires_at_us=clock.now_us + US_PER_DAY)]
        )
        assert await raw.hkeys("cds:r:{p}") == [b"new"]

    run(redis_server, scenario, maintenance_interval_s=3600)


def test_cached_count_follows_puts_and_withdrawals(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [row(f"p{i}", "r", reported_at_us=1, expires_at_us=later) for i in range(7)]
        )
        await store.put_many([row("p0", "r", reported_at_us=2, expires_at_us=later)])  # upsert

        async def count_is(n: int):
            return store.cached_count() == n

        await eventually(lambda: count_is(7))
        await store.withdraw_many([("p1", "r"), ("p2", "r")])
        await eventually(lambda: count_is(5))

    run(redis_server, scenario, count_refresh_s=0.01)


async def _unavailable_within(call: Callable[[], Awaitable[object]], bound_s: float) -> None:
    started = time.monotonic()
    with pytest.raises(ResultsUnavailable):
        await call()
    # Generous bound, against redis-py's default retries with backoff (seconds), not a
    # performance assertion.
    assert time.monotonic() - started < bound_s


def test_a_dead_redis_fails_every_call_fast_and_a_restarted_one_just_works(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many([row("p", "before", reported_at_us=1, expires_at_us=later)])
        redis_server.stop()
        await _unavailable_within(lambda: store.get_patient("q"), 1.0)
        await _unavailable_within(
            lambda: store.put_many([row("p", "r", reported_at_us=1, expires_at_us=later)]), 1.0
        )
        await _unavailable_within(lambda: store.withdraw_many([("p", "r")]), 1.0)

        redis_server.start()  # same port, empty (no persistence), script cache empty
        assert dict(await store.get_patient("q")) == {}
        await store.put_many([row("p", "after", reported_at_us=2, expires_at_us=later)])
        assert ids(await store.get_patient("p")) == {"K": ["after"]}
        assert await store.withdraw_many([("p", "after")]) == 1

    run(redis_server, scenario, **FAST)


def test_a_hung_redis_times_out_into_results_unavailable(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.get_patient("warm-up")  # a pooled connection exists
        redis_server.pause()
        try:
            await _unavailable_within(lambda: store.get_patient("q"), 1.0)
            await _unavailable_within(
                lambda: store.put_many([row("p", "r", reported_at_us=1, expires_at_us=later)]), 2.0
            )
        finally:
            redis_server.resume()
        await store.put_many([row("p", "r", reported_at_us=1, expires_at_us=later)])
        assert ids(await store.get_patient("p")) == {"K": ["r"]}

    run(redis_server, scenario, **FAST)


def test_invalidations_flow_again_after_redis_restarts(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, a: RedisResultStore, b: RedisResultStore):
        later = clock.now_us + US_PER_DAY
        confirmed = [a.subscriptions_confirmed, b.subscriptions_confirmed]
        redis_server.restart()

        async def resubscribed():
            return all(
                [a.subscriptions_confirmed > confirmed[0], b.subscriptions_confirmed > confirmed[1]]
            )

        await eventually(resubscribed)
        assert dict(await b.get_patient("p")) == {}
        await raw.hset(
            "cds:r:{p}", "hidden", _pack(StoredResult("hidden", "K", "H", 5, True), later)
        )
        assert dict(await b.get_patient("p")) == {}  # b caches again
        await a.put_many([row("p", "new", reported_at_us=9, expires_at_us=later)])

        async def b_sees_it():
            return ids(await b.get_patient("p")) == {"K": ["new", "hidden"]}

        await eventually(b_sees_it, timeout_s=2.0)

    run(redis_server, scenario, n=2, near_cache_ttl_s=60.0, **FAST)


def test_near_cache_is_bypassed_while_the_subscription_is_down(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many([row("p", "r1", reported_at_us=1, expires_at_us=later)])
        assert ids(await store.get_patient("p")) == {"K": ["r1"]}
        await raw.client_kill_filter(_type="pubsub")  # drop every subscriber connection
        await raw.hset("cds:r:{p}", "r2", _pack(StoredResult("r2", "K", "H", 5, True), later))

        async def sees_r2():
            return ids(await store.get_patient("p")) == {"K": ["r2", "r1"]}

        await eventually(sees_r2, timeout_s=2.0)

    run(redis_server, scenario, near_cache_ttl_s=60.0)


def test_on_a_cluster_patients_spread_over_slots_and_invalidations_still_flow(redis_cluster):
    async def scenario(raw: Redis, clock: FakeClock, a: RedisResultStore, b: RedisResultStore):
        later = clock.now_us + US_PER_DAY
        patients = [f"p{i}" for i in range(200)]
        assert len({key_slot(f"cds:r:{{{p}}}".encode()) for p in patients}) > 100
        assert dict(await b.get_patient("p7")) == {}  # cached by b
        await a.put_many(
            [
                row(p, f"{p}-{n}", reported_at_us=n, expires_at_us=later)
                for p in patients
                for n in (1, 2)
            ]
        )

        async def b_sees_p7():
            return ids(await b.get_patient("p7")) == {"K": ["p7-2", "p7-1"]}

        await eventually(b_sees_p7, timeout_s=2.0)
        assert await a.withdraw_many([(p, f"{p}-1") for p in patients]) == 200

        async def b_sees_withdrawal():
            return ids(await b.get_patient("p7")) == {"K": ["p7-2"]}

        await eventually(b_sees_withdrawal, timeout_s=2.0)

    run(redis_cluster, scenario, n=2, near_cache_ttl_s=60.0, connect_timeout_s=0.5)


def test_a_frozen_redis_stops_the_near_cache_within_the_read_timeout_and_it_returns_flushed(
    redis_server,
):
    """SIGSTOP keeps every socket open and silent: the invalidation subscription sees no
    error at all, so only a heartbeat on it can tell that invalidations stopped flowing."""

    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many([row("p", "r1", reported_at_us=1, expires_at_us=later)])
        assert ids(await store.get_patient("p")) == {"K": ["r1"]}  # now in the near-cache
        redis_server.pause()
        try:
            # read timeout 50 ms, plus a margin for a busy machine
            await asyncio.sleep(0.05 + 0.25)
            for _ in range(5):
                with pytest.raises(ResultsUnavailable):
                    await store.get_patient("p")  # never the near-cache's possibly stale copy
        finally:
            redis_server.resume()
        # a write that reached Redis without an invalidation the store could have seen
        await raw.hset("cds:r:{p}", "r2", _pack(StoredResult("r2", "K", "H", 5, True), later))

        async def sees_r2():
            with contextlib.suppress(ResultsUnavailable):
                return ids(await store.get_patient("p")) == {"K": ["r2", "r1"]}
            return False

        await eventually(sees_r2, timeout_s=3.0)  # near-cache TTL is 60 s: it was flushed
        assert await store.start(timeout_s=3.0)  # and it is trusted again

    run(redis_server, scenario, near_cache_ttl_s=60.0, **FAST)


def test_a_hash_from_before_the_bound_costs_a_check_the_bound_and_is_trimmed_when_written(
    redis_server,
):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        # as an older version wrote it: 300 fields of one item, 2 of another, no bound
        fields: dict[str, bytes] = {
            f"k{n:03}": _pack(StoredResult(f"k{n:03}", "K", "H1", 10_000 - n, True), later)
            for n in range(300)
        }
        fields |= {
            f"na{n}": _pack(StoredResult(f"na{n}", "NA", "H1", n, True), later) for n in range(2)
        }
        await raw.hset("cds:r:{p}", mapping=fields)  # type: ignore[arg-type]
        got = ids(await store.get_patient("p"))
        assert got == {"K": [f"k{n:03}" for n in range(5)], "NA": ["na1", "na0"]}
        await store.put_many([row("p", "new", "K", reported_at_us=20_000, expires_at_us=later)])
        assert await raw.hlen("cds:r:{p}") == 5 + 2
        got = ids(await store.get_patient("p"))
        assert got == {"K": ["new", *[f"k{n:03}" for n in range(4)]], "NA": ["na1", "na0"]}

    run(redis_server, scenario, max_results_per_item=5)


def test_the_count_drops_the_results_the_bound_trimmed(redis_server):
    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [row("p", f"r{n}", reported_at_us=n, expires_at_us=later) for n in range(2_500)]
        )
        assert await raw.hlen("cds:r:{p}") == 3

        async def count_is_three() -> bool:
            return store.cached_count() == 3

        await eventually(count_is_three)

    run(redis_server, scenario, max_results_per_item=3, chunk_rows=1_000, count_refresh_s=0.02)


def test_a_read_of_some_codes_fills_the_near_cache_with_every_code(redis_server):
    """The near-cache serves the patient's next checks, which order other codes."""

    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        later = clock.now_us + US_PER_DAY
        await store.put_many(
            [
                row("p", "k1", "K", reported_at_us=1, expires_at_us=later),
                row("p", "na1", "NA", reported_at_us=2, expires_at_us=later),
            ]
        )
        assert ids(await store.get_patient("p", ["K"])).get("K") == ["k1"]
        await raw.delete("cds:r:{p}")  # behind the store's back: only its near-cache has p
        assert ids(await store.get_patient("p", ["NA"])) == {"K": ["k1"], "NA": ["na1"]}

    run(redis_server, scenario)


def test_without_the_near_cache_a_read_of_some_codes_builds_only_those_within_the_bound(
    redis_server,
):
    async def main() -> None:
        clock = FakeClock()
        now, later = clock.now_us, clock.now_us + US_PER_DAY
        store = RedisResultStore(redis_server.url, clock=clock, near_cache_size=0,
                                 max_results_per_item=3)  # fmt: skip
        raw = Redis.from_url(redis_server.url)
        try:
            fields: dict[str, bytes] = {
                f"k{n}": _pack(StoredResult(f"k{n}", "K", "H1", 100 - n, True), later)
                for n in range(5)
            }
            fields["na"] = _pack(StoredResult("na", "NA", "H1", 1, True), later)
            fields["gone"] = _pack(StoredResult("gone", "GLU", "H1", 1, True), now - 1)
            await raw.hset("cds:r:{p}", mapping=fields)  # type: ignore[arg-type]
            got = ids(await store.get_patient("p", ["K", "NONE"]))
            assert got == {"K": ["k0", "k1", "k2"]}
            assert "p" in store._to_prune  # an expired row of a code not asked for counts
        finally:
            await store.close()
            await raw.aclose()

    asyncio.run(main())


async def _stored_rows_by_expiry_day(raw: Redis) -> dict[int, int]:
    """What the count should say, read from the patients' hashes themselves."""
    by_day: dict[int, int] = {}
    async for key in raw.scan_iter(match="cds:r:*"):
        for packed in (await raw.hgetall(key)).values():
            day = _expiry_s(packed) // 86_400
            by_day[day] = by_day.get(day, 0) + 1
    return by_day


async def _counted_by_expiry_day(raw: Redis) -> dict[int, int]:
    buckets = await raw.hgetall("cds:n")
    return {int(day): int(n) for day, n in buckets.items() if int(n)}


def test_the_count_matches_the_stored_rows_when_a_batch_repeats_a_result(redis_server):
    """One PutResults batch may carry a result twice (a correction right behind the
    original) and a withdrawal may name a result twice; the count, per expiry day, must
    still be the rows Redis holds, whichever version of a repeated result is kept."""

    async def scenario(raw: Redis, clock: FakeClock, store: RedisResultStore) -> None:
        now = clock.now_us

        def day(n: int) -> int:
            return now + n * US_PER_DAY

        async def count_matches_redis() -> None:
            stored = await _stored_rows_by_expiry_day(raw)
            assert await _counted_by_expiry_day(raw) == stored

            async def settled() -> bool:
                return store.cached_count() == sum(stored.values())

            await eventually(settled)

        # a new result twice in one batch; "kept" was stored before and comes twice
        # again, the later copy expiring on another day
        await store.put_many([row("p", "kept", reported_at_us=1, expires_at_us=day(3))])
        await store.put_many(
            [
                row("p", "new", reported_at_us=2, expires_at_us=day(1)),
                row("p", "new", reported_at_us=3, expires_at_us=day(2)),
                row("p", "kept", reported_at_us=4, expires_at_us=day(4)),
                row("p", "kept", "NA", reported_at_us=5, expires_at_us=day(5)),
            ]
        )
        assert ids(await store.get_patient("p")) == {"K": ["new"], "NA": ["kept"]}
        await count_matches_redis()

        # a repeated result that the bound per item (2) then trims
        await store.put_many(
            [
                row("q", "q1", reported_at_us=10, expires_at_us=day(1)),
                row("q", "q2", reported_at_us=20, expires_at_us=day(1)),
                row("q", "old", reported_at_us=1, expires_at_us=day(2)),
                row("q", "old", reported_at_us=2, expires_at_us=day(3)),
            ]
        )
        assert ids(await store.get_patient("q")) == {"K": ["q2", "q1"]}
        await count_matches_redis()

        # stored, then in one batch live and then already expired: the batch's last word
        # (expired) holds, as in the in-process store
        await store.put_many([row("s", "x", reported_at_us=1, expires_at_us=day(1))])
        await store.put_many(
            [
                row("s", "x", reported_at_us=2, expires_at_us=day(2)),
                row("s", "x", reported_at_us=3, expires_at_us=now),
            ]
        )
        assert dict(await store.get_patient("s")) == {}
        await count_matches_redis()

        # a withdrawal naming one result twice withdraws, and uncounts, one row
        assert await store.withdraw_many([("p", "new"), ("p", "new"), ("q", "q1")]) == 2
        assert ids(await store.get_patient("p")) == {"NA": ["kept"]}
        await count_matches_redis()

    run(redis_server, scenario, max_results_per_item=2, count_refresh_s=0.01)
