"""Builders shared by the result-store tests: a settable clock, rows, and a loop runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cds.domain import US_PER_SECOND, StoredResult
from cds.results.base import StoredRow

T = TypeVar("T")


class FakeClock:
    """Seconds since the epoch, moved only by the test. Starts at a whole second near the
    real time, so a Redis key TTL derived from a row's expiry lies in the real future."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    @property
    def now_us(self) -> int:
        return int(self.now) * US_PER_SECOND

    def advance(self, seconds: float) -> None:
        self.now += seconds


def row(
    patient_id: str,
    result_id: str,
    item_code: str = "K",
    *,
    reported_at_us: int,
    expires_at_us: int,
    institution_id: str = "H1",
    mark: bool = True,
) -> StoredRow:
    return StoredRow(
        patient_id,
        StoredResult(result_id, item_code, institution_id, reported_at_us, mark),
        expires_at_us,
    )


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 3.0) -> T:
    """Poll ``check`` until it returns a truthy value (returned) or the time is up (raises)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout_s}s")
        await asyncio.sleep(0.01)
