"""The one exception tree of tierstore.

Every error the package raises on purpose derives from :class:`TierstoreError`.
Backend errors (lmdb, botocore, cryptography, pyarrow) are translated where they
enter the package (``raise Mapped(...) from exc``), so callers never have to know
which library sits underneath. Each class names the gRPC status code it maps to,
so the service and the client can share one table later.

::

    TierstoreError
    ├── InvalidArgument              INVALID_ARGUMENT
    │   ├── InvalidName                  dataset or shard name breaks the naming rules
    │   ├── InvalidRange                 byte or frame range that no shard could satisfy
    │   │   └── RangePastEnd                 starts past the shard's end   OUT_OF_RANGE
    │   ├── OversizeFrame                a frame (or one Arrow row) over the frame limit
    │   ├── MalformedArrow               bytes that are not the Arrow data they claim to be
    │   ├── UnsupportedData              a value the shard format cannot store
    │   ├── SchemaMismatch               a shard without its dataset's Arrow schema
    │   ├── UnknownPolicy                a placement-policy name no policy answers to
    │   ├── InvalidPlan                  an access plan that names unknown shards, or is too long
    │   └── MalformedTrace               an access-trace file that does not parse
    ├── NotFound                     NOT_FOUND
    │   ├── DatasetNotFound
    │   ├── ShardNotFound
    │   └── PlanNotFound                 no live access plan of that job id (closed or expired)
    ├── AlreadyExists                ALREADY_EXISTS
    ├── Unauthenticated              UNAUTHENTICATED     missing, bad, expired or revoked credential
    ├── PermissionDenied             PERMISSION_DENIED   authenticated, but no role allows the call
    ├── FailedPrecondition           FAILED_PRECONDITION
    │   ├── UnknownKeyId                 a wrapped key names a master key we do not hold
    │   ├── EncryptionUnavailable        encrypted dataset, but no master key configured
    │   ├── KeyRotationRefused           key file unusable, or a rotation would drop a key
    │   ├── WrongShardKind               e.g. read_table() on a raw-bytes shard
    │   ├── PlanShardsChanged            a sampler plan's shards are no longer the prefix's
    │   ├── NewerFormat                  a store or record a newer release wrote, in its format
    │   └── StoreClosed
    ├── ResourceExhausted            RESOURCE_EXHAUSTED
    │   ├── BacklogFull                  un-archived bytes passed the configured cap
    │   ├── HotTierFull                  the LMDB map is full (disk full)
    │   ├── PlanLimitReached             too many live access plans (or entries) held
    │   ├── QuotaExceeded                a dataset's hot bytes would pass its quota
    │   └── ReaderTableFull              LMDB's reader table is full (too many open snapshots)
    ├── DataLoss                     DATA_LOSS
    │   └── IntegrityError               checksum or AEAD tag mismatch, truncation, reorder
    └── Unavailable                  UNAVAILABLE
        ├── ArchiveUnavailable           the archive did not answer (or answered 5xx) after retries
        │   └── NotArchivedYet               write-through: done here, not in the archive yet
        ├── ServerBusy                   refused before anything was done: retried, even a put
        └── ServerCertificateRejected    the server's TLS certificate did not verify: not retried

A ``DataLoss`` is raised only after any destination buffer has been zeroed: no
unauthenticated or unverified byte ever reaches the caller.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ArchiveUnavailable",
    "BacklogFull",
    "DataLoss",
    "DatasetNotFound",
    "EncryptionUnavailable",
    "FailedPrecondition",
    "HotTierFull",
    "IntegrityError",
    "InvalidArgument",
    "InvalidName",
    "InvalidPlan",
    "InvalidRange",
    "KeyRotationRefused",
    "KeyUnwrapError",
    "MalformedArrow",
    "MalformedTrace",
    "NewerFormat",
    "NotArchivedYet",
    "NotFound",
    "OversizeFrame",
    "PermissionDenied",
    "PlanLimitReached",
    "PlanNotFound",
    "PlanShardsChanged",
    "QuotaExceeded",
    "RangePastEnd",
    "ReaderTableFull",
    "ResourceExhausted",
    "SchemaMismatch",
    "ServerBusy",
    "ServerCertificateRejected",
    "ShardNotFound",
    "StoreClosed",
    "TierstoreError",
    "Unauthenticated",
    "Unavailable",
    "UnknownKeyId",
    "UnknownPolicy",
    "UnsupportedData",
    "WrongShardKind",
]


class TierstoreError(Exception):
    """Root of every error tierstore raises on purpose."""

    #: gRPC status code name this error maps to (see the tree above).
    status_code: str = "INTERNAL"
    #: Set by the client on an error for a call cut off (a deadline, a lost connection)
    #: after its request may have reached the server, which did not answer: what the
    #: call asked may or may not have been done.
    outcome_unknown: bool = False


class InvalidArgument(TierstoreError):
    """The caller passed something that can never succeed as given."""

    status_code = "INVALID_ARGUMENT"


class InvalidName(InvalidArgument):
    """A dataset or shard name breaks the naming rules."""


class InvalidRange(InvalidArgument):
    """A byte or frame range is malformed: negative, not whole numbers, or both kinds."""


class RangePastEnd(InvalidRange):
    """A byte or frame range starts past the end of the shard (or value).

    gRPC's OUT_OF_RANGE, not INVALID_ARGUMENT: unlike a malformed range, it could be
    met once the shard is rewritten longer. Still an :class:`InvalidRange` to catch.
    """

    status_code = "OUT_OF_RANGE"


class OversizeFrame(InvalidArgument):
    """A frame, or a single Arrow row or schema, exceeds the frame size limit."""


class MalformedArrow(InvalidArgument):
    """Bytes that claim to be Arrow IPC messages do not parse as such."""


class UnsupportedData(InvalidArgument):
    """A value of a type (or dtype) that the shard format cannot store."""


class SchemaMismatch(InvalidArgument):
    """A shard put into a dataset with an Arrow schema does not have that schema (or
    is raw bytes)."""


class UnknownPolicy(InvalidArgument):
    """A placement-policy name that no policy answers to."""


class InvalidPlan(InvalidArgument):
    """An access plan that names unknown shards, is longer than allowed, or is malformed."""


class MalformedTrace(InvalidArgument):
    """An access-trace file that is truncated or does not parse."""


class NotFound(TierstoreError):
    """Something named does not exist."""

    status_code = "NOT_FOUND"


class DatasetNotFound(NotFound):
    """No dataset of that name."""


class ShardNotFound(NotFound):
    """No shard of that name in the dataset."""


class PlanNotFound(NotFound):
    """No live access plan with that job id (it was closed, or it expired)."""


class AlreadyExists(TierstoreError):
    """Creating something that already exists."""

    status_code = "ALREADY_EXISTS"


class Unauthenticated(TierstoreError):
    """The caller's credentials are missing or not valid.

    The message is deliberately the same for every cause, so a caller learns nothing about
    which tokens exist; ``reason`` (e.g. ``"malformed"``, ``"expired"``) says which check
    failed, and ``token_id`` which token (its public id, when the token had the shape of
    one), for the server's audit log only — never send them to the caller.
    """

    status_code = "UNAUTHENTICATED"

    def __init__(
        self,
        message: str = "missing or invalid credentials",
        *,
        reason: str = "",
        token_id: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.token_id = token_id


class PermissionDenied(TierstoreError):
    """The caller is authenticated, but no role it holds allows the call."""

    status_code = "PERMISSION_DENIED"


class FailedPrecondition(TierstoreError):
    """The request is valid but the system is not in a state to serve it."""

    status_code = "FAILED_PRECONDITION"


class UnknownKeyId(FailedPrecondition):
    """A wrapped data key names a master key id that the keyring does not hold."""


class EncryptionUnavailable(FailedPrecondition):
    """An encrypted dataset was used but no master key is configured."""


class KeyRotationRefused(FailedPrecondition):
    """A master-key rotation did not go ahead: the key file could not be read or written,
    or it no longer holds every key the running keyring holds (writing it would drop a key
    that records may be wrapped with). The key file and the records are unchanged."""


class WrongShardKind(FailedPrecondition):
    """The shard holds another kind of data than the call asks for."""


class PlanShardsChanged(FailedPrecondition):
    """A sampler plan was made over other shard names than the dataset has under its
    prefix now (shards were added or deleted since its reader listed them): the order
    regenerated from it would not be the reader's. Declare the explicit shard list."""


class NewerFormat(FailedPrecondition):
    """A hot tier, catalog record or archive object written by a newer tierstore
    release, in a format newer than this release reads: read as if older, its newer
    fields would be dropped when it is written again."""


class StoreClosed(FailedPrecondition):
    """The store was closed."""


class ResourceExhausted(TierstoreError):
    """A configured limit or the disk is full; retry later."""

    status_code = "RESOURCE_EXHAUSTED"


class BacklogFull(ResourceExhausted):
    """Un-archived bytes passed the configured cap; writes wait for the mover."""


class HotTierFull(ResourceExhausted):
    """The hot tier (LMDB map) has no room for the write."""


class PlanLimitReached(ResourceExhausted):
    """A declared access plan would pass a bound of the plan book (per caller or per
    node, in plans or entries); close finished plans or let them expire."""


class QuotaExceeded(ResourceExhausted):
    """A dataset's hot bytes would pass its hot-tier quota and not enough of its own
    archived, unpinned shards could be evicted; retry once the mover has archived more
    of them, or raise the quota."""


class ReaderTableFull(ResourceExhausted):
    """Every slot of the hot tier's LMDB reader table is held by a live read
    transaction, most likely by local readers on this host keeping many snapshots;
    retry once some are released."""


class DataLoss(TierstoreError):
    """Stored bytes failed verification; nothing unverified was returned."""

    status_code = "DATA_LOSS"


class IntegrityError(DataLoss):
    """A frame's checksum or AEAD tag did not verify, or frames are missing or out of order."""


class KeyUnwrapError(IntegrityError):
    """A data key did not unwrap with the master key of its key id: a wrong master key
    under that id, or a tampered key record. The frames themselves may be intact."""


class Unavailable(TierstoreError):
    """A dependency did not answer; the call may succeed if retried."""

    status_code = "UNAVAILABLE"


class ArchiveUnavailable(Unavailable):
    """The archive tier was unreachable or kept failing (5xx) through all retries."""


class NotArchivedYet(ArchiveUnavailable):
    """A write-through put, delete or dataset delete that is done here (committed
    locally, or deleted) but that the archive has not taken yet: the mover keeps trying.
    Not retried (a retry would put or delete again); a caller counts it as done here,
    and not yet durable in the archive."""


class ServerBusy(Unavailable):
    """The node refused the call before changing anything: the places for such calls
    (shard streams, calls waiting on the archive), or the caller's share of them or of
    the node's workers, or the workers that callers other than the node's admins may
    hold, are all taken (:mod:`tierstore.server.places`,
    :mod:`tierstore.server.callerworkers`). Most come as the call does; two come
    later, after work but still before any change: a write-through put refused at its
    commit (its shard sent, nothing stored) and a read that falls to the archive part
    way (some of its bytes sent). The client makes even a put again after it, as a put
    that never left the client is (but not one from a source it can read once, a
    reader or a stream, refused after it was read: that raises ServerBusy), and a read
    again from its start."""


class ServerCertificateRejected(Unavailable):
    """The client could not verify the server's TLS certificate: most often the wrong CA
    file, or an address whose host name the certificate does not hold. Raised by the
    client, never sent by a server. Unlike other Unavailable errors
    it is not worth retrying — the same CA rejects the same certificate again — so the
    client and the DataLoader plugin raise it at once. A subclass of Unavailable so
    that code catching the connection failures it catches before still does."""
