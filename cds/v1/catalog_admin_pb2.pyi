import datetime

from cds.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadCatalogRequest(_message.Message):
    __slots__ = ("dry_run", "candidate")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    candidate: bytes
    def __init__(self, dry_run: _Optional[bool] = ..., candidate: _Optional[bytes] = ...) -> None: ...

class ReloadCatalogResponse(_message.Message):
    __slots__ = ("activated", "version", "previous_version", "changes", "impact")
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    activated: bool
    version: str
    previous_version: str
    changes: _containers.RepeatedScalarFieldContainer[str]
    impact: Impact
    def __init__(self, activated: _Optional[bool] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., changes: _Optional[_Iterable[str]] = ..., impact: _Optional[_Union[Impact, _Mapping]] = ...) -> None: ...

class Impact(_message.Message):
    __slots__ = ("orders_replayed", "lines_changed", "rows")
    ORDERS_REPLAYED_FIELD_NUMBER: _ClassVar[int]
    LINES_CHANGED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    orders_replayed: int
    lines_changed: int
    rows: _containers.RepeatedCompositeFieldContainer[ImpactRow]
    def __init__(self, orders_replayed: _Optional[int] = ..., lines_changed: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[ImpactRow, _Mapping]]] = ...) -> None: ...

class ImpactRow(_message.Message):
    __slots__ = ("item_code", "before", "after", "lines", "reasons_added", "reasons_removed")
    ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    REASONS_ADDED_FIELD_NUMBER: _ClassVar[int]
    REASONS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    item_code: str
    before: _types_pb2.Decision
    after: _types_pb2.Decision
    lines: int
    reasons_added: _containers.RepeatedScalarFieldContainer[str]
    reasons_removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_code: _Optional[str] = ..., before: _Optional[_Union[_types_pb2.Decision, str]] = ..., after: _Optional[_Union[_types_pb2.Decision, str]] = ..., lines: _Optional[int] = ..., reasons_added: _Optional[_Iterable[str]] = ..., reasons_removed: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCatalogStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCatalogStatusResponse(_message.Message):
    __slots__ = ("version", "loaded_at", "source", "last_error", "last_error_at", "recognition_items", "gene_tests", "effective_date")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_ITEMS_FIELD_NUMBER: _ClassVar[int]
    GENE_TESTS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DATE_FIELD_NUMBER: _ClassVar[int]
    version: str
    loaded_at: _timestamp_pb2.Timestamp
    source: str
    last_error: str
    last_error_at: _timestamp_pb2.Timestamp
    recognition_items: int
    gene_tests: int
    effective_date: str
    def __init__(self, version: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recognition_items: _Optional[int] = ..., gene_tests: _Optional[int] = ..., effective_date: _Optional[str] = ...) -> None: ...
