"""OrderCheckService: Check (the hot path) and SubmitFeedback, onto :mod:`cds.orders`.

Only the gRPC half lives here: the request is checked and converted, the order checker
or the feedback desk decides, and the answer is built from prebuilt pieces.
"""

from __future__ import annotations

import time

import grpc

from cds.config import DEFAULT_DEADLINE_CAP_SECONDS
from cds.orders.checker import OrderChecker
from cds.orders.feedback import Feedback, FeedbackDesk, FeedbackRefused, Refusal
from cds.orders.validation import FEEDBACK, InvalidRequest
from cds.service.convert import ResponseBuilder, checked_order
from cds.service.rpc import RpcFailure, capped_timeout, invalid_argument
from cds.v1 import order_check_pb2

_EMPTY_FEEDBACK_RESPONSE = order_check_pb2.SubmitFeedbackResponse()
_STATUS = {
    Refusal.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Refusal.NOT_APPLICABLE: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


class OrderCheck:
    def __init__(
        self,
        checker: OrderChecker,
        desk: FeedbackDesk,
        *,
        deadline_cap_s: float = DEFAULT_DEADLINE_CAP_SECONDS,
    ) -> None:
        self._checker = checker
        self._desk = desk
        self._cap_s = deadline_cap_s  # feedback's wait for the decision log, not Check
        self._builder = ResponseBuilder()

    async def check(
        self, request: order_check_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> order_check_pb2.CheckResponse:
        now_us = time.time_ns() // 1000
        try:
            order = checked_order(request, now_us)
        except InvalidRequest as e:
            raise invalid_argument(str(e)) from None
        checked = await self._checker.check(order, now_us)
        return self._builder.response(*checked)

    async def submit_feedback(
        self, request: order_check_pb2.SubmitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> order_check_pb2.SubmitFeedbackResponse:
        strings = (
            request.decision_id,
            request.line_id,
            request.override_code,
            request.clinician_id,
            request.comment,
        )
        error = FEEDBACK.error(strings)
        if error is not None:
            raise invalid_argument(error)
        decision_id, line_id, override_code, clinician_id, comment = strings
        feedback = Feedback(
            decision_id, line_id, int(request.outcome), override_code, comment, clinician_id
        )
        try:
            await self._desk.submit(feedback, capped_timeout(context.time_remaining(), self._cap_s))
        except FeedbackRefused as refused:
            raise RpcFailure(_STATUS[refused.kind], refused.message) from refused
        return _EMPTY_FEEDBACK_RESPONSE
