"""The pipelined connection against a real redis-server: every reply reaches its own
caller, whatever times out, fails or is cancelled around it, and faults heal by themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from cds.results.base import ResultsUnavailable
from cds.results.redis_wire import ConnectionLost, PipelinedRedis, ReadTimeout, pack, supports
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401

pytestmark = pytest.mark.redis


def run(
    url: str,
    scenario: Callable[[Redis, PipelinedRedis], Awaitable[None]],
    *,
    timeout_s: float = 0.05,
    stall_s: float | None = None,
) -> None:
    async def main() -> None:
        pipe = PipelinedRedis(url, connect_timeout_s=0.5, timeout_s=timeout_s, stall_s=stall_s)
        raw = Redis.from_url(url)
        try:
            await scenario(raw, pipe)
        finally:
            await pipe.aclose()
            await raw.aclose()

    asyncio.run(main())


async def clients(raw: Redis) -> int:
    return len(await raw.client_list())


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://user:secret@10.0.0.5:6380/3", True),
        ("unix:///run/redis.sock?db=2", True),
        ("rediss://10.0.0.5:6380/0", False),  # TLS stays with redis-py
        ("redis://127.0.0.1:6379/0?socket_keepalive=true", False),  # options redis-py honours
        ("redis+cluster://127.0.0.1:7000", False),
    ],
)
def test_plain_and_unix_urls_are_served_and_the_rest_left_to_redis_py(url, ok):
    assert supports(url) is ok


def test_concurrent_commands_share_one_connection_and_each_gets_its_own_reply(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        for i in range(300):
            await raw.hset(f"h{i}", mapping={"i": str(i), "sq": str(i * i)})
        before = await clients(raw)
        replies = await asyncio.gather(*(pipe.hgetall(f"h{i}") for i in range(300)))
        assert replies == [{b"i": str(i).encode(), b"sq": str(i * i).encode()} for i in range(300)]
        assert await pipe.hgetall("absent") == {}
        assert await clients(raw) == before + 1

    run(redis_server.url, scenario)


def test_an_error_reply_fails_only_its_own_command(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await raw.set("s", "a string")
        await raw.hset("h", "f", "v")
        results = await asyncio.gather(
            pipe.hgetall("h"), pipe.hgetall("s"), pipe.hgetall("h"), return_exceptions=True
        )
        assert results[0] == results[2] == {b"f": b"v"}
        assert isinstance(results[1], ResultsUnavailable) and "WRONGTYPE" in str(results[1])

    run(redis_server.url, scenario)


def test_after_a_stall_late_replies_are_dropped_not_handed_to_later_commands(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await raw.hset("a", "who", "a")
        await raw.hset("b", "who", "b")
        assert await pipe.hgetall("a") == {b"who": b"a"}  # connected
        redis_server.pause()
        try:
            with pytest.raises(ReadTimeout):
                await pipe.hgetall("a")
        finally:
            redis_server.resume()
        # Redis now answers the timed-out HGETALL a first: it must not reach this caller.
        assert await pipe.hgetall("b") == {b"who": b"b"}

    run(redis_server.url, scenario, stall_s=30.0)


def test_each_command_times_out_on_its_own_deadline_while_earlier_ones_wait_unanswered(
    redis_server,
):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await pipe.call(pack("PING"))
        redis_server.pause()
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(ReadTimeout):
                    await pipe.call(pack("PING"))
                # Generous bound: far below stall_s, the only other thing that would end it.
                assert time.monotonic() - started < 5.0
        finally:
            redis_server.resume()

    run(redis_server.url, scenario, stall_s=30.0)


def test_a_connection_stalled_too_long_is_replaced(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await pipe.call(pack("CLIENT", "SETNAME", "first"))
        redis_server.pause()
        try:
            with pytest.raises(ReadTimeout):
                await pipe.call(pack("PING"))
            await asyncio.sleep(0.3)  # > stall_s: the watchdog drops the connection
        finally:
            redis_server.resume()
        assert await pipe.call(pack("CLIENT", "GETNAME")) is None  # a new connection

    run(redis_server.url, scenario, stall_s=0.1)


def test_a_connection_redis_closed_is_replaced_without_failing_the_call(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await raw.hset("h", "f", "v")
        await pipe.call(pack("CLIENT", "SETNAME", "doomed"))
        await raw.client_kill_filter(_type="normal", skipme=True)
        assert await pipe.hgetall("h") == {b"f": b"v"}
        assert await pipe.call(pack("CLIENT", "GETNAME")) is None

    run(redis_server.url, scenario)


def test_a_dead_redis_fails_fast_and_a_restarted_one_just_works(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await pipe.call(pack("PING"))
        redis_server.stop()
        with pytest.raises(ConnectionLost):
            await pipe.call(pack("PING"))
        with pytest.raises(ConnectionLost):
            await pipe.call_many([pack("PING"), pack("PING")])
        redis_server.start()
        assert await pipe.call_many([pack("SET", "k", "v"), pack("GET", "k")]) == [b"OK", b"v"]

    run(redis_server.url, scenario)


def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(redis_server):
    async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
        await raw.set("k", "v")
        slow = asyncio.ensure_future(pipe.call(pack("BLPOP", "nothing", "0.2")))
        await asyncio.sleep(0.01)
        slow.cancel()
        assert await pipe.call(pack("GET", "k")) == b"v"  # queued behind BLPOP's reply

    run(redis_server.url, scenario, timeout_s=2.0)


def test_the_urls_password_and_database_are_used(tmp_path: Path):
    import redis

    server = RedisServer(tmp_path)
    server.start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"

        async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
            await raw.hset("h", "db", "3")
            assert await pipe.hgetall("h") == {b"db": b"3"}
            assert await pipe.call(pack("CLIENT", "INFO")) is not None

        run(url, scenario)

        async def wrong_password(raw: Redis, pipe: PipelinedRedis) -> None:
            with pytest.raises(ConnectionLost):
                await pipe.call(pack("PING"))

        run(f"redis://:wrong@127.0.0.1:{server.port}/3", wrong_password)
    finally:
        server.stop()


def test_a_unix_socket_url_is_served(tmp_path: Path):
    server = RedisServer(tmp_path)
    socket_path = tmp_path / "redis.sock"
    server.start(extra=["--unixsocket", str(socket_path)])
    try:

        async def scenario(raw: Redis, pipe: PipelinedRedis) -> None:
            await raw.hset("h", "f", "v")
            assert await pipe.hgetall("h") == {b"f": b"v"}

        run(f"unix://{socket_path}?db=1", scenario)
    finally:
        server.stop()
