"""OrderCheckService: Check (the hot path) and SubmitFeedback.

Check reads the active catalogue reference once, so a reload during the call cannot
mix versions, and it never fails the order screen because of the results store: if
the store cannot answer, the order is judged on the catalogue rules alone and the
response says ``degraded: RESULTS_UNAVAILABLE``. The allow path does no logging and no
formatting beyond the decision id; metric children are resolved at construction.
"""

from __future__ import annotations

import logging
import time

import grpc

from cds.config import DEFAULT_DEADLINE_CAP_SECONDS
from cds.decisions.log import DecisionEntry
from cds.decisions.memory import (
    DecisionIds,
    DecisionMemory,
    FeedbackKey,
    find_line,
    offered_overrides,
)
from cds.decisions.recorder import DecisionRecorder, FeedbackRecord
from cds.domain import RESULTS_UNAVAILABLE, Decision, FeedbackOutcome, new_tuple
from cds.metrics import Metrics
from cds.results.base import EMPTY_RESULTS, ResultStore, ResultsUnavailable
from cds.rollout.state import CatalogState
from cds.service.convert import ResponseBuilder, checked_order
from cds.service.rpc import RpcFailure, deadline_cap, invalid_argument
from cds.service.validation import FEEDBACK, InvalidRequest
from cds.v1 import order_check_pb2

log = logging.getLogger(__name__)

_DEGRADED_RESULTS = (RESULTS_UNAVAILABLE,)
_NOT_DEGRADED: tuple[str, ...] = ()
_ALLOW = Decision.ALLOW
_EMPTY_FEEDBACK_RESPONSE = order_check_pb2.SubmitFeedbackResponse()


class OrderCheck:
    def __init__(
        self,
        state: CatalogState,
        store: ResultStore,
        memory: DecisionMemory,
        metrics: Metrics,
        recorder: DecisionRecorder,
        ids: DecisionIds | None = None,
        *,
        deadline_cap_s: float = DEFAULT_DEADLINE_CAP_SECONDS,
    ) -> None:
        self._state = state
        self._cap_s = deadline_cap_s  # feedback's wait for the decision log, not Check
        self._store = store
        self._memory = memory
        self._recorder = recorder
        self._ids = ids or DecisionIds()
        self._builder = ResponseBuilder()
        self._metrics = metrics
        self._item_counters = metrics.item_decisions
        self._reason_counters = metrics.reasons

    async def check(
        self, request: order_check_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> order_check_pb2.CheckResponse:
        now_us = time.time_ns() // 1000
        try:
            order = checked_order(request, now_us)
        except InvalidRequest as e:
            raise invalid_argument(str(e)) from None
        active = self._state.active  # read once: this call sees one catalogue to its end
        # No per-call asyncio.timeout here: the in-process store never suspends, and a
        # store that can stall (Redis) bounds its own calls and raises one of these.
        try:
            results = await self._store.get_patient(order.patient_id)
            degraded = _NOT_DEGRADED
        except (ResultsUnavailable, TimeoutError):
            results = EMPTY_RESULTS
            degraded = _DEGRADED_RESULTS
            self._metrics.degraded_results.inc()
        evaluation = active.engine.evaluate(order, results)
        decision_id = self._ids()
        version = active.version
        self._memory.remember(decision_id, order, evaluation, version)
        item_counters = self._item_counters
        reason_counters = self._reason_counters
        for item in evaluation.items:
            item_counters[item.decision].inc()
            for reason in item.reasons:
                reason_counters[reason.code].inc()
        if evaluation.decision > _ALLOW:
            self._recorder.decision(
                new_tuple(
                    DecisionEntry, (decision_id, order, evaluation, version, degraded, now_us)
                )
            )
        return self._builder.response(decision_id, version, evaluation, degraded)

    async def submit_feedback(
        self, request: order_check_pb2.SubmitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> order_check_pb2.SubmitFeedbackResponse:
        decision_id = request.decision_id
        line_id = request.line_id
        override_code = request.override_code
        comment = request.comment
        clinician_id = request.clinician_id
        error = FEEDBACK.error((decision_id, line_id, override_code, clinician_id, comment))
        if error is not None:
            raise invalid_argument(error)
        try:
            remembered = await self._memory.lookup(decision_id)
        except ResultsUnavailable as e:
            raise RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "decisions store unavailable; retry"
            ) from e
        if remembered is None:
            raise RpcFailure(
                grpc.StatusCode.NOT_FOUND, "decision_id: unknown or no longer remembered"
            )
        line = find_line(remembered, line_id)
        if line is None:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, "line_id: not a line of this decision")
        outcome = int(request.outcome)  # an unknown number from a newer client stays an int
        if outcome == FeedbackOutcome.OVERRIDDEN:
            options = offered_overrides(line)
            if not options:
                raise RpcFailure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "line_id: none of this line's reasons can be overridden",
                )
            if not override_code:
                raise invalid_argument("override_code: required when outcome is OVERRIDDEN")
            option = options.get(override_code)
            if option is None:
                raise invalid_argument(
                    "override_code: not one of the offered override reasons ("
                    + ", ".join(options)
                    + ")"
                )
            if option.requires_comment and not comment.strip():
                raise invalid_argument(f"comment: required for override reason {option.code}")
        elif outcome != FeedbackOutcome.ACCEPTED:
            raise invalid_argument("outcome: must be ACCEPTED or OVERRIDDEN")
        key = FeedbackKey(outcome, override_code, comment, clinician_id)
        if self._memory.already_recorded(decision_id, line_id, key):
            return _EMPTY_FEEDBACK_RESPONSE
        self._memory.mark_recorded(decision_id, line_id, key)
        record = FeedbackRecord(
            decision_id,
            line_id,
            FeedbackOutcome(outcome),
            override_code,
            comment,
            # Without a clinician on the feedback, it is the ordering clinician's.
            clinician_id or remembered.clinician_id,
            time.time_ns() // 1000,
            remembered,
            line,
        )
        try:
            async with deadline_cap(context, self._cap_s):
                await self._recorder.feedback(record)
        except Exception as e:
            log.warning("feedback not recorded: %s: %s", type(e).__name__, e)
            self._memory.forget_recorded(decision_id, line_id)
            raise RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "feedback could not be recorded; retry"
            ) from e
        if outcome == FeedbackOutcome.ACCEPTED:
            self._metrics.feedback_accepted.inc()
        else:
            self._metrics.feedback_overridden.inc()
        return _EMPTY_FEEDBACK_RESPONSE
