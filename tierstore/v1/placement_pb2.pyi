from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_KIND_UNSPECIFIED: _ClassVar[SamplerKind]
    SAMPLER_KIND_SEQUENTIAL: _ClassVar[SamplerKind]
    SAMPLER_KIND_SHUFFLE: _ClassVar[SamplerKind]
    SAMPLER_KIND_REPLACEMENT: _ClassVar[SamplerKind]
SAMPLER_KIND_UNSPECIFIED: SamplerKind
SAMPLER_KIND_SEQUENTIAL: SamplerKind
SAMPLER_KIND_SHUFFLE: SamplerKind
SAMPLER_KIND_REPLACEMENT: SamplerKind

class ShardRef(_message.Message):
    __slots__ = ("dataset", "shard")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("dataset", "shard", "ttl_s")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    ttl_s: float
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("dataset", "sizing")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SIZING_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    sizing: bool
    def __init__(self, dataset: _Optional[str] = ..., sizing: _Optional[bool] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("dataset", "shards", "bytes", "hot_shards", "hot_bytes", "hits", "misses", "policy", "archived_shards", "archived_bytes", "backlog_shards", "backlog_bytes", "pinned_shards", "pinned_bytes", "pinned_cold_shards", "pinned_cold_bytes", "largest_shard_bytes")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HOT_SHARDS_FIELD_NUMBER: _ClassVar[int]
    HOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_SHARDS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_COLD_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PINNED_COLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LARGEST_SHARD_BYTES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shards: int
    bytes: int
    hot_shards: int
    hot_bytes: int
    hits: int
    misses: int
    policy: str
    archived_shards: int
    archived_bytes: int
    backlog_shards: int
    backlog_bytes: int
    pinned_shards: int
    pinned_bytes: int
    pinned_cold_shards: int
    pinned_cold_bytes: int
    largest_shard_bytes: int
    def __init__(self, dataset: _Optional[str] = ..., shards: _Optional[int] = ..., bytes: _Optional[int] = ..., hot_shards: _Optional[int] = ..., hot_bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., policy: _Optional[str] = ..., archived_shards: _Optional[int] = ..., archived_bytes: _Optional[int] = ..., backlog_shards: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., pinned_shards: _Optional[int] = ..., pinned_bytes: _Optional[int] = ..., pinned_cold_shards: _Optional[int] = ..., pinned_cold_bytes: _Optional[int] = ..., largest_shard_bytes: _Optional[int] = ...) -> None: ...

class SizingPoint(_message.Message):
    __slots__ = ("capacity_bytes", "miss_ratio")
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MISS_RATIO_FIELD_NUMBER: _ClassVar[int]
    capacity_bytes: int
    miss_ratio: float
    def __init__(self, capacity_bytes: _Optional[int] = ..., miss_ratio: _Optional[float] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("hot_bytes", "hot_capacity_bytes", "backlog_bytes", "journal_entries", "datasets", "sizing", "traced_reads", "data_loss", "archive_error", "data_loss_omitted", "oldest_journal_age_s", "high_watermark_bytes", "low_watermark_bytes", "promotions", "promotions_skipped", "evictions", "pins_waiting_for_room", "pins_waiting_for_room_bytes")
    HOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOT_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SIZING_FIELD_NUMBER: _ClassVar[int]
    TRACED_READS_FIELD_NUMBER: _ClassVar[int]
    DATA_LOSS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    DATA_LOSS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_JOURNAL_AGE_S_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOW_WATERMARK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    PINS_WAITING_FOR_ROOM_FIELD_NUMBER: _ClassVar[int]
    PINS_WAITING_FOR_ROOM_BYTES_FIELD_NUMBER: _ClassVar[int]
    hot_bytes: int
    hot_capacity_bytes: int
    backlog_bytes: int
    journal_entries: int
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetStats]
    sizing: _containers.RepeatedCompositeFieldContainer[SizingPoint]
    traced_reads: int
    data_loss: _containers.RepeatedScalarFieldContainer[str]
    archive_error: str
    data_loss_omitted: int
    oldest_journal_age_s: float
    high_watermark_bytes: int
    low_watermark_bytes: int
    promotions: int
    promotions_skipped: int
    evictions: int
    pins_waiting_for_room: int
    pins_waiting_for_room_bytes: int
    def __init__(self, hot_bytes: _Optional[int] = ..., hot_capacity_bytes: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., journal_entries: _Optional[int] = ..., datasets: _Optional[_Iterable[_Union[DatasetStats, _Mapping]]] = ..., sizing: _Optional[_Iterable[_Union[SizingPoint, _Mapping]]] = ..., traced_reads: _Optional[int] = ..., data_loss: _Optional[_Iterable[str]] = ..., archive_error: _Optional[str] = ..., data_loss_omitted: _Optional[int] = ..., oldest_journal_age_s: _Optional[float] = ..., high_watermark_bytes: _Optional[int] = ..., low_watermark_bytes: _Optional[int] = ..., promotions: _Optional[int] = ..., promotions_skipped: _Optional[int] = ..., evictions: _Optional[int] = ..., pins_waiting_for_room: _Optional[int] = ..., pins_waiting_for_room_bytes: _Optional[int] = ...) -> None: ...

class SamplerSpec(_message.Message):
    __slots__ = ("kind", "seed", "epoch", "rank", "world_size", "epochs", "samples_per_epoch", "shards_digest")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    kind: SamplerKind
    seed: int
    epoch: int
    rank: int
    world_size: int
    epochs: int
    samples_per_epoch: int
    shards_digest: bytes
    def __init__(self, kind: _Optional[_Union[SamplerKind, str]] = ..., seed: _Optional[int] = ..., epoch: _Optional[int] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., epochs: _Optional[int] = ..., samples_per_epoch: _Optional[int] = ..., shards_digest: _Optional[bytes] = ...) -> None: ...

class ShardList(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shards: _Optional[_Iterable[str]] = ...) -> None: ...

class DeclarePlanRequest(_message.Message):
    __slots__ = ("dataset", "sampler", "explicit", "prefix", "job", "ttl_s", "position")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    sampler: SamplerSpec
    explicit: ShardList
    prefix: str
    job: str
    ttl_s: float
    position: int
    def __init__(self, dataset: _Optional[str] = ..., sampler: _Optional[_Union[SamplerSpec, _Mapping]] = ..., explicit: _Optional[_Union[ShardList, _Mapping]] = ..., prefix: _Optional[str] = ..., job: _Optional[str] = ..., ttl_s: _Optional[float] = ..., position: _Optional[int] = ...) -> None: ...

class DeclarePlanResponse(_message.Message):
    __slots__ = ("job", "length", "position")
    JOB_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job: str
    length: int
    position: int
    def __init__(self, job: _Optional[str] = ..., length: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class ReportPositionRequest(_message.Message):
    __slots__ = ("job", "position")
    JOB_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job: str
    position: int
    def __init__(self, job: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class ReportPositionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClosePlanRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class ClosePlanResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
