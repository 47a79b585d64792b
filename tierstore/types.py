"""Frozen value types shared by every layer (stdlib only)."""

from __future__ import annotations

import enum
import numbers
import operator
import re
import sys
from dataclasses import dataclass, field
from typing import cast

from tierstore.errors import InvalidArgument

__all__ = [
    "ALL_DATASETS",
    "DEFAULT_POLICY_NAME",
    "MAX_TTL_S",
    "DatasetSettings",
    "Durability",
    "Grant",
    "Role",
    "ShardInfo",
    "ShardKind",
    "SizingPoint",
    "TraceEvent",
    "TracedClose",
    "TracedPlan",
    "TracedPosition",
    "TracedRead",
    "WrappedKey",
    "check_bool",
    "check_pin_ttl",
    "token_id_of",
]

#: The placement policy a dataset gets unless it names one. The same name as
#: ``tierstore.policy.registry.DEFAULT_POLICY`` (this module imports nothing of the
#: package; a test checks that the two agree).
DEFAULT_POLICY_NAME = "clairvoyant"


#: The most rows a shard may hold: Arrow's (and torch's) row counts are signed 64-bit.
MAX_ROWS = 2**63 - 1

#: The longest lifetime a token or a pin may be given: beyond it there is no point
#: (0 or no TTL means "never"), and times far enough out break date formatting in
#: every client that shows them.
MAX_TTL_S = 10 * 365.25 * 86_400

#: A token as the node issues it: ``ts_``, its id (12 hex characters, what ``token ls``
#: shows and ``token revoke`` takes) and its secret.
_TOKEN_PATTERN = re.compile(r"ts_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def token_id_of(token: str | None) -> str | None:
    """The id of ``token``, or None if it is not a token the node could have issued."""
    match = _TOKEN_PATTERN.fullmatch(token) if token else None
    return match.group(1) if match else None


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool if it is one (numpy's too), else InvalidArgument naming
    ``name``. Not its truth: ``shuffle="no"`` shuffled, ``insecure="no"`` connected in
    plaintext, and 0 or None passed for False."""
    if not _is_bool(value):
        raise InvalidArgument(f"{name} must be True or False, got {value!r:.40}")
    return bool(value)


def _is_bool(value: object) -> bool:
    """Whether ``value`` is a bool, numpy's too. numpy is not imported for it (this
    module loads only the standard library): without numpy loaded, none is numpy's."""
    if isinstance(value, bool):
        return True
    numpy_bool = getattr(sys.modules.get("numpy"), "bool_", None)  # (numpy half loaded)
    return numpy_bool is not None and isinstance(value, numpy_bool)


def whole_number(value: object) -> int | None:
    """``value`` as an int if it is a whole number: an int or a numpy integer (anything
    with ``__index__``), but not a bool (True is no count); else None. Not ``int()``: a
    float's fraction or a string's digits would pass as a count."""
    if _is_bool(value):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def seconds_up_to(value: object, maximum: float) -> float | None:
    """``value`` as a float if it is a number of seconds above 0 and at most
    ``maximum``, else None (for a bool, NaN, an infinity, or anything not a real
    number). The caller raises its own error, naming its argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    # Compared before float(): 10**400 overflows it.
    return float(value) if 0 < cast(float, value) <= maximum else None


def check_pin_ttl(ttl_s: object) -> float | None:
    """``ttl_s`` as a pin's lifetime: None (until unpinned) or a number of seconds in
    (0, ten years]. Raises InvalidArgument otherwise (NaN, infinities, bools too)."""
    if ttl_s is None:
        return None
    seconds = seconds_up_to(ttl_s, MAX_TTL_S)
    if seconds is None:
        raise InvalidArgument(
            f"a pin's ttl_s must be a number of seconds above 0 and at most {MAX_TTL_S:.0f} "
            f"(ten years; the CLI's --ttl), got {ttl_s!r:.40}"
        )
    return seconds


class Durability(enum.StrEnum):
    """When a put is acknowledged."""

    #: after the local LMDB commit (fsynced); the mover uploads from the journal.
    WRITE_BACK = "write-back"
    #: after the archive holds the shard generation as well.
    WRITE_THROUGH = "write-through"


class ShardKind(enum.StrEnum):
    """What a shard's frames hold."""

    RAW = "raw"  # fixed-size byte frames
    ARROW = "arrow"  # frame 0: IPC schema message; then one record-batch message per frame
    TENSOR = "tensor"  # an ARROW shard holding one fixed_shape_tensor column


@dataclass(frozen=True, slots=True)
class DatasetSettings:
    """Per-dataset settings, fixed at creation except where noted.

    Checked when made (every copy too): InvalidArgument for a value of the wrong type, a
    durability that names none, or a quota below 0 or past 2**64-1. A durability given by its name
    (``"write-through"``) becomes the enum member.
    """

    #: plaintext unless set, here (the engine's settings); the client's create_dataset
    #: and the CLI's dataset create ask for an encrypted dataset unless told otherwise.
    encrypted: bool = False
    durability: Durability = Durability.WRITE_BACK
    #: bytes this dataset may hold in the hot tier (0: no per-dataset quota).
    hot_quota_bytes: int = 0
    #: the placement policy of its shards (changeable at run time).
    policy: str = DEFAULT_POLICY_NAME
    #: the Arrow schema every shard of the dataset must have (metadata aside), as an
    #: Arrow IPC schema message (``pyarrow.Schema.serialize()``); empty: any shard of
    #: any kind. Raw bytes go only into a dataset without one.
    arrow_schema: bytes = b""
    #: stored bytes of this dataset that may wait for the archive at once (0: only the
    #: node's ``backlog_cap_bytes`` bounds them); changeable at run time. A share of the
    #: node's cap, so that one dataset's ingest into a slow archive leaves the rest of
    #: the cap to the others.
    backlog_quota_bytes: int = 0

    def __post_init__(self) -> None:
        # Settings are committed to the catalog as they are: a value of another type
        # would make the dataset's record unreadable when the store next opens.
        if not isinstance(self.encrypted, bool):
            raise InvalidArgument(f"encrypted must be True or False, got {self.encrypted!r:.40}")
        try:
            object.__setattr__(self, "durability", Durability(self.durability))
        except ValueError:
            names = ", ".join(repr(d.value) for d in Durability)
            raise InvalidArgument(
                f"durability must be one of {names}, got {self.durability!r:.40}"
            ) from None
        check_hot_quota(self.hot_quota_bytes)
        check_backlog_quota(self.backlog_quota_bytes)
        check_policy_name(self.policy)
        if not isinstance(self.arrow_schema, bytes):
            raise InvalidArgument(
                "arrow_schema must be the bytes of an Arrow IPC schema message "
                f"(pyarrow.Schema.serialize()), got {type(self.arrow_schema).__name__}"
            )


def check_policy_name(policy: object) -> str:
    """``policy`` if it is a str (which policy it names is the registry's to say),
    else InvalidArgument."""
    if not isinstance(policy, str):
        raise InvalidArgument(f"policy must be a policy name, got {policy!r:.40}")
    return policy


def check_hot_quota(quota: object) -> int:
    """``quota`` when it is a dataset hot quota in bytes (an int from 0, none, to
    2**64-1), else InvalidArgument. At most what the wire carries (uint64): a larger
    one was stored, and then every listing of the node's datasets failed INTERNAL."""
    return _checked_quota(quota, "hot_quota_bytes")


def check_backlog_quota(quota: object) -> int:
    """``quota`` when it is a dataset backlog quota in bytes (as :func:`check_hot_quota`
    checks a hot quota), else InvalidArgument."""
    return _checked_quota(quota, "backlog_quota_bytes")


def _checked_quota(quota: object, name: str) -> int:
    if not isinstance(quota, int) or isinstance(quota, bool) or not 0 <= quota < 1 << 64:
        raise InvalidArgument(f"{name} must be an int from 0 to 2**64-1, got {quota!r:.40}")
    return quota


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key wrapped (encrypted) by the master key ``key_id``."""

    key_id: str
    blob: bytes


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What the catalog knows of one shard generation."""

    dataset: str
    name: str
    generation: int
    kind: ShardKind
    #: logical (plaintext) size of each frame, in order.
    frame_sizes: tuple[int, ...]
    created_at: float
    encrypted: bool
    hot: bool
    archived: bool
    #: access count and last access time (seconds since the epoch; 0 if never read).
    access_count: int = 0
    last_access: float = 0.0
    #: reads with exponential decay (each read counts 1, halved every half-life),
    #: as of the moment the info was made.
    access_frequency: float = 0.0
    #: pinned in the hot tier (a pin whose TTL has run out no longer counts).
    pinned: bool = False
    #: when a TTL pin runs out (seconds since the epoch); 0 for a pin without TTL.
    pinned_until: float = 0.0
    #: rows in an Arrow or tensor shard's record batches, recorded at put time; None for
    #: raw bytes and for shards written before rows were recorded.
    rows: int | None = None
    #: pinned and cold because its promotion was skipped for want of room (its
    #: dataset's quota, or the high watermark), waiting to be tried again: it turns hot
    #: once other pins end or the room grows.
    waiting_for_room: bool = False
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        """Logical size of the shard in bytes (sum of its frames' plaintext sizes)."""
        return sum(self.frame_sizes)

    @property
    def frame_count(self) -> int:
        """Number of frames."""
        return len(self.frame_sizes)


#: The dataset of a :class:`Grant` that applies to every dataset, present and future.
ALL_DATASETS = "*"


class Role(enum.StrEnum):
    """What a principal may do with a dataset; each role implies the ones below it."""

    READER = "reader"  # get, stat, list
    WRITER = "writer"  # and put, delete, pin, unpin, prefetch, evict
    ADMIN = "admin"  # and create, update, delete the dataset; on "*": tokens and keys

    @property
    def rank(self) -> int:
        """1 for reader, 2 for writer, 3 for admin (the proto's enum numbers)."""
        return _ROLE_RANK[self]

    def implies(self, other: Role) -> bool:
        """Whether holding this role grants everything ``other`` grants."""
        return self.rank >= other.rank


_ROLE_RANK = {Role.READER: 1, Role.WRITER: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class Grant:
    """A role on one dataset, or on every dataset when ``dataset`` is :data:`ALL_DATASETS`."""

    dataset: str
    role: Role


@dataclass(frozen=True, slots=True)
class SizingPoint:
    """One point of a sizing curve: the estimated miss ratio of a hot tier of
    ``capacity_bytes`` over the recently traced reads."""

    capacity_bytes: int
    miss_ratio: float


# Access-trace events as a node records them (times are seconds since the epoch).


@dataclass(frozen=True, slots=True)
class TracedRead:
    """A read of ``dataset/shard`` (``size`` stored bytes), from the hot tier if ``hit``.

    ``reported``: a hit a local reader served itself and reported later with others, as
    a count (docs/local-reads.md): its time is the report's, and a report is traced as
    at most 3 reads of each shard one after the other, so such reads' order and
    frequency are not the reader's.
    """

    t: float
    dataset: str
    shard: str
    size: int
    hit: bool
    reported: bool = False


@dataclass(frozen=True, slots=True)
class TracedPlan:
    """``job`` declared it will read these shards of ``dataset`` in this order."""

    t: float
    job: str
    dataset: str
    shards: tuple[str, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TracedPosition:
    """``job`` has read the first ``position`` entries of its plan over ``dataset``."""

    t: float
    job: str
    dataset: str
    position: int


@dataclass(frozen=True, slots=True)
class TracedClose:
    """``job``'s plan over ``dataset`` ended (closed, expired, or its dataset deleted)."""

    t: float
    job: str
    dataset: str


TraceEvent = TracedRead | TracedPlan | TracedPosition | TracedClose
