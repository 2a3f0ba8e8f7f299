"""Result stores: where the patient's recent results are cached for the rules to read."""

from cds.results.base import (
    EMPTY_RESULTS,
    PatientResults,
    ResultStore,
    ResultsUnavailable,
    StoredRow,
)

__all__ = ["EMPTY_RESULTS", "PatientResults", "ResultStore", "ResultsUnavailable", "StoredRow"]
