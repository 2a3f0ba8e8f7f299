import datetime

from cds.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequest(_message.Message):
    __slots__ = ("request_id", "institution_id", "department_id", "clinician_id", "encounter_type", "patient", "items", "order_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLINICIAN_ID_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_TYPE_FIELD_NUMBER: _ClassVar[int]
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ORDER_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    institution_id: str
    department_id: str
    clinician_id: str
    encounter_type: _types_pb2.EncounterType
    patient: _types_pb2.Patient
    items: _containers.RepeatedCompositeFieldContainer[_types_pb2.OrderItem]
    order_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., institution_id: _Optional[str] = ..., department_id: _Optional[str] = ..., clinician_id: _Optional[str] = ..., encounter_type: _Optional[_Union[_types_pb2.EncounterType, str]] = ..., patient: _Optional[_Union[_types_pb2.Patient, _Mapping]] = ..., items: _Optional[_Iterable[_Union[_types_pb2.OrderItem, _Mapping]]] = ..., order_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("decision_id", "decision", "items", "catalog_version", "degraded")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    decision: _types_pb2.Decision
    items: _containers.RepeatedCompositeFieldContainer[_types_pb2.ItemDecision]
    catalog_version: str
    degraded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision_id: _Optional[str] = ..., decision: _Optional[_Union[_types_pb2.Decision, str]] = ..., items: _Optional[_Iterable[_Union[_types_pb2.ItemDecision, _Mapping]]] = ..., catalog_version: _Optional[str] = ..., degraded: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("decision_id", "line_id", "outcome", "override_code", "comment", "clinician_id")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_CODE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CLINICIAN_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    line_id: str
    outcome: _types_pb2.FeedbackOutcome
    override_code: str
    comment: str
    clinician_id: str
    def __init__(self, decision_id: _Optional[str] = ..., line_id: _Optional[str] = ..., outcome: _Optional[_Union[_types_pb2.FeedbackOutcome, str]] = ..., override_code: _Optional[str] = ..., comment: _Optional[str] = ..., clinician_id: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
