"""CatalogAdminService: hot reload and status, onto :class:`cds.rollout.state.CatalogState`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from cds.catalog.load import CatalogError
from cds.rollout.state import CatalogState, ReloadOutcome, errors_message
from cds.service.convert import us_timestamp
from cds.service.rpc import RpcFailure
from cds.v1 import catalog_admin_pb2

Reloader = Callable[[bool], Awaitable[ReloadOutcome]]


class CatalogAdmin:
    def __init__(self, state: CatalogState, reload: Reloader | None = None) -> None:
        """``reload(dry_run)`` defaults to this process's state; a worker of several
        passes one that has the parent reload every worker (cds.runtime.worker)."""
        self._state = state
        self._reload: Reloader = reload or (lambda dry_run: state.reload(dry_run=dry_run))

    async def reload_catalog(
        self, request: catalog_admin_pb2.ReloadCatalogRequest, context: grpc.aio.ServicerContext
    ) -> catalog_admin_pb2.ReloadCatalogResponse:
        dry_run = request.dry_run
        try:
            outcome = await self._reload(dry_run)
        except CatalogError as refused:
            raise RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION, errors_message(refused.errors)
            ) from refused
        return catalog_admin_pb2.ReloadCatalogResponse(
            activated=outcome.activated,
            version=outcome.version,
            previous_version=outcome.previous_version,
            changes=outcome.changes,
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
