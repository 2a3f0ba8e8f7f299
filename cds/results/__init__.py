"""Result stores: where the patient's recent results are cached for the rules to read."""

from cds.results.base import (
    EMPTY_RESULTS,
    PatientResults,
    ResultStore,
    ResultsUnavailable,
    StoredRow,
)
from cds.results.memory import MemoryResultStore
from cds.results.redis_store import RedisResultStore

__all__ = [
    "EMPTY_RESULTS",
    "MemoryResultStore",
    "PatientResults",
    "RedisResultStore",
    "ResultStore",
    "ResultsUnavailable",
    "StoredRow",
]
