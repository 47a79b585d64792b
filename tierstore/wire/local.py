"""Local reads ⇄ tierstore.v1 messages, and the host identity both ends compare.

A reader on the server's own host may map the hot tier itself (docs/local-reads.md).
It does so only when the grant's :class:`HostIdentity` equals its own — the same
kernel boot (``boot_id``) and the same pid namespace: LMDB tells live readers by
their pid, so a reader in another pid namespace could see its reader slot taken for
a dead process's and its pages reused under it. The hostname is shown in messages
only (containers share a kernel but not a hostname).

Every field of a message is validated on the way in (:class:`InvalidArgument`). A read
report is checked by the server before it is even parsed
(:mod:`tierstore.server.requestchecks`): parsing
makes an object of some 60 bytes for every entry, and an empty entry is 2 bytes on
the wire, so the entry limit checked after parsing would come too late.
"""

from __future__ import annotations

import functools
import math
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tierstore.engine.localreads import LocalReadCount
from tierstore.errors import InvalidArgument
from tierstore.naming import MAX_SHARD_NAME_BYTES, validate_shard_name
from tierstore.v1 import shards_pb2 as pb

__all__ = [
    "MAX_REPORTED_READS",
    "MAX_REPORT_BYTES",
    "MAX_REPORT_ENTRIES",
    "HostIdentity",
    "LocalGrant",
    "grant_from_pb",
    "grant_to_pb",
    "read_counts_from_pb",
    "read_counts_to_pb",
    "this_host",
]

#: Entries (shard generations) one ReportLocalReads may carry.
MAX_REPORT_ENTRIES = 4096
#: Reads one ReportLocalReads may count in all: each costs the server a few
#: microseconds of bookkeeping, so a report is bounded work.
MAX_REPORTED_READS = 65536
#: The longest grant a server may give (a grant is re-asked for when it runs out).
_MAX_GRANT_TTL_S = 86400.0
#: The longest dataset name (tierstore.naming: 1 to 63 ASCII characters).
_MAX_DATASET_NAME_BYTES = 63


def _varint_bytes(value: int) -> int:
    """Bytes of ``value`` as a protobuf varint (7 bits a byte)."""
    return max(1, -(-value.bit_length() // 7))


def _delimited_bytes(payload: int) -> int:
    """Bytes of a length-delimited field numbered below 16: tag, length, payload."""
    return 1 + _varint_bytes(payload) + payload


#: The longest ``LocalReadCount`` that :func:`read_counts_from_pb` accepts (shards.proto):
#: the shard name (1 + 2 + 1024), the uint64 generation (1 + 10), the uint32 count (1 + 5).
_MAX_ENTRY_BYTES = (
    _delimited_bytes(MAX_SHARD_NAME_BYTES)
    + (1 + _varint_bytes(2**64 - 1))
    + (1 + _varint_bytes(2**32 - 1))
)
#: The longest ReportLocalReads request whose fields all pass the checks of
#: :func:`read_counts_from_pb` (4,288,577 bytes): the dataset name and
#: :data:`MAX_REPORT_ENTRIES` entries of :data:`_MAX_ENTRY_BYTES`. A protobuf encoder
#: writes each field once, in canonical form, so no valid report is longer.
MAX_REPORT_BYTES = _delimited_bytes(_MAX_DATASET_NAME_BYTES) + MAX_REPORT_ENTRIES * (
    _delimited_bytes(_MAX_ENTRY_BYTES)
)


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """Which kernel boot and pid namespace a process runs in."""

    boot_id: str
    pid_namespace: str
    hostname: str = ""

    @property
    def known(self) -> bool:
        """Whether both parts could be read (Linux ``/proc`` is needed)."""
        return bool(self.boot_id and self.pid_namespace)

    def same_as(self, other: HostIdentity) -> bool:
        """Same boot and pid namespace, both known (the hostname is not compared)."""
        return (
            self.known
            and self.boot_id == other.boot_id
            and self.pid_namespace == other.pid_namespace
        )


@functools.cache
def this_host(proc: Path = Path("/proc")) -> HostIdentity:
    """This process's identity; parts that cannot be read are ``""`` (never raises).

    Cached: neither part changes during a process's life (a forked child shares both).
    """
    try:
        boot_id = (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    try:
        pid_namespace = os.readlink(proc / "self/ns/pid")
    except OSError:
        pid_namespace = ""
    return HostIdentity(boot_id, pid_namespace, socket.gethostname())


@dataclass(frozen=True, slots=True)
class LocalGrant:
    """Permission to read one dataset's hot frames in place for ``ttl_s`` seconds."""

    path: Path
    map_size: int
    #: ``st_dev`` and ``st_ino`` of ``data.mdb``, so the reader knows it opened that file.
    device: int
    inode: int
    host: HostIdentity
    server_pid: int
    ttl_s: float


def grant_to_pb(grant: LocalGrant) -> pb.LocalGrant:
    return pb.LocalGrant(
        path=str(grant.path),
        map_size=grant.map_size,
        data_device=grant.device,
        data_inode=grant.inode,
        host=pb.HostIdentity(
            boot_id=grant.host.boot_id,
            pid_namespace=grant.host.pid_namespace,
            hostname=grant.host.hostname,
        ),
        server_pid=grant.server_pid,
        ttl_s=grant.ttl_s,
    )


def grant_from_pb(message: pb.LocalGrant) -> LocalGrant:
    """Raises InvalidArgument for a grant that names no usable place or lifetime."""
    path = Path(message.path)
    if not message.path or not path.is_absolute() or "\x00" in message.path:
        raise InvalidArgument(f"a local grant names no absolute path ({message.path[:200]!r})")
    if message.map_size <= 0 or message.server_pid <= 0:
        raise InvalidArgument("a local grant needs a map size and the server's pid")
    if not (math.isfinite(message.ttl_s) and 0 < message.ttl_s <= _MAX_GRANT_TTL_S):
        raise InvalidArgument(f"a local grant's ttl_s must be in (0, 1 day], not {message.ttl_s}")
    host = message.host
    return LocalGrant(
        path=path,
        map_size=message.map_size,
        device=message.data_device,
        inode=message.data_inode,
        host=HostIdentity(host.boot_id, host.pid_namespace, host.hostname),
        server_pid=message.server_pid,
        ttl_s=message.ttl_s,
    )


def read_counts_to_pb(dataset: str, counts: Iterable[LocalReadCount]) -> pb.ReportLocalReadsRequest:
    return pb.ReportLocalReadsRequest(
        dataset=dataset,
        reads=[
            pb.LocalReadCount(shard=c.shard, generation=c.generation, count=c.count) for c in counts
        ],
    )


def read_counts_from_pb(message: pb.ReportLocalReadsRequest) -> list[LocalReadCount]:
    """The reported reads. Raises InvalidName for a bad shard name, InvalidArgument for
    a count of 0, more than :data:`MAX_REPORT_ENTRIES` entries or more than
    :data:`MAX_REPORTED_READS` reads in all."""
    if len(message.reads) > MAX_REPORT_ENTRIES:
        raise InvalidArgument(
            f"a report holds at most {MAX_REPORT_ENTRIES} entries, not {len(message.reads)}"
        )
    counts = []
    total = 0
    for entry in message.reads:
        validate_shard_name(entry.shard)
        if entry.count == 0:
            raise InvalidArgument(f"a reported read count of {entry.shard!r} is 0")
        total += entry.count
        counts.append(LocalReadCount(entry.shard, entry.generation, entry.count))
    if total > MAX_REPORTED_READS:
        raise InvalidArgument(f"a report counts at most {MAX_REPORTED_READS} reads, not {total}")
    return counts
