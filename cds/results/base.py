"""The one interface every result store implements (in-process now, Redis next).

The store knows nothing of the catalogue: the caller computes each row's expiry from
the active snapshot (``reported_at + snapshot.retention_us(item_code)``), so a store
only has to keep a row until that instant and forget it after. The engine still
checks every window itself; expiry is about memory, not about correctness.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, Protocol

from cds.domain import StoredResult

# item_code -> that patient's results of the code, newest ``reported_at`` first.
PatientResults = Mapping[str, Sequence[StoredResult]]

EMPTY_RESULTS: PatientResults = {}


class StoredRow(NamedTuple):
    patient_id: str
    result: StoredResult
    expires_at_us: int  # the store may drop the row at or after this instant


class ResultsUnavailable(Exception):
    """The store cannot be consulted now; checks degrade, writes ask the feed to retry."""


class ResultStore(Protocol):
    async def get_patient(
        self, patient_id: str, codes: Collection[str] | None = None
    ) -> PatientResults:
        """The patient's live results by item code; an unknown patient gives an empty map.

        ``codes``: the item codes the caller will look up (a check: its ordered codes),
        so a store need not decode rows of any other; the map then holds at least those
        codes' results (a store may return more). A read is a use of the patient (the
        LRU order) whatever ``codes`` is, and expiry applies to every row alike.
        None: every code (the catalogue-impact replay, which judges several orders of
        one patient on one read).
        """
        ...

    async def put_many(self, rows: Sequence[StoredRow]) -> None:
        """Upsert by (patient_id, result_id); an already-expired row is simply not kept."""
        ...

    async def withdraw_many(self, refs: Sequence[tuple[str, str]]) -> int:
        """Remove (patient_id, result_id) pairs; returns how many were present."""
        ...

    def cached_count(self) -> int:
        """Results held (for ``cds_results_cached``); may be approximate for shared stores."""
        ...

    async def close(self) -> None: ...
