"""Decisions shared through a real redis-server: what is kept, for how long, and faults."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from cds.decisions.memory import find_line, offered_overrides
from cds.decisions.shared import SharedDecisionMemory, decode, encode
from cds.domain import (
    Decision,
    EncounterType,
    Evaluation,
    ItemCategory,
    ItemDecision,
    Order,
    OrderItem,
    OverrideOption,
    Reason,
)
from cds.metrics import Metrics
from cds.results.base import ResultsUnavailable
from tests.support.redis_server import redis_server_fixture  # noqa: F401
from tests.support.stores import eventually

pytestmark = pytest.mark.redis

ORDER = Order("req", "H1", "D1", "C1", EncounterType.OUTPATIENT, "P1", (), False, "",
              (OrderItem("1", "K", ItemCategory.LAB, "", "", False),), 0)  # fmt: skip
WARNED = Evaluation(
    Decision.WARN,
    (
        ItemDecision(
            "1",
            "K",
            Decision.WARN,
            (
                Reason(
                    "RECOGNIZABLE_RESULT_EXISTS",
                    Decision.WARN,
                    "已有可互认结果",
                    (),
                    (
                        OverrideOption("CHANGED", "病情变化", False),
                        OverrideOption("OTHER", "其他", True),
                    ),
                ),
            ),
        ),
        ItemDecision("2", "NA", Decision.ALLOW, ()),
    ),
)
ALLOWED = Evaluation(Decision.ALLOW, (ItemDecision("1", "K", Decision.ALLOW, ()),))


def test_the_record_keeps_what_feedback_needs():
    from cds.decisions.memory import Remembered

    back = decode(encode(Remembered("P1", "C1", "H1", "D1", "v7", WARNED)))
    assert back[:5] == ("P1", "C1", "H1", "D1", "v7")
    line = find_line(back, "1")
    assert line is not None and line.decision == Decision.WARN
    assert [r.code for r in line.reasons] == ["RECOGNIZABLE_RESULT_EXISTS"]
    assert {c: o.requires_comment for c, o in offered_overrides(line).items()} == {
        "CHANGED": False,
        "OTHER": True,
    }
    assert find_line(back, "2") is not None


def test_a_record_an_earlier_release_wrote_to_redis_is_still_read():
    """A rolling upgrade: the previous release's nested record, without prior ids."""
    earlier = (
        b'["P1","C1","H1","D1","v6",2,[["1","K",2,[["RECOGNIZABLE_RESULT_EXISTS",2,'
        b'[["CHANGED",false],["OTHER",true]]]]],["2","NA",1,[]]]]'
    )
    back = decode(earlier)
    assert back[:5] == ("P1", "C1", "H1", "D1", "v6")
    line = find_line(back, "1")
    assert line is not None and line.decision == Decision.WARN
    assert [(r.code, r.prior_results) for r in line.reasons] == [("RECOGNIZABLE_RESULT_EXISTS", ())]
    assert {c: o.requires_comment for c, o in offered_overrides(line).items()} == {
        "CHANGED": False,
        "OTHER": True,
    }
    assert find_line(back, "2") == ItemDecision("2", "NA", Decision.ALLOW, ())


def run(coro):
    return asyncio.run(coro)


def test_a_decision_with_reasons_is_found_by_another_process_and_expires(redis_server):
    async def scenario():
        writer = SharedDecisionMemory(redis_server.url, ttl_seconds=3600)
        reader = SharedDecisionMemory(redis_server.url, ttl_seconds=3600)
        raw = Redis.from_url(redis_server.url)
        await writer.start()
        try:
            writer.remember("d-1", ORDER, WARNED, "v1")
            found = await eventually(lambda: reader.lookup("d-1"))
            ttl_ms = await raw.pttl("cds:d:d-1")
            return found, ttl_ms
        finally:
            await writer.close()
            await reader.close()
            await raw.aclose()

    found, ttl_ms = run(scenario())
    assert found.catalog_version == "v1" and found.patient_id == "P1"
    assert 3_500_000 < ttl_ms <= 3_600_000


def test_an_answer_without_reasons_stays_local(redis_server):
    async def scenario():
        writer = SharedDecisionMemory(redis_server.url)
        reader = SharedDecisionMemory(redis_server.url)
        await writer.start()
        try:
            writer.remember("d-allow", ORDER, ALLOWED, "v1")
            writer.remember("d-warn", ORDER, WARNED, "v1")
            await eventually(lambda: reader.lookup("d-warn"))  # written after d-allow
            return await writer.lookup("d-allow"), await reader.lookup("d-allow")
        finally:
            await writer.close()
            await reader.close()

    local, shared = run(scenario())
    assert local is not None and shared is None


def test_with_redis_down_a_local_decision_is_found_and_a_remote_one_is_unavailable(redis_server):
    async def scenario():
        memory = SharedDecisionMemory(redis_server.url, timeout_s=0.1)
        await memory.start()
        try:
            memory.remember("d-local", ORDER, WARNED, "v1")
            redis_server.stop()
            local = await memory.lookup("d-local")
            with pytest.raises(ResultsUnavailable):
                await memory.lookup("d-elsewhere")
            return local
        finally:
            await memory.close()

    assert run(scenario()) is not None


def test_decisions_made_while_redis_is_down_are_counted_unshared_and_sharing_resumes(
    redis_server,
):
    async def scenario():
        writer = SharedDecisionMemory(redis_server.url, timeout_s=0.1)
        reader = SharedDecisionMemory(redis_server.url, timeout_s=0.1)
        await writer.start()
        try:
            writer.remember("d-before", ORDER, WARNED, "v1")
            await eventually(lambda: reader.lookup("d-before"))
            redis_server.stop()
            writer.remember("d-down-1", ORDER, WARNED, "v1")
            writer.remember("d-down-2", ORDER, WARNED, "v1")

            async def both_counted():
                return writer.unshared == 2

            await eventually(both_counted)
            redis_server.start()
            writer.remember("d-after", ORDER, WARNED, "v1")
            return await eventually(lambda: reader.lookup("d-after"))
        finally:
            await writer.close()
            await reader.close()

    assert run(scenario()).catalog_version == "v1"


def test_decisions_that_could_not_be_shared_are_counted_in_the_metric(redis_server):
    metrics = Metrics()

    async def scenario():
        writer = SharedDecisionMemory(
            redis_server.url, timeout_s=0.1, on_unshared=metrics.decisions_unshared.inc
        )
        await writer.start()
        try:
            redis_server.stop()
            for i in range(3):
                writer.remember(f"d-down-{i}", ORDER, WARNED, "v1")
            writer.remember("d-allow", ORDER, ALLOWED, "v1")  # never shared: not counted

            async def all_counted():
                return metrics.registry.get_sample_value("cds_decisions_unshared_total") == 3

            await eventually(all_counted)
            return writer.unshared
        finally:
            await writer.close()

    assert run(scenario()) == 3


def test_close_writes_what_the_last_checks_remembered(redis_server):
    async def scenario():
        writer = SharedDecisionMemory(redis_server.url)
        reader = SharedDecisionMemory(redis_server.url)
        await writer.start()
        for i in range(50):
            writer.remember(f"d-{i}", ORDER, WARNED, "v1")
        await writer.close()  # before the loop ran the scheduled write
        try:
            return [await reader.lookup(f"d-{i}") for i in range(50)]
        finally:
            await reader.close()

    assert all(found is not None for found in run(scenario()))
