"""The local read path: reading the hot tier in place when the server is on this host.

When a reader runs on the serving node, the server grants (after authorization) the
hot tier's location, and the client reads frames straight out of the LMDB map in its
own process (docs/local-reads.md): zero copies for plaintext, exactly one
``decrypt_into`` per frame for ciphertext. A read:

1. takes the dataset's grant (``OpenLocal``, kept for its lifetime; a refusal is
   remembered for a while) — only if the server shares this host's boot and pid
   namespace and is another process — and this process's
   :class:`~tierstore.client.hotmap.HotMap`;
2. looks the shard up in one read transaction; a shard that is not hot returns
   ``None``, and so does any failure: the caller then reads through the service,
   which promotes a cold shard and counts the miss. A shard generation written since
   the grant was asked for is read only under a grant asked for again: the dataset
   may have been deleted (its grants with it) and made again for other readers;
3. plaintext: verifies each frame's xxh3 trailer and hands the payload out in place
   (Arrow buffers over the map, holding the snapshot open until the last of them is
   collected; past ``max_snapshots`` open snapshots it copies, and so it does for a
   small frame that LMDB stored at an address Arrow may not use); encrypted: takes the
   generation's data key (``GrantDataKey``, cached) and decrypts each frame exactly
   once into its own buffer from the allocator (64-byte aligned; pinned if asked);
4. counts the read for the server (:mod:`tierstore.client.reports`).

:class:`DataLoss` is the one error that propagates: nothing unverified is returned
(a failed tag leaves its buffer zeroed), and the service would read the same
damaged bytes. So does :class:`WrongShardKind` for an Arrow read of a raw shard,
told by the record before any frame is read (the whole shard was read, and
decrypted, first), as the stream's header tells it.

Thread safety: a :class:`LocalReads` is safe to share between threads. Fork safety:
it may be inherited by forked children, which read with their own environment
(see :mod:`tierstore.client.hotmap`) and report their own reads.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import pyarrow as pa

from tierstore.client.allocation import FrameAllocator, aligned_buffer, frame_allocator
from tierstore.client.forklocks import ForkSafeLock
from tierstore.client.hotmap import (
    HotMap,
    HotSession,
    HotTierReplaced,
    close_retired,
    hot_map,
    newest_map,
)
from tierstore.client.keycache import DataKeys
from tierstore.client.receive import open_all_frames, open_pieces_into
from tierstore.client.reports import ReadReporter
from tierstore.engine.localreads import DataKey, LocalReadCount
from tierstore.engine.reads import plan_reads
from tierstore.engine.records import ShardRecord
from tierstore.errors import (
    DataLoss,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    ResourceExhausted,
    ServerBusy,
    TierstoreError,
    Unavailable,
    WrongShardKind,
)
from tierstore.frames import FrameSealer, shard_context
from tierstore.types import ShardKind, check_bool, seconds_up_to, whole_number
from tierstore.verifyahead import collect
from tierstore.wire.local import LocalGrant, this_host

__all__ = [
    "LocalReadOptions",
    "LocalReadRpc",
    "LocalReads",
    "LocalShard",
    "ReadCounter",
    "ReadCounts",
]

log = logging.getLogger(__name__)

#: After the server refused local reads (off, or not this host), ask again this late.
_REFUSED_RETRY_S = 60.0
#: After OpenLocal failed otherwise (no access, no such dataset, unreachable): the
#: service answers the read itself, and says why.
_FAILED_RETRY_S = 1.0
#: After the server refused a grant for now (its reader table is more than half
#: taken, or this caller holds its share of the node's workers): the service answers
#: the reads, and the grant is asked for again this late.
_BUSY_RETRY_S = 5.0
#: A byte range without a length reaches to the end (as the server reads it).
_TO_THE_END = 1 << 62
#: Arrow's required buffer alignment: frames handed out in place must start on it.
_ARROW_ALIGNMENT = 8


@dataclass(frozen=True, slots=True)
class LocalReadOptions:
    """How a client reads locally (``tierstore.connect(local_reads=...)`` turns it on or off)."""

    enabled: bool = True
    #: zero-copy snapshots this process keeps open at once (shared by its clients; the
    #: first client's value holds); plaintext reads past it copy.
    max_snapshots: int = 16
    #: reads are reported to the server every this many reads or seconds.
    report_every_reads: int = 256
    report_interval_s: float = 1.0
    #: data keys kept per process (one per encrypted shard generation read).
    max_keys: int = 4096
    #: where decrypted frames land; None: 64-byte aligned, pinned per ``pin_memory``.
    allocate: FrameAllocator | None = None
    #: pin frames for CUDA (torch is imported to try); the caller then keeps a view alive
    #: until its copy to the GPU has finished (tierstore/client/allocation.py says why).
    pin_memory: bool = False

    def __post_init__(self) -> None:
        for name in ("enabled", "pin_memory"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        for name, least in (("max_snapshots", 0), ("report_every_reads", 1), ("max_keys", 1)):
            value = whole_number(getattr(self, name))
            if value is None or value < least:
                raise InvalidArgument(
                    f"{name} must be a whole number >= {least}, not {getattr(self, name)!r:.40}"
                )
            object.__setattr__(self, name, value)
        if seconds_up_to(self.report_interval_s, sys.float_info.max) is None:
            raise InvalidArgument(
                "report_interval_s must be a positive number of seconds, not "
                f"{self.report_interval_s!r:.40}"
            )


@dataclass(frozen=True, slots=True)
class ReadCounts:
    """Which path served this client's reads (``Client.read_counts``), since it was made."""

    #: reads served in place from the hot tier.
    local: int = 0
    #: reads served through the service.
    grpc: int = 0
    #: local attempts that went through the service instead (cold shard, refused, failed).
    fallbacks: int = 0
    #: local plaintext reads that copied because ``max_snapshots`` snapshots were open.
    copies: int = 0


class ReadCounter:
    """Mutable :class:`ReadCounts`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = ForkSafeLock()
        self._counts = ReadCounts()

    def bump(self, name: str) -> None:
        with self._lock:
            self._counts = replace(self._counts, **{name: getattr(self._counts, name) + 1})

    def snapshot(self) -> ReadCounts:
        return self._counts


class LocalReadRpc(Protocol):
    """The three calls the local path makes (the client's channel, token and deadlines)."""

    def open_local(self, dataset: str) -> LocalGrant:
        """``OpenLocal``. Raises the tierstore error the server answered."""
        ...  # pragma: no cover - a protocol

    def grant_data_key(self, dataset: str, shard: str, generation: int) -> DataKey:
        """``GrantDataKey``. Raises the tierstore error the server answered."""
        ...  # pragma: no cover - a protocol

    def report(self, dataset: str, counts: list[LocalReadCount], wait_for_ready: bool) -> None:
        """``ReportLocalReads``, waiting for a channel still connecting if
        ``wait_for_ready``. Raises the tierstore error the server answered."""
        ...  # pragma: no cover - a protocol


@dataclass(frozen=True, slots=True)
class LocalShard:
    """What a local read returns: the shard's kind and generation, and its payload buffers."""

    kind: ShardKind
    generation: int
    #: one buffer per frame (whole-shard reads) or one buffer (ranges).
    buffers: tuple[pa.Buffer, ...]
    #: whether the buffers point into the LMDB map (and hold a snapshot open).
    zero_copy: bool
    #: whether the shard is kept encrypted (its buffers hold the plaintext).
    encrypted: bool = False

    @classmethod
    def of(
        cls, record: ShardRecord, buffers: tuple[pa.Buffer, ...], *, zero_copy: bool
    ) -> LocalShard:
        """What a local read of ``record`` returns: ``buffers``."""
        return cls(record.kind, record.generation, buffers, zero_copy, record.envelope is not None)


@dataclass(frozen=True, slots=True)
class _Route:
    """A dataset's grant as this client holds it: a map to read, or None (refused)."""

    hot: HotMap | None
    until: float  # time.monotonic()
    #: the map's next generation before the grant was asked for: a shard generation
    #: at or past it was written since, perhaps to a dataset of the name made again
    #: (whose roles are not the grant's), and needs a grant asked for after it.
    ceiling: int = 0
    #: refused for now, not for want of access: a busy reader table, no server reached.
    transient: bool = False
    #: a grant asked for again (for a newer shard) and refused for now: not asked for
    #: again before this (the newer shards go through the service meanwhile).
    renew_after: float = 0.0


class _Newer:
    """What a read in place returns for a shard newer than its grant (see _Route)."""


_NEWER = _Newer()


_Build = Callable[[HotSession, ShardRecord, FrameSealer], LocalShard]


def _reporting(
    rpc: LocalReadRpc, lock: ForkSafeLock, routes: dict[str, _Route]
) -> Callable[[str, list[LocalReadCount], bool], None]:
    """``rpc.report``, where a refusal (local reads turned off there, as by a restart
    with ``--no-local-reads``) also ends every grant in ``routes`` now, not when it runs
    out: reads in place went on for up to a grant's lifetime, and none was counted.
    (Not a method of the reader: its reporter would hold it, a cycle that kept a
    dropped client's keys unzeroed until a collection.)"""

    def report(dataset: str, counts: list[LocalReadCount], wait_for_ready: bool) -> None:
        try:
            rpc.report(dataset, counts, wait_for_ready)
        except FailedPrecondition:
            with lock:
                routes.clear()
            raise

    return report


class LocalReads:
    """Reads hot shards in place for one client (see the module docstring)."""

    def __init__(
        self, rpc: LocalReadRpc, options: LocalReadOptions, counts: ReadCounter | None = None
    ) -> None:
        self._rpc = rpc
        self.options = options
        self.counts = counts or ReadCounter()
        # Keys live as long as their dataset's grant (same clock as the routes'): swept
        # at every local read and on the reporter's thread.
        self._keys = DataKeys(options.max_keys, time.monotonic)
        self._lock = ForkSafeLock()
        self._routes: dict[str, _Route] = {}
        self.reporter = ReadReporter(
            _reporting(rpc, self._lock, self._routes),
            every_reads=options.report_every_reads,
            interval_s=options.report_interval_s,
            on_wake=self._keys.expire,
        )
        self._allocate = options.allocate
        self._logged: set[str] = set()

    # What the client calls.

    def read_frames(self, dataset: str, shard: str) -> LocalShard | None:
        """The whole Arrow shard, one buffer per frame; ``None``: read it through the
        service.

        Raises DataLoss (a frame failed verification), WrongShardKind for a raw shard
        (before any frame is read, no key asked for, no read counted) and nothing else.
        """
        return self._read(dataset, shard, self._frames, arrow=True)

    def read_range(
        self,
        dataset: str,
        shard: str,
        offset: int,
        length: int | None,
        allocate: FrameAllocator | None = None,
    ) -> LocalShard | None:
        """Bytes ``[offset, offset + length)`` in one 64-byte-aligned buffer from
        ``allocate`` (by default the allocator; a download's maps its file) — one copy,
        or one decryption per frame; ``None``: read them through the service. Raises
        DataLoss."""

        def build(session: HotSession, record: ShardRecord, sealer: FrameSealer) -> LocalShard:
            return self._range(session, record, sealer, offset, length, allocate)

        return self._read(dataset, shard, build)

    def flush(self) -> None:
        """Report the reads counted so far to the server, now."""
        self.reporter.flush()

    def close(self) -> None:
        """Report what is pending, forget grants and zero the data keys (reads may go on:
        they ask again)."""
        self.reporter.close()
        self._keys.clear()
        with self._lock:
            self._routes.clear()

    # One read.

    def _read(
        self, dataset: str, shard: str, build: _Build, arrow: bool = False
    ) -> LocalShard | None:
        """A read through ``build``; ``arrow``: of an Arrow shard only (else
        WrongShardKind)."""
        result = self._read_in(self._route(dataset), dataset, shard, build, arrow)
        if result is _NEWER:
            # Written since the grant was asked for: the dataset may have been deleted
            # and made again meanwhile, its grants (ours among them) gone with it. Only
            # a grant asked for now covers the shard. (Newer than that one too: written
            # again at once, which the service reads.)
            route = self._route(dataset, renew=True)
            result = self._read_in(route, dataset, shard, build, arrow)
        if isinstance(result, _Newer):
            result = None
        self.counts.bump("fallbacks" if result is None else "local")
        return result

    def _read_in(
        self, route: _Route, dataset: str, shard: str, build: _Build, arrow: bool
    ) -> LocalShard | _Newer | None:
        hot = route.hot
        if hot is None:
            return None
        try:
            return self._read_hot(hot, route.ceiling, dataset, shard, build, arrow)
        except (DataLoss, WrongShardKind):
            raise
        except HotTierReplaced as exc:
            # The node restarted on a new hot tier: ask for a grant to it next time.
            with self._lock:
                self._routes.pop(dataset, None)
            hot.retire()
            self._note("replaced", f"{exc}; reading through the service")
        except Exception as exc:  # any failure: the service reads it instead
            self._note(
                type(exc).__name__,
                f"a local read failed ({type(exc).__name__}: {exc}); reading through the "
                "service instead",
            )
        return None

    def _read_hot(
        self, hot: HotMap, ceiling: int, dataset: str, shard: str, build: _Build, arrow: bool
    ) -> LocalShard | _Newer | None:
        for _ in range(2):  # a data key is fetched between two snapshots; once is enough
            with hot.session() as session:
                record = session.record(dataset, shard)
                if record is None or not record.hot:
                    return None  # the service says it is missing, or reads and promotes it
                if record.generation >= ceiling:
                    return _NEWER  # not covered by the grant: ask again first
                if arrow and record.kind is ShardKind.RAW:  # before any frame is read
                    raise WrongShardKind(f"{dataset}/{shard} holds raw bytes, not Arrow data")
                sealer = self._sealer(record)
                if sealer is not None:
                    result = build(session, record, sealer)
                    self.reporter.add(dataset, shard, record.generation)
                    return result
                wanted = record.generation
            # Outside the snapshot: a key grant is a round trip to the server.
            key = self._rpc.grant_data_key(dataset, shard, wanted)
            self._keys.put(dataset, shard, wanted, key.key, key.nonce_prefix)
            # Its sweeper: the key goes with its grant even if no read here succeeds.
            self.reporter.start()
        return None

    def _sealer(self, record: ShardRecord) -> FrameSealer | None:
        """The record's sealer; ``None`` while an encrypted generation's key is missing."""
        context = shard_context(record.dataset, record.name, record.generation)
        sizes = record.frame_sizes
        if record.envelope is None:
            return FrameSealer(context, len(sizes), frame_sizes=sizes)
        cipher = self._keys.get(record.dataset, record.name, record.generation)
        return None if cipher is None else FrameSealer(context, len(sizes), cipher, sizes)

    def _frames(self, session: HotSession, record: ShardRecord, sealer: FrameSealer) -> LocalShard:
        indexes = range(len(record.frame_sizes))
        lookup = _frame_lookup(session, record, indexes)
        if sealer.cipher is not None:
            buffers = open_all_frames(sealer, indexes, lookup, self.allocator())
            return LocalShard.of(record, tuple(buffers), zero_copy=False)
        lease = session.lease()
        if lease is None:
            self.counts.bump("copies")
        # Verified on two threads at once, still in place.
        payloads = collect(len(indexes), lookup, sealer.open)
        in_place = False
        out = []
        for payload in payloads:
            if lease is not None and pa.py_buffer(payload).address % _ARROW_ALIGNMENT == 0:
                out.append(lease.keep(payload))
                in_place = True
            else:
                # A small frame (up to ~2 KiB) sits inside a B-tree page at any even
                # address, and Arrow wants 8-byte-aligned buffers: it is copied. Larger
                # frames have pages of their own and start 16 bytes in: never copied.
                out.append(_copy(payload))
        return LocalShard.of(record, tuple(out), zero_copy=in_place)

    def _range(
        self,
        session: HotSession,
        record: ShardRecord,
        sealer: FrameSealer,
        offset: int,
        length: int | None,
        allocate: FrameAllocator | None,
    ) -> LocalShard:
        # A range is one contiguous, 64-byte-aligned buffer (Client.get's promise), so it
        # costs one copy even from a plaintext frame (a frame in the map starts 16 bytes
        # into its page): verified and copied, or decrypted, straight into place.
        slices = plan_reads(record.frame_sizes, (offset, _TO_THE_END if length is None else length))
        total = sum(piece.stop - piece.start for piece in slices)
        out = (allocate or self.allocator())(total)
        pieces = [(piece.index, piece.start, piece.stop) for piece in slices]
        lookup = _frame_lookup(session, record, [piece.index for piece in slices])
        open_pieces_into(sealer, pieces, lookup, memoryview(out).cast("B"))
        return LocalShard.of(record, (out,), zero_copy=False)

    def allocator(self) -> FrameAllocator:
        """Where decrypted frames land (decided on first use in this client)."""
        if self._allocate is None:
            self._allocate = frame_allocator(self.options.pin_memory)
        return self._allocate

    # Grants.

    def _route(self, dataset: str, renew: bool = False) -> _Route:
        """The dataset's grant, asked for again when it ran out or ``renew``."""
        route = self._held_route(dataset, renew)
        # After this dataset's renewal, so that reading it keeps its keys: every other
        # dataset whose grant ran out unrenewed loses them.
        self._keys.expire()
        return route

    def _held_route(self, dataset: str, renew: bool) -> _Route:
        """:meth:`_route` without the key sweep."""
        now = time.monotonic()
        with self._lock:
            held = last = self._routes.get(dataset)
        if held is not None and now < held.until:
            if not renew or held.hot is None:
                return held
            if now < held.renew_after:
                return _Route(None, held.renew_after)  # asked a moment ago: the service reads
        else:
            held = None  # ran out
        known = last.hot if last is not None and last.hot is not None else newest_map()
        route = self._renew(dataset, now, known)
        if held is not None and held.hot is not None and route.hot is None and route.transient:
            # Asked again for a newer shard, and not answered for now (the node down, its
            # reader table busy): the grant held still covers the shards it did.
            with self._lock:
                self._routes[dataset] = replace(held, renew_after=route.until)
            return route
        with self._lock:
            self._routes[dataset] = route
        if route.hot is None:
            self._keys.drop_dataset(dataset)  # no grant, no keys
        else:
            self._keys.grant(dataset, route.until)
        return route

    def _renew(self, dataset: str, now: float, known: HotMap | None) -> _Route:
        """A new grant, covering the shard generations of its map before it was asked
        for (``known``: the map the grant most likely names, read before asking; a
        grant of another map is asked for again once that map was read)."""
        close_retired()  # maps of replaced files that nothing uses any more
        before = None if known is None else _next_generation(known)
        for _ in range(2):
            try:
                grant = self._rpc.open_local(dataset)
            except FailedPrecondition as exc:  # turned off there, or not this host
                self._note("refused", f"the server does not grant local reads ({exc})")
                return _Route(None, now + _REFUSED_RETRY_S)
            except (ResourceExhausted, ServerBusy) as exc:
                # The server keeps its reader slots for itself, or this caller holds its
                # share of the node's workers: the service reads meanwhile.
                self._note("busy", f"the server grants no local reads for now ({exc})")
                return _Route(None, now + _BUSY_RETRY_S, transient=True)
            except TierstoreError as exc:  # no access, no dataset, unreachable: the service says
                return _Route(None, now + _FAILED_RETRY_S, transient=isinstance(exc, Unavailable))
            why = _unusable(grant)
            if why is not None:
                self._note(why, why)
                return _Route(None, now + grant.ttl_s)
            hot = hot_map(grant, self.options.max_snapshots)
            if before is not None and known is hot:
                return _Route(hot, now + grant.ttl_s, before)
            known, before = hot, _next_generation(hot)
        # The map could not be read (reads of it fail and go through the service), or
        # the grants named two files: a grant that covers no shard yet.
        return _Route(hot, now + grant.ttl_s)

    def _note(self, key: str, message: str) -> None:
        """Log why a read went through the service, once per kind of reason."""
        if key not in self._logged:
            self._logged.add(key)
            log.info("tierstore local reads: %s", message)


def _unusable(grant: LocalGrant) -> str | None:
    """Why this process cannot map the granted hot tier, or ``None``."""
    if grant.server_pid == os.getpid():
        return "the server runs in this process, which has the hot tier open already"
    here = this_host()
    if not here.same_as(grant.host):
        return (
            f"the server runs on another host or pid namespace ({grant.host.hostname}, "
            f"{grant.host.pid_namespace}; here {here.hostname}, {here.pid_namespace or '?'})"
        )
    return None


def _next_generation(hot: HotMap) -> int | None:
    """``hot``'s next generation now, or ``None`` if it cannot be read."""
    try:
        with hot.session() as session:
            return session.next_generation()
    except Exception:  # the read that follows finds out why, and says so
        return None


def _frame_lookup(
    session: HotSession, record: ShardRecord, indexes: Sequence[int]
) -> Callable[[int], memoryview]:
    """``lookup(k)``: frame ``indexes[k]`` as stored, in place. Raises IntegrityError for
    a missing frame: in one snapshot, a hot record's frames are all there."""

    def lookup(k: int) -> memoryview:
        view = session.frame(record.generation, indexes[k])
        if view is None:
            raise IntegrityError(
                f"hot frame {indexes[k]} of {record.dataset}/{record.name} is missing"
            )
        return view

    return lookup


def _copy(payload: memoryview) -> pa.Buffer:
    out = aligned_buffer(len(payload))
    memoryview(out).cast("B")[:] = payload
    return out
