"""Builders for wire requests, so tests state only what they are about."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from cds.v1 import order_check_pb2, types_pb2


def ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def item(line_id: str = "1", item_code: str = "K", **fields: Any) -> types_pb2.OrderItem:
    return types_pb2.OrderItem(line_id=line_id, item_code=item_code, **fields)


def check_request(
    *items: types_pb2.OrderItem,
    patient_id: str = "P1",
    institution_id: str = "H1",
    diagnosis_codes: tuple[str, ...] = (),
    order_time_us: int | None = None,
    **fields: Any,
) -> order_check_pb2.CheckRequest:
    request = order_check_pb2.CheckRequest(
        institution_id=institution_id,
        patient=types_pb2.Patient(patient_id=patient_id, diagnosis_codes=diagnosis_codes),
        items=list(items) or [item()],
        **fields,
    )
    if order_time_us is not None:
        request.order_time.CopyFrom(ts(order_time_us))
    return request


def result(
    result_id: str = "R1",
    patient_id: str = "P1",
    item_code: str = "K",
    institution_id: str = "H1",
    reported_at_us: int | None = 1_700_000_000_000_000,
    recognition_mark: bool = True,
) -> types_pb2.Result:
    r = types_pb2.Result(
        result_id=result_id,
        patient_id=patient_id,
        item_code=item_code,
        institution_id=institution_id,
        recognition_mark=recognition_mark,
    )
    if reported_at_us is not None:
        r.reported_at.CopyFrom(ts(reported_at_us))
    return r


DAY_US = 86_400_000_000


def now_us() -> int:
    import time

    return time.time_ns() // 1000
