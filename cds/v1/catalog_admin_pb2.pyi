import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadCatalogRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class ReloadCatalogResponse(_message.Message):
    __slots__ = ("activated", "version", "previous_version", "changes")
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    activated: bool
    version: str
    previous_version: str
    changes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, activated: _Optional[bool] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., changes: _Optional[_Iterable[str]] = ...) -> None: ...

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
