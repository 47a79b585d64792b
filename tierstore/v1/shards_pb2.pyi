from tierstore.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutShardHeader(_message.Message):
    __slots__ = ("dataset", "shard", "kind", "frame_count", "uncounted")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNCOUNTED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    kind: _common_pb2.ShardKind
    frame_count: int
    uncounted: bool
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ShardKind, str]] = ..., frame_count: _Optional[int] = ..., uncounted: _Optional[bool] = ...) -> None: ...

class PutShardEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PutShardRequest(_message.Message):
    __slots__ = ("header", "frame", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: PutShardHeader
    frame: bytes
    end: PutShardEnd
    def __init__(self, header: _Optional[_Union[PutShardHeader, _Mapping]] = ..., frame: _Optional[bytes] = ..., end: _Optional[_Union[PutShardEnd, _Mapping]] = ...) -> None: ...

class GetShardRequest(_message.Message):
    __slots__ = ("dataset", "shard", "byte_range", "frame_range")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    BYTE_RANGE_FIELD_NUMBER: _ClassVar[int]
    FRAME_RANGE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    byte_range: _common_pb2.ByteRange
    frame_range: _common_pb2.FrameRange
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ..., byte_range: _Optional[_Union[_common_pb2.ByteRange, _Mapping]] = ..., frame_range: _Optional[_Union[_common_pb2.FrameRange, _Mapping]] = ...) -> None: ...

class Seal(_message.Message):
    __slots__ = ("context", "frame_count", "data_key", "nonce_prefix")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    context: bytes
    frame_count: int
    data_key: bytes
    nonce_prefix: bytes
    def __init__(self, context: _Optional[bytes] = ..., frame_count: _Optional[int] = ..., data_key: _Optional[bytes] = ..., nonce_prefix: _Optional[bytes] = ...) -> None: ...

class GetShardHeader(_message.Message):
    __slots__ = ("info", "seal", "first_frame", "frame_count", "skip", "length")
    INFO_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ShardInfo
    seal: Seal
    first_frame: int
    frame_count: int
    skip: int
    length: int
    def __init__(self, info: _Optional[_Union[_common_pb2.ShardInfo, _Mapping]] = ..., seal: _Optional[_Union[Seal, _Mapping]] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ..., skip: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class StoredFrame(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetShardResponse(_message.Message):
    __slots__ = ("header", "frame")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    header: GetShardHeader
    frame: StoredFrame
    def __init__(self, header: _Optional[_Union[GetShardHeader, _Mapping]] = ..., frame: _Optional[_Union[StoredFrame, _Mapping]] = ...) -> None: ...

class StatShardRequest(_message.Message):
    __slots__ = ("dataset", "shard")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ...) -> None: ...

class ListShardsRequest(_message.Message):
    __slots__ = ("dataset", "prefix", "start_after", "limit")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    prefix: str
    start_after: str
    limit: int
    def __init__(self, dataset: _Optional[str] = ..., prefix: _Optional[str] = ..., start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListShardsResponse(_message.Message):
    __slots__ = ("shards", "next_start_after")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_AFTER_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[_common_pb2.ShardInfo]
    next_start_after: str
    def __init__(self, shards: _Optional[_Iterable[_Union[_common_pb2.ShardInfo, _Mapping]]] = ..., next_start_after: _Optional[str] = ...) -> None: ...

class DeleteShardRequest(_message.Message):
    __slots__ = ("dataset", "shard")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ...) -> None: ...

class DeleteShardResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenLocalRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class HostIdentity(_message.Message):
    __slots__ = ("boot_id", "pid_namespace", "hostname")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    PID_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    pid_namespace: str
    hostname: str
    def __init__(self, boot_id: _Optional[str] = ..., pid_namespace: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class LocalGrant(_message.Message):
    __slots__ = ("path", "map_size", "data_device", "data_inode", "host", "server_pid", "ttl_s")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_DEVICE_FIELD_NUMBER: _ClassVar[int]
    DATA_INODE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVER_PID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    path: str
    map_size: int
    data_device: int
    data_inode: int
    host: HostIdentity
    server_pid: int
    ttl_s: float
    def __init__(self, path: _Optional[str] = ..., map_size: _Optional[int] = ..., data_device: _Optional[int] = ..., data_inode: _Optional[int] = ..., host: _Optional[_Union[HostIdentity, _Mapping]] = ..., server_pid: _Optional[int] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class GrantDataKeyRequest(_message.Message):
    __slots__ = ("dataset", "shard", "generation")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    generation: int
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class DataKeyGrant(_message.Message):
    __slots__ = ("data_key", "nonce_prefix")
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    data_key: bytes
    nonce_prefix: bytes
    def __init__(self, data_key: _Optional[bytes] = ..., nonce_prefix: _Optional[bytes] = ...) -> None: ...

class LocalReadCount(_message.Message):
    __slots__ = ("shard", "generation", "count")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    shard: str
    generation: int
    count: int
    def __init__(self, shard: _Optional[str] = ..., generation: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ReportLocalReadsRequest(_message.Message):
    __slots__ = ("dataset", "reads")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    reads: _containers.RepeatedCompositeFieldContainer[LocalReadCount]
    def __init__(self, dataset: _Optional[str] = ..., reads: _Optional[_Iterable[_Union[LocalReadCount, _Mapping]]] = ...) -> None: ...

class ReportLocalReadsResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    def __init__(self, recorded: _Optional[int] = ...) -> None: ...
