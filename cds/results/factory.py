"""Which result store ``cds serve --results`` names: in-process by default, else Redis.

The URL is checked before anything listens (by :func:`check_results_url`, whose rules
are :mod:`cds.results.redis_connection`'s), so a typo fails the start with a message
instead of degrading every check later. Redis modules load only when a URL is given.
"""

from __future__ import annotations

from cds.config import DEFAULT_MAX_RESULTS_PER_ITEM, results_url_problem
from cds.results.base import ResultStore
from cds.results.memory import MemoryResultStore


def check_results_url(url: str) -> None:
    """Raise ValueError (fit for the operator) unless ``url`` names a Redis we can use."""
    problem = results_url_problem(url)
    if problem:
        raise ValueError(problem)


def open_store(
    url: str | None, *, max_results: int, max_results_per_item: int = DEFAULT_MAX_RESULTS_PER_ITEM
) -> ResultStore:
    """The configured store; ``None`` is the embedded in-process store."""
    if url is None:
        return MemoryResultStore(max_results=max_results, max_results_per_item=max_results_per_item)
    from cds.results.redis_store import RedisResultStore

    # its connections refuse a URL they cannot use
    return RedisResultStore(url, max_results_per_item=max_results_per_item)
