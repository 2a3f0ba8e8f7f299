"""Which result store ``cds serve --results`` names: in-process by default, else Redis.

The URL is checked here, before anything listens, so a typo fails the start with a
message instead of degrading every check later.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from cds.results.base import ResultStore
from cds.results.memory import MemoryResultStore

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")


def check_results_url(url: str) -> None:
    """Raise ValueError (fit for the operator) unless ``url`` names a Redis we can use."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"--results {url!r}: expected redis://HOST:PORT/DB, rediss://…, unix://PATH "
            "or redis+cluster://HOST:PORT"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"--results {url!r}: no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"--results {url!r}: {e}") from None


def open_store(url: str | None, *, max_results: int) -> ResultStore:
    """The configured store; ``None`` is the embedded in-process store."""
    if url is None:
        return MemoryResultStore(max_results=max_results)
    check_results_url(url)
    from cds.results.redis_store import RedisResultStore

    return RedisResultStore(url)
