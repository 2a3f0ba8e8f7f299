"""CatalogAdminService: hot reload and status, onto :class:`cds.rollout.state.CatalogState`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from cds.catalog.load import CatalogError
from cds.rollout.impact import Impact
from cds.rollout.state import CatalogState, ReloadOutcome, errors_message
from cds.service.convert import us_timestamp
from cds.service.rpc import RpcFailure, invalid_argument
from cds.v1 import catalog_admin_pb2

# (dry_run, candidate bytes or None) -> the outcome.
Reloader = Callable[[bool, bytes | None], Awaitable[ReloadOutcome]]

# A candidate previewed is named so in errors and logs (its bytes have no path).
CANDIDATE_SOURCE = "candidate"
# Rows of ReloadCatalogResponse.impact: the biggest changes; lines_changed counts all.
MAX_IMPACT_ROWS = 1000
CANDIDATE_WITHOUT_DRY_RUN = (
    "candidate: only with dry_run; a candidate is previewed, never activated (put it at "
    "the server's --catalog path and reload to activate it)"
)


class CatalogAdmin:
    def __init__(self, state: CatalogState, reload: Reloader | None = None) -> None:
        """``reload(dry_run, candidate)`` defaults to this process's state; a worker of
        several passes one that has the parent reach every worker (cds.runtime.worker)."""
        self._state = state
        self._reload: Reloader = reload or self._reload_here

    async def _reload_here(self, dry_run: bool, candidate: bytes | None) -> ReloadOutcome:
        if candidate is None:
            return await self._state.reload(dry_run=dry_run)
        return await self._state.reload(dry_run=True, content=candidate, source=CANDIDATE_SOURCE)

    async def reload_catalog(
        self, request: catalog_admin_pb2.ReloadCatalogRequest, context: grpc.aio.ServicerContext
    ) -> catalog_admin_pb2.ReloadCatalogResponse:
        dry_run = request.dry_run
        candidate = request.candidate or None
        if candidate is not None and not dry_run:
            raise invalid_argument(CANDIDATE_WITHOUT_DRY_RUN)
        try:
            outcome = await self._reload(dry_run, candidate)
        except CatalogError as refused:
            raise RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION, errors_message(refused.errors)
            ) from refused
        return catalog_admin_pb2.ReloadCatalogResponse(
            activated=outcome.activated,
            version=outcome.version,
            previous_version=outcome.previous_version,
            changes=outcome.changes,
            impact=impact_proto(outcome.impact),
        )

    async def get_catalog_status(
        self,
        request: catalog_admin_pb2.GetCatalogStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> catalog_admin_pb2.GetCatalogStatusResponse:
        state = self._state
        active = state.active
        snapshot = active.snapshot
        response = catalog_admin_pb2.GetCatalogStatusResponse(
            version=active.version,
            loaded_at=us_timestamp(active.loaded_at_us),
            source=snapshot.source or state.path,
            last_error=state.last_error,
            recognition_items=len(snapshot.recognition_items),
            gene_tests=len(snapshot.gene_tests),
            effective_date=snapshot.effective_date,
        )
        if state.last_error_at_us:
            response.last_error_at.CopyFrom(us_timestamp(state.last_error_at_us))
        return response


def impact_proto(impact: Impact) -> catalog_admin_pb2.Impact:
    return catalog_admin_pb2.Impact(
        orders_replayed=impact.orders_replayed,
        lines_changed=impact.lines_changed,
        rows=[
            catalog_admin_pb2.ImpactRow(
                item_code=r.item_code,
                before=r.before,  # type: ignore[arg-type]  # domain enums carry the proto numbers
                after=r.after,  # type: ignore[arg-type]
                lines=r.lines,
                reasons_added=r.reasons_added,
                reasons_removed=r.reasons_removed,
            )
            for r in impact.rows[:MAX_IMPACT_ROWS]
        ],
    )
