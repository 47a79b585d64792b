from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_WRITE_BACK: _ClassVar[Durability]
    DURABILITY_WRITE_THROUGH: _ClassVar[Durability]

class ShardKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARD_KIND_UNSPECIFIED: _ClassVar[ShardKind]
    SHARD_KIND_RAW: _ClassVar[ShardKind]
    SHARD_KIND_ARROW: _ClassVar[ShardKind]
    SHARD_KIND_TENSOR: _ClassVar[ShardKind]
DURABILITY_UNSPECIFIED: Durability
DURABILITY_WRITE_BACK: Durability
DURABILITY_WRITE_THROUGH: Durability
SHARD_KIND_UNSPECIFIED: ShardKind
SHARD_KIND_RAW: ShardKind
SHARD_KIND_ARROW: ShardKind
SHARD_KIND_TENSOR: ShardKind

class DatasetSettings(_message.Message):
    __slots__ = ("encrypted", "durability", "hot_quota_bytes", "policy", "arrow_schema", "backlog_quota_bytes")
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    HOT_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ARROW_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    encrypted: bool
    durability: Durability
    hot_quota_bytes: int
    policy: str
    arrow_schema: bytes
    backlog_quota_bytes: int
    def __init__(self, encrypted: _Optional[bool] = ..., durability: _Optional[_Union[Durability, str]] = ..., hot_quota_bytes: _Optional[int] = ..., policy: _Optional[str] = ..., arrow_schema: _Optional[bytes] = ..., backlog_quota_bytes: _Optional[int] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "settings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: DatasetSettings
    def __init__(self, name: _Optional[str] = ..., settings: _Optional[_Union[DatasetSettings, _Mapping]] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("dataset", "name", "generation", "kind", "frame_sizes", "size", "created_at", "encrypted", "hot", "archived", "access_count", "last_access", "access_frequency", "pinned", "pinned_until", "rows", "waiting_for_room")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FRAME_SIZES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    HOT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    ACCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    PINNED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_ROOM_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    name: str
    generation: int
    kind: ShardKind
    frame_sizes: _containers.RepeatedScalarFieldContainer[int]
    size: int
    created_at: float
    encrypted: bool
    hot: bool
    archived: bool
    access_count: int
    last_access: float
    access_frequency: float
    pinned: bool
    pinned_until: float
    rows: int
    waiting_for_room: bool
    def __init__(self, dataset: _Optional[str] = ..., name: _Optional[str] = ..., generation: _Optional[int] = ..., kind: _Optional[_Union[ShardKind, str]] = ..., frame_sizes: _Optional[_Iterable[int]] = ..., size: _Optional[int] = ..., created_at: _Optional[float] = ..., encrypted: _Optional[bool] = ..., hot: _Optional[bool] = ..., archived: _Optional[bool] = ..., access_count: _Optional[int] = ..., last_access: _Optional[float] = ..., access_frequency: _Optional[float] = ..., pinned: _Optional[bool] = ..., pinned_until: _Optional[float] = ..., rows: _Optional[int] = ..., waiting_for_room: _Optional[bool] = ...) -> None: ...

class ByteRange(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class FrameRange(_message.Message):
    __slots__ = ("first", "count")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    first: int
    count: int
    def __init__(self, first: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...
