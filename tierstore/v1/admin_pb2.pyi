from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_READER: _ClassVar[Role]
    ROLE_WRITER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_READER: Role
ROLE_WRITER: Role
ROLE_ADMIN: Role

class Grant(_message.Message):
    __slots__ = ("dataset", "role")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    role: Role
    def __init__(self, dataset: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("principal", "grants", "ttl_s")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    principal: str
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    ttl_s: float
    def __init__(self, principal: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token_id", "token")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    token: str
    def __init__(self, token_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id", "force")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    force: bool
    def __init__(self, token_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("token_id", "principal", "grants", "created_at", "expires_at", "revoked")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    principal: str
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    created_at: float
    expires_at: float
    revoked: bool
    def __init__(self, token_id: _Optional[str] = ..., principal: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., revoked: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RotateKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateKeysResponse(_message.Message):
    __slots__ = ("rewrapped", "key_id")
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    rewrapped: int
    key_id: str
    def __init__(self, rewrapped: _Optional[int] = ..., key_id: _Optional[str] = ...) -> None: ...

class RetireKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RetireKeyResponse(_message.Message):
    __slots__ = ("key_ids", "current")
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    current: str
    def __init__(self, key_ids: _Optional[_Iterable[str]] = ..., current: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MasterKeyInfo(_message.Message):
    __slots__ = ("key_id", "current", "held", "shards")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    current: bool
    held: bool
    shards: int
    def __init__(self, key_id: _Optional[str] = ..., current: _Optional[bool] = ..., held: _Optional[bool] = ..., shards: _Optional[int] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[MasterKeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[MasterKeyInfo, _Mapping]]] = ...) -> None: ...

class ExportTraceRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class TracedRead(_message.Message):
    __slots__ = ("dataset", "shard", "size", "hit", "reported")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: str
    size: int
    hit: bool
    reported: bool
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[str] = ..., size: _Optional[int] = ..., hit: _Optional[bool] = ..., reported: _Optional[bool] = ...) -> None: ...

class TracedPlan(_message.Message):
    __slots__ = ("job", "dataset", "shards", "sizes", "continued")
    JOB_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FIELD_NUMBER: _ClassVar[int]
    job: str
    dataset: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    continued: bool
    def __init__(self, job: _Optional[str] = ..., dataset: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ..., sizes: _Optional[_Iterable[int]] = ..., continued: _Optional[bool] = ...) -> None: ...

class TracedPosition(_message.Message):
    __slots__ = ("job", "dataset", "position")
    JOB_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job: str
    dataset: str
    position: int
    def __init__(self, job: _Optional[str] = ..., dataset: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class TracedClose(_message.Message):
    __slots__ = ("job", "dataset")
    JOB_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    job: str
    dataset: str
    def __init__(self, job: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class TraceEvent(_message.Message):
    __slots__ = ("t", "read", "plan", "position", "close")
    T_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    t: float
    read: TracedRead
    plan: TracedPlan
    position: TracedPosition
    close: TracedClose
    def __init__(self, t: _Optional[float] = ..., read: _Optional[_Union[TracedRead, _Mapping]] = ..., plan: _Optional[_Union[TracedPlan, _Mapping]] = ..., position: _Optional[_Union[TracedPosition, _Mapping]] = ..., close: _Optional[_Union[TracedClose, _Mapping]] = ...) -> None: ...

class ExportTraceResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TraceEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TraceEvent, _Mapping]]] = ...) -> None: ...
