import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_WARN: _ClassVar[Decision]
    DECISION_BLOCK: _ClassVar[Decision]

class EncounterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCOUNTER_TYPE_UNSPECIFIED: _ClassVar[EncounterType]
    ENCOUNTER_TYPE_OUTPATIENT: _ClassVar[EncounterType]
    ENCOUNTER_TYPE_INPATIENT: _ClassVar[EncounterType]
    ENCOUNTER_TYPE_EMERGENCY: _ClassVar[EncounterType]

class ItemCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_CATEGORY_UNSPECIFIED: _ClassVar[ItemCategory]
    ITEM_CATEGORY_LAB: _ClassVar[ItemCategory]
    ITEM_CATEGORY_EXAM: _ClassVar[ItemCategory]
    ITEM_CATEGORY_GENE_TEST: _ClassVar[ItemCategory]

class FeedbackOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_OUTCOME_UNSPECIFIED: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_ACCEPTED: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_OVERRIDDEN: _ClassVar[FeedbackOutcome]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_WARN: Decision
DECISION_BLOCK: Decision
ENCOUNTER_TYPE_UNSPECIFIED: EncounterType
ENCOUNTER_TYPE_OUTPATIENT: EncounterType
ENCOUNTER_TYPE_INPATIENT: EncounterType
ENCOUNTER_TYPE_EMERGENCY: EncounterType
ITEM_CATEGORY_UNSPECIFIED: ItemCategory
ITEM_CATEGORY_LAB: ItemCategory
ITEM_CATEGORY_EXAM: ItemCategory
ITEM_CATEGORY_GENE_TEST: ItemCategory
FEEDBACK_OUTCOME_UNSPECIFIED: FeedbackOutcome
FEEDBACK_OUTCOME_ACCEPTED: FeedbackOutcome
FEEDBACK_OUTCOME_OVERRIDDEN: FeedbackOutcome

class Patient(_message.Message):
    __slots__ = ("patient_id", "diagnosis_codes", "first_oncology_visit", "mdt_record_id")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSIS_CODES_FIELD_NUMBER: _ClassVar[int]
    FIRST_ONCOLOGY_VISIT_FIELD_NUMBER: _ClassVar[int]
    MDT_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    diagnosis_codes: _containers.RepeatedScalarFieldContainer[str]
    first_oncology_visit: bool
    mdt_record_id: str
    def __init__(self, patient_id: _Optional[str] = ..., diagnosis_codes: _Optional[_Iterable[str]] = ..., first_oncology_visit: _Optional[bool] = ..., mdt_record_id: _Optional[str] = ...) -> None: ...

class OrderItem(_message.Message):
    __slots__ = ("line_id", "item_code", "category", "price_item_code", "sendout_lab_id", "consent_signed")
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRICE_ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    SENDOUT_LAB_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_SIGNED_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    item_code: str
    category: ItemCategory
    price_item_code: str
    sendout_lab_id: str
    consent_signed: bool
    def __init__(self, line_id: _Optional[str] = ..., item_code: _Optional[str] = ..., category: _Optional[_Union[ItemCategory, str]] = ..., price_item_code: _Optional[str] = ..., sendout_lab_id: _Optional[str] = ..., consent_signed: _Optional[bool] = ...) -> None: ...

class PriorResult(_message.Message):
    __slots__ = ("result_id", "institution_id", "item_code", "reported_at", "valid_until")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    institution_id: str
    item_code: str
    reported_at: _timestamp_pb2.Timestamp
    valid_until: _timestamp_pb2.Timestamp
    def __init__(self, result_id: _Optional[str] = ..., institution_id: _Optional[str] = ..., item_code: _Optional[str] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OverrideOption(_message.Message):
    __slots__ = ("code", "display", "requires_comment")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_COMMENT_FIELD_NUMBER: _ClassVar[int]
    code: str
    display: str
    requires_comment: bool
    def __init__(self, code: _Optional[str] = ..., display: _Optional[str] = ..., requires_comment: _Optional[bool] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "decision", "message", "prior_results", "override_options", "source", "prior_results_omitted")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_RESULTS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_RESULTS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    code: str
    decision: Decision
    message: str
    prior_results: _containers.RepeatedCompositeFieldContainer[PriorResult]
    override_options: _containers.RepeatedCompositeFieldContainer[OverrideOption]
    source: str
    prior_results_omitted: int
    def __init__(self, code: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., message: _Optional[str] = ..., prior_results: _Optional[_Iterable[_Union[PriorResult, _Mapping]]] = ..., override_options: _Optional[_Iterable[_Union[OverrideOption, _Mapping]]] = ..., source: _Optional[str] = ..., prior_results_omitted: _Optional[int] = ...) -> None: ...

class ItemDecision(_message.Message):
    __slots__ = ("line_id", "item_code", "decision", "reasons")
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    item_code: str
    decision: Decision
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    def __init__(self, line_id: _Optional[str] = ..., item_code: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("result_id", "patient_id", "item_code", "institution_id", "reported_at", "recognition_mark")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_MARK_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    patient_id: str
    item_code: str
    institution_id: str
    reported_at: _timestamp_pb2.Timestamp
    recognition_mark: bool
    def __init__(self, result_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., item_code: _Optional[str] = ..., institution_id: _Optional[str] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recognition_mark: _Optional[bool] = ...) -> None: ...

class ResultRef(_message.Message):
    __slots__ = ("patient_id", "result_id")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    result_id: str
    def __init__(self, patient_id: _Optional[str] = ..., result_id: _Optional[str] = ...) -> None: ...
