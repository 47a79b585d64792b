"""Catalog records and their encodings (pure: no I/O).

A :class:`ShardRecord` is what the catalog holds per shard; the same fields,
minus local state, form the shard generation's archive manifest, so the catalog
can be rebuilt from the archive alone. Journal operations are
:class:`JournalOp` values. Encodings are JSON with a format version (``"v"``), so
records stay readable by later releases. A release reads records of its own
:data:`FORMAT_VERSION` and older, and refuses a newer one (NewerFormat): read as an
older one, its newer fields would be dropped when it is written again. A release that
adds a field whose loss would matter raises FORMAT_VERSION (and so the hot tier's
format mark, :meth:`tierstore.engine.catalog.Catalog.mark_format`); one whose loss is
harmless may be added without.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from tierstore.crypto import NONCE_PREFIX_BYTES
from tierstore.errors import IntegrityError, InvalidArgument, NewerFormat
from tierstore.types import (
    DEFAULT_POLICY_NAME,
    MAX_ROWS,
    DatasetSettings,
    ShardInfo,
    ShardKind,
    WrappedKey,
)

__all__ = [
    "DIGEST_BYTES",
    "FORMAT_VERSION",
    "KEPT_NAME_BYTES",
    "AccessStats",
    "Envelope",
    "JournalOp",
    "ShardRecord",
    "archive_dataset_key",
    "archive_frames_key",
    "archive_manifest_key",
    "catalog_key",
    "check_format",
    "decode_dataset",
    "encode_dataset",
    "first_generation_of",
    "frame_digest_of",
    "frame_key",
    "generation_of_frame_key",
    "shard_of_key",
]

FORMAT_VERSION = 1
#: Bytes of one frame's digest (SHA-256) in ShardRecord.frame_digests.
DIGEST_BYTES = 32
_MAX_PLAIN_NAME_BYTES = 440
#: Bytes of a long name that its catalog key keeps (before 0xff and a hash).
KEPT_NAME_BYTES = 400


def check_format(version: Any, what: str) -> None:
    """Refuse ``version``, a record's or a store's format version, when this release
    does not read it: NewerFormat for a newer one, ValueError for one that is no
    positive int (damage)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format version {version!r:.40}")
    if version > FORMAT_VERSION:
        raise NewerFormat(
            f"{what} was written by a newer tierstore release, in format {version}; "
            f"this release reads format {FORMAT_VERSION} and older: run a release that "
            "reads it (an older one would drop what the newer one recorded)"
        )


def _document(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """The JSON object of an encoded record, of a format this release reads (a record
    of before format versions counts as format 1). Raises NewerFormat, and ValueError
    for anything but a JSON object of a format version."""
    document = json.loads(bytes(raw))
    if not isinstance(document, dict):
        raise ValueError(f"a record is a JSON object, not {type(document).__name__}")
    check_format(document.get("v", 1), what)
    return document


def frame_digest_of(stored: bytes | memoryview) -> bytes:
    """The digest ShardRecord.frame_digests keeps of a stored frame: SHA-256, which
    no one can match with other bytes (the frame's own checksum, xxh3 for plaintext,
    anyone can)."""
    return hashlib.sha256(stored).digest()


def catalog_key(dataset: str, shard: str) -> bytes:
    """The LMDB key of a shard's record: ``dataset \\0 name``, sorted by name.

    LMDB keys hold at most 511 bytes; a longer name keeps its first 400 bytes (so
    prefix listing still works) followed by ``0xff`` (never in UTF-8) and a hash.
    """
    raw = shard.encode()
    if len(raw) > _MAX_PLAIN_NAME_BYTES:
        raw = raw[:KEPT_NAME_BYTES] + b"\xff" + hashlib.sha256(raw).digest()[:16]
    return dataset.encode() + b"\x00" + raw


def shard_of_key(key: bytes) -> tuple[str, str]:
    """``(dataset, name)`` of a record key, for messages and policies (the part of a
    long name its key keeps, then its hash, shown escaped)."""
    dataset, _, name = key.partition(b"\x00")
    return dataset.decode(errors="backslashreplace"), name.decode(errors="backslashreplace")


def frame_key(generation: int, index: int) -> str:
    """Hot-tier key of one frame; a generation's frames sort together and in order."""
    return f"{generation:016x}/{index:08x}"


def generation_of_frame_key(key: str) -> int:
    """The generation a :func:`frame_key` belongs to."""
    return int(key.partition("/")[0], 16)


#: The keys of the archive objects a store writes per generation (frames, manifest).
_GENERATION_OBJECT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}/[0-9a-f]{16}\.(frames|manifest)")


def is_generation_object_key(key: str) -> bool:
    """Whether ``key`` (without the archive prefix) names a generation's frames or
    manifest object, as :func:`archive_frames_key` and :func:`archive_manifest_key` do."""
    return _GENERATION_OBJECT.fullmatch(key) is not None


def archive_frames_key(dataset: str, generation: int) -> str:
    """Archive object holding a generation's stored frames back to back."""
    return f"{dataset}/{generation:016x}.frames"


def archive_manifest_key(dataset: str, generation: int) -> str:
    """Archive object describing a generation; written after its frames (a commit marker)."""
    return f"{dataset}/{generation:016x}.manifest"


def archive_dataset_key(dataset: str) -> str:
    """Archive object holding a dataset's settings."""
    return f"{dataset}/_dataset.json"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Encryption of one generation: its wrapped data key and nonce prefix."""

    wrapped: WrappedKey
    nonce_prefix: bytes


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """One shard generation as the catalog and the archive manifest know it."""

    dataset: str
    name: str
    generation: int
    kind: ShardKind
    frame_sizes: tuple[int, ...]
    created_at: float
    envelope: Envelope | None
    hot: bool = True
    archived: bool = False
    pinned: bool = False
    #: a TTL pin holds until then (seconds since the epoch); 0: until unpinned.
    pinned_until: float = 0.0
    #: rows in an Arrow or tensor shard's record batches; None for raw bytes and for
    #: generations written before rows were recorded.
    rows: int | None = None
    #: SHA-256 of every stored frame as the mover uploaded it, back to back (None
    #: before the upload, and for generations archived before digests were kept):
    #: frames fetched from the archive must match them (:mod:`~tierstore.engine.archived`).
    #: A plaintext frame's own checksum is no key's: whoever may write to the archive
    #: could forge one; these are kept where the archive cannot change them, in the
    #: catalog and in the manifest under its seal.
    frame_digests: bytes | None = None

    def frame_digest(self, index: int) -> bytes | None:
        """The SHA-256 stored frame ``index`` had when it was uploaded, if kept."""
        if self.frame_digests is None:
            return None
        return self.frame_digests[index * DIGEST_BYTES : (index + 1) * DIGEST_BYTES]

    @property
    def size(self) -> int:
        return sum(self.frame_sizes)

    def pin_holds(self, now: float) -> bool:
        """Whether the shard is pinned at ``now`` (a TTL pin runs out by itself)."""
        return self.pinned and (self.pinned_until == 0.0 or now < self.pinned_until)

    def evictable(self, now: float) -> bool:
        """Whether eviction may drop it at ``now``: hot, archived, and not pinned."""
        return self.hot and self.archived and not self.pin_holds(now)

    def stored_sizes(self, overhead: int) -> tuple[int, ...]:
        """Stored size of every frame, given the sealing overhead."""
        return tuple(size + overhead for size in self.frame_sizes)

    def stored_offsets(self, overhead: int) -> tuple[int, ...]:
        """Where each stored frame starts in the archive object, plus the object's size."""
        offsets = [0]
        for size in self.stored_sizes(overhead):
            offsets.append(offsets[-1] + size)
        return tuple(offsets)

    def with_state(self, **changes: Any) -> ShardRecord:
        return replace(self, **changes)

    def to_info(self, now: float, access: AccessStats | None = None) -> ShardInfo:
        """The public view at ``now`` (whether a TTL pin still holds), with ``access``
        statistics if known (their frequency valued as the caller wants it shown)."""
        access = access or AccessStats()
        pinned = self.pin_holds(now)
        return ShardInfo(
            dataset=self.dataset,
            name=self.name,
            generation=self.generation,
            kind=self.kind,
            frame_sizes=self.frame_sizes,
            created_at=self.created_at,
            encrypted=self.envelope is not None,
            hot=self.hot,
            archived=self.archived,
            access_count=access.count,
            last_access=access.last,
            access_frequency=access.frequency,
            pinned=pinned,
            pinned_until=self.pinned_until if pinned else 0.0,
            rows=self.rows,
        )

    def encode(self, *, manifest: bool = False) -> bytes:
        """JSON bytes; ``manifest=True`` leaves out node-local state (hot, pinned)."""
        document: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "dataset": self.dataset,
            "name": self.name,
            "generation": self.generation,
            "kind": self.kind.value,
            "frame_sizes": list(self.frame_sizes),
            "created_at": self.created_at,
            "envelope": None
            if self.envelope is None
            else {
                "key_id": self.envelope.wrapped.key_id,
                "wrapped": base64.b64encode(self.envelope.wrapped.blob).decode(),
                "nonce_prefix": base64.b64encode(self.envelope.nonce_prefix).decode(),
            },
        }
        if self.rows is not None:  # absent for raw shards (and in older records)
            document["rows"] = self.rows
        if self.frame_digests is not None:  # absent before the upload (and in older ones)
            document["frame_digests"] = base64.b64encode(self.frame_digests).decode()
        if not manifest:
            document.update(
                hot=self.hot,
                archived=self.archived,
                pinned=self.pinned,
                pinned_until=self.pinned_until,
            )
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> ShardRecord:
        """Inverse of :meth:`encode`; a manifest decodes as archived and not hot."""
        try:
            document = _document(raw, "a shard record")
            envelope = document["envelope"]
            return cls(
                dataset=_text(document["dataset"]),
                name=_text(document["name"]),
                generation=int(document["generation"]),
                kind=ShardKind(document["kind"]),
                frame_sizes=tuple(int(size) for size in document["frame_sizes"]),
                created_at=float(document["created_at"]),
                envelope=None if envelope is None else _envelope(envelope),
                hot=bool(document.get("hot", False)),
                archived=bool(document.get("archived", True)),
                pinned=bool(document.get("pinned", False)),
                pinned_until=float(document.get("pinned_until", 0.0)),
                rows=_optional_count(document.get("rows")),
                frame_digests=_frame_digests(
                    document.get("frame_digests"), len(document["frame_sizes"])
                ),
            )
        # RecursionError: nested too deep to decode; OverflowError: an infinite number
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as exc:
            raise IntegrityError(f"unreadable shard record: {exc}") from exc


def _envelope(value: Any) -> Envelope:
    """An envelope as a record holds it; raises ValueError for one no cipher can use (a
    key id that is no string, a nonce prefix of another length than a cipher takes:
    damage, which is then an unreadable record, not a caller's mistake at every read
    and an upload retried for ever)."""
    key_id = value["key_id"]
    if not isinstance(key_id, str):
        raise ValueError(f"a key id must be a string, got {type(key_id).__name__}")
    nonce_prefix = base64.b64decode(value["nonce_prefix"], validate=True)
    if len(nonce_prefix) != NONCE_PREFIX_BYTES:
        raise ValueError(f"a nonce prefix of {len(nonce_prefix)} bytes")
    return Envelope(WrappedKey(key_id, base64.b64decode(value["wrapped"])), nonce_prefix)


def _text(value: Any) -> str:
    """A name as a record holds it; raises ValueError for anything but a str that
    encodes as UTF-8 (a lone surrogate does not: keys are made of its bytes)."""
    if not isinstance(value, str):
        raise ValueError(f"a name must be a string, got {type(value).__name__}")
    value.encode()  # UnicodeEncodeError is a ValueError
    return value


def _frame_digests(value: Any, frames: int) -> bytes | None:
    """Frame digests as a record holds them (base64), if any; raises ValueError for
    anything but one digest per frame."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"frame_digests must be base64 text, got {type(value).__name__}")
    digests = base64.b64decode(value, validate=True)
    if len(digests) != frames * DIGEST_BYTES:
        raise ValueError(f"{len(digests)} bytes of frame digests for {frames} frames")
    return digests


def _optional_count(value: Any) -> int | None:
    """A row count that may be absent; raises ValueError for anything but an int in
    ``[0, MAX_ROWS]``."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ROWS:
        raise ValueError(f"a row count must be an int in [0, 2**63 - 1], got {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True)
class JournalOp:
    """One pending archive operation of the upload journal.

    ``upload``: copy generation ``generation`` of ``name`` to the archive.
    ``delete``: remove a generation's archive objects (a deleted shard, or an
    overwritten generation that was never archived).
    ``supersede``: remove an overwritten generation that was archived, once a newer
    generation of the shard is in the archive (uploading the current one first if not).
    ``outdated``: as ``supersede``, for an older generation a rebuild found beside the
    one it restored, which it never read: the current generation's archive object is
    checked against its digests first; if it does not match, the older generation
    becomes the shard's current one again instead (tierstore.engine.outdated).
    ``manifest``: rewrite a generation's manifest (after key rotation).
    ``dataset``: write (or, with ``name == "-"``, remove) a dataset's settings object.
    ``purge``: remove every archived generation older than ``generation`` whose
    manifest names the shard whose catalog key ends in ``bytes.fromhex(name)`` (a
    shard deleted while its record was unreadable; see tierstore.engine.damaged).
    """

    op: str
    dataset: str
    name: str = ""
    generation: int = 0
    nbytes: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            [self.op, self.dataset, self.name, self.generation, self.nbytes], separators=(",", ":")
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> JournalOp:
        op, dataset, name, generation, nbytes = json.loads(bytes(raw))
        return cls(op=op, dataset=dataset, name=name, generation=generation, nbytes=nbytes)


def encode_dataset(settings: DatasetSettings, first_generation: int = 0) -> bytes:
    """JSON bytes of a dataset's settings, and of the first generation it may hold
    (see :func:`first_generation_of`; 0, for none, is left out)."""
    document: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "encrypted": settings.encrypted,
        "durability": settings.durability.value,
        "hot_quota_bytes": settings.hot_quota_bytes,
        "policy": settings.policy,
    }
    if settings.backlog_quota_bytes:  # left out when unset: as earlier releases wrote it
        document["backlog_quota_bytes"] = settings.backlog_quota_bytes
    if settings.arrow_schema:
        document["arrow_schema"] = base64.b64encode(settings.arrow_schema).decode("ascii")
    if first_generation:
        document["first_generation"] = first_generation
    return json.dumps(document).encode()


def first_generation_of(raw: bytes | memoryview) -> int:
    """The first generation the dataset whose :func:`encode_dataset` bytes are ``raw``
    may hold: generations are numbered store-wide in the order they are taken, so a
    shard generation older than it belongs to an earlier dataset of the same name
    (deleted, its archive objects perhaps not yet). 0 for a dataset made before
    this was recorded. Raises IntegrityError for an unreadable value."""
    try:
        value = _document(raw, "a dataset's settings").get("first_generation", 0)
    except (ValueError, AttributeError, RecursionError) as exc:
        raise IntegrityError(f"unreadable dataset settings: {exc}") from exc
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise IntegrityError(f"unreadable dataset settings: first_generation {value!r:.40}")
    return value


def decode_dataset(raw: bytes | memoryview) -> DatasetSettings:
    """Inverse of :func:`encode_dataset`. Raises IntegrityError for an unreadable one."""
    try:
        document = _document(raw, "a dataset's settings")
        # Each value as written (DatasetSettings refuses one of the wrong type), except
        # a whole-number float quota: earlier releases stored what update_dataset got.
        quota = document.get("hot_quota_bytes", 0)
        if isinstance(quota, float) and quota.is_integer():
            quota = int(quota)
        return DatasetSettings(
            encrypted=document["encrypted"],
            durability=document["durability"],
            hot_quota_bytes=quota,
            backlog_quota_bytes=document.get("backlog_quota_bytes", 0),
            policy=document.get("policy", DEFAULT_POLICY_NAME),
            arrow_schema=base64.b64decode(document.get("arrow_schema", ""), validate=True),
        )
    except (ValueError, KeyError, TypeError, InvalidArgument, RecursionError, OverflowError) as exc:
        raise IntegrityError(f"unreadable dataset settings: {exc}") from exc


_ACCESS = struct.Struct("<Qdd")  # count, last access, decayed frequency as of last access
_ACCESS_V0 = struct.Struct("<Qd")  # before decayed frequencies: count, last access
#: More reads than any shard gets (a read a nanosecond for 146 years): a larger count is
#: damage, and adding to it would overflow the field.
_MAX_COUNT = 1 << 62


@dataclass(frozen=True, slots=True)
class AccessStats:
    """A shard generation's reads: how many, the last one, and a decayed frequency.

    ``frequency`` counts each read as 1, halved every half-life, valued at ``last``
    (so it never needs rewriting while no read happens). Packed in 24 bytes.
    """

    count: int = 0
    last: float = 0.0
    frequency: float = 0.0

    def frequency_at(self, now: float, half_life_s: float) -> float:
        """The decayed frequency valued at ``now`` (never more than at ``last``)."""
        return self.frequency * _decay(now - self.last, half_life_s)

    def with_read(self, now: float, half_life_s: float) -> AccessStats:
        """These statistics plus one read at ``now``. O(1)."""
        return AccessStats(
            self.count + 1,
            max(self.last, now),
            self.frequency_at(max(self.last, now), half_life_s) + 1.0,
        )

    def merged(self, other: AccessStats, half_life_s: float) -> AccessStats:
        """Both sets of reads together (each frequency valued at the later ``last``)."""
        last = max(self.last, other.last)
        return AccessStats(
            self.count + other.count,
            last,
            self.frequency_at(last, half_life_s) + other.frequency_at(last, half_life_s),
        )

    def valued_at(self, now: float, half_life_s: float) -> AccessStats:
        """The same reads with ``frequency`` valued at ``now`` (for display)."""
        return replace(self, frequency=self.frequency_at(max(now, self.last), half_life_s))

    def pack(self) -> bytes:
        return _ACCESS.pack(self.count, self.last, self.frequency)

    @classmethod
    def unpack(cls, raw: bytes) -> AccessStats:
        """Inverse of :meth:`pack`; also reads the older 16-byte form (no frequency).
        Raises ValueError for bytes of another length, or a time or frequency that is
        not a finite number not below zero (damage: LMDB keeps no checksum)."""
        if len(raw) == _ACCESS_V0.size:
            count, last = _ACCESS_V0.unpack(raw)
            frequency = 0.0
        elif len(raw) == _ACCESS.size:
            count, last, frequency = _ACCESS.unpack(raw)
        else:
            raise ValueError(f"access statistics of {len(raw)} bytes, not {_ACCESS.size}")
        if not (0 <= last < math.inf and 0 <= frequency < math.inf and count < _MAX_COUNT):
            raise ValueError(
                f"access statistics out of range: count {count}, last {last}, frequency {frequency}"
            )
        return cls(count, last, frequency)


def _decay(elapsed: float, half_life_s: float) -> float:
    """The factor a frequency shrinks by over ``elapsed`` seconds (1 for none or less)."""
    return math.exp2(-elapsed / half_life_s) if elapsed > 0 else 1.0
