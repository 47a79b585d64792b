from tierstore.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateDatasetRequest(_message.Message):
    __slots__ = ("name", "settings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: _common_pb2.DatasetSettings
    def __init__(self, name: _Optional[str] = ..., settings: _Optional[_Union[_common_pb2.DatasetSettings, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("start_after", "limit")
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start_after: str
    limit: int
    def __init__(self, start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_start_after")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_AFTER_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[_common_pb2.Dataset]
    next_start_after: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[_common_pb2.Dataset, _Mapping]]] = ..., next_start_after: _Optional[str] = ...) -> None: ...

class UpdateDatasetRequest(_message.Message):
    __slots__ = ("name", "durability", "hot_quota_bytes", "policy", "backlog_quota_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    HOT_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    durability: _common_pb2.Durability
    hot_quota_bytes: int
    policy: str
    backlog_quota_bytes: int
    def __init__(self, name: _Optional[str] = ..., durability: _Optional[_Union[_common_pb2.Durability, str]] = ..., hot_quota_bytes: _Optional[int] = ..., policy: _Optional[str] = ..., backlog_quota_bytes: _Optional[int] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ("grants_removed",)
    GRANTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    grants_removed: int
    def __init__(self, grants_removed: _Optional[int] = ...) -> None: ...
