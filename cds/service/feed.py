"""ResultFeedService: the results feed upserts and withdraws results.

A batch is never failed for its bad rows: each valid row is stored, each invalid one is
counted and explained (``results[i].<field>: ...``, the first 100). Expiry comes from
the catalogue active at the time of the put; a valid row already past it is counted in
``expired``, not ``accepted`` (it is not kept), and is not an error: the feed has
nothing to fix or retry, so it gets no ``errors`` line, which would also crowd out the
rejections that do need fixing from the 100 listed. If the store cannot take the batch the
feed gets ``UNAVAILABLE`` and retries; nothing is acknowledged that was not stored.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from cds.config import DEFAULT_DEADLINE_CAP_SECONDS
from cds.metrics import Metrics
from cds.orders.validation import RESULTS, WITHDRAWALS
from cds.results.base import ResultStore, ResultsUnavailable
from cds.rollout.state import CatalogState
from cds.service.convert import refs_from_withdraw, rows_from_results
from cds.service.rpc import RpcFailure, deadline_cap, invalid_argument
from cds.v1 import result_feed_pb2

_UNAVAILABLE = "results store unavailable; retry the batch"
_CAPPED = "the results store did not answer within the server's deadline cap; retry the batch"


class ResultFeed:
    def __init__(
        self,
        state: CatalogState,
        store: ResultStore,
        metrics: Metrics,
        *,
        deadline_cap_s: float = DEFAULT_DEADLINE_CAP_SECONDS,
    ) -> None:
        self._state = state
        self._store = store
        self._cap_s = deadline_cap_s
        self._ingested = metrics.results_ingested
        self._rejected = metrics.results_rejected
        self._expired = metrics.results_expired

    async def put_results(
        self, request: result_feed_pb2.PutResultsRequest, context: grpc.aio.ServicerContext
    ) -> result_feed_pb2.PutResultsResponse:
        error = RESULTS.error(len(request.results))
        if error is not None:
            raise invalid_argument(error)
        snapshot = self._state.active.snapshot
        rows, errors, rejected, expired = rows_from_results(
            request.results, time.time_ns() // 1000, snapshot.retention_us
        )
        accepted = len(rows) - expired
        if rows:
            # Expired rows go to the store too: each removes a stored row of its key.
            cap = deadline_cap(context, self._cap_s)
            try:
                async with cap:
                    await self._store.put_many(rows)
            except (ResultsUnavailable, TimeoutError) as e:
                raise _store_failure(cap) from e
            if accepted:
                self._ingested.inc(accepted)
            if expired:
                self._expired.inc(expired)
        if rejected:
            self._rejected.inc(rejected)
        return result_feed_pb2.PutResultsResponse(
            accepted=accepted, rejected=rejected, errors=errors, expired=expired
        )

    async def withdraw_results(
        self, request: result_feed_pb2.WithdrawResultsRequest, context: grpc.aio.ServicerContext
    ) -> result_feed_pb2.WithdrawResultsResponse:
        error = WITHDRAWALS.error(len(request.results))
        if error is not None:
            raise invalid_argument(error)
        refs = refs_from_withdraw(request)
        withdrawn = 0
        if refs:
            cap = deadline_cap(context, self._cap_s)
            try:
                async with cap:
                    withdrawn = await self._store.withdraw_many(refs)
            except (ResultsUnavailable, TimeoutError) as e:
                raise _store_failure(cap) from e
        return result_feed_pb2.WithdrawResultsResponse(withdrawn=withdrawn)


def _store_failure(cap: asyncio.Timeout) -> RpcFailure:
    # Both mean "retry"; the code tells the operator which limit was hit.
    if cap.expired():
        return RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, _CAPPED)
    return RpcFailure(grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE)
