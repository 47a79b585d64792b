from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardRef(_message.Message):
    __slots__ = ("dataset", "shard")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ...) -> None: ...

class PlacementResponse(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class PrefetchRequest(_message.Message):
    __slots__ = ("dataset", "shards")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ...) -> None: ...

class PrefetchResponse(_message.Message):
    __slots__ = ("queued",)
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    queued: int
    def __init__(self, queued: _Optional[int] = ...) -> None: ...

class GetTierStatsRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("dataset", "shards", "bytes", "hot_shards", "hot_bytes", "hits", "misses")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HOT_SHARDS_FIELD_NUMBER: _ClassVar[int]
    HOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shards: int
    bytes: int
    hot_shards: int
    hot_bytes: int
    hits: int
    misses: int
    def __init__(self, dataset: _Optional[str] = ..., shards: _Optional[int] = ..., bytes: _Optional[int] = ..., hot_shards: _Optional[int] = ..., hot_bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("hot_bytes", "hot_capacity_bytes", "backlog_bytes", "journal_entries", "datasets")
    HOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOT_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    hot_bytes: int
    hot_capacity_bytes: int
    backlog_bytes: int
    journal_entries: int
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetStats]
    def __init__(self, hot_bytes: _Optional[int] = ..., hot_capacity_bytes: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., journal_entries: _Optional[int] = ..., datasets: _Optional[_Iterable[_Union[DatasetStats, _Mapping]]] = ...) -> None: ...
