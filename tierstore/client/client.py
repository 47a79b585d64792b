"""The Python client of the tierstore service.

``tierstore.connect(address, token=..., ca=...)`` (:mod:`~tierstore.client.connect`)
returns a :class:`Client`. Every
call carries the bearer token and a deadline; calls that are safe to repeat are
retried with back-off when the server is UNAVAILABLE (others only while their channel
cannot connect: they never left the client), whole shard reads too when
their stream fails part-way (nothing of it was returned yet). Errors come back as the
same :mod:`tierstore.errors` class the server raised. A client is safe to share
between threads, and keeps working in processes forked from the one that made
it (each process opens its own channel on first use).

Reads (:meth:`Client.get`, :meth:`Client.read_table`, :meth:`Client.read_tensor`)
take the *local path* when the server runs on this host and grants it: frames are
read in place from the hot tier's LMDB map (:mod:`tierstore.client.local`,
docs/local-reads.md), and anything else — a cold shard, a refusal, any failure —
goes through the service. :attr:`Client.read_counts` tells which path served them.
:meth:`Client.iter_bytes` always streams, handing each frame on as it arrives.

The :class:`Client`'s shard calls are here; the rest of it is beside this module:
:mod:`~tierstore.client.core` (the connection, and what every call goes through),
:mod:`~tierstore.client.placementcalls` (placement, statistics, access plans) and
:mod:`~tierstore.client.admincalls` (datasets, tokens, master keys, the trace). Also
beside it: :mod:`~tierstore.client.failures` (a failed call's error, and retries),
:mod:`~tierstore.client.arguments` (argument checks), :mod:`~tierstore.client.putvalue`
(what a put reads) and :mod:`~tierstore.client.download` (a read into a file).
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import pyarrow as pa

from tierstore import arrowio, tensors
from tierstore.client.admincalls import AdminCalls
from tierstore.client.allocation import FrameAllocator, aligned_buffer
from tierstore.client.arguments import (
    checked_prefix,
    checked_text,
    whole_number,
)
from tierstore.client.core import DEFAULT_FRAME_BYTES
from tierstore.client.download import (
    file_allocator,
    open_in_place,
    output_target,
    partial_file,
    stream_into_file,
    write_all,
)
from tierstore.client.failures import (
    cancelled_here,
    closed_channel_is_unavailable,
    raise_mapped,
    refused_as_busy,
    retried,
)
from tierstore.client.forkgate import GATE
from tierstore.client.local import LocalReadOptions, LocalShard, ReadCounts
from tierstore.client.placementcalls import PlacementCalls, TierStats
from tierstore.client.putvalue import (
    FileFrames,
    OnePassFrames,
    ReadableValue,
    StreamFrames,
    note_a_reader_read,
    refuse_a_reader_read_before,
)
from tierstore.client.receive import ShardStream, open_stream
from tierstore.errors import (
    InvalidArgument,
    InvalidRange,
    RangePastEnd,
    Unavailable,
    WrongShardKind,
)
from tierstore.framing import frame_value, frames_streamed
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.types import ShardInfo, ShardKind
from tierstore.v1 import common_pb2, shards_pb2, shards_pb2_grpc
from tierstore.wire.convert import shard_info_from_pb, shard_kind_to_pb

__all__ = [
    "DEFAULT_FRAME_BYTES",
    "Client",
    "LocalReadOptions",
    "ReadCounts",
    "TierStats",
]

T = TypeVar("T")


class Client(AdminCalls, PlacementCalls):
    """One connection (lazily opened, per process) to a tierstore server.

    ``local``: how to read locally when the server is on this host (default: on; see
    :class:`~tierstore.client.local.LocalReadOptions`). ``timeout_s`` (unary calls)
    and ``stream_timeout_s`` (transfers): each attempt's deadline, a positive finite
    number of seconds; ``frame_bytes``: the most bytes of one frame a put sends. All
    three may be set later too; a bad value is InvalidArgument, then or here.

    Its calls: shards here; placement, statistics and access plans in
    :class:`~tierstore.client.placementcalls.PlacementCalls`; datasets, tokens, keys
    and the trace in :class:`~tierstore.client.admincalls.AdminCalls`; the connection
    and what every call goes through in :class:`~tierstore.client.core.ClientCore`.

    Thread-safe, and usable across ``fork()``: each process opens its own channel, and
    a fork (any fork of the process) waits for calls in flight on other threads to end,
    at most 30 s (:mod:`tierstore.client.forkgate`).
    """

    # Shards.

    def put(self, dataset: str, shard: str, data: Any) -> ShardInfo:
        """Store ``data`` as the new generation of ``dataset/shard``; returns its info.

        ``data``: bytes or any buffer (an mmap whole), a file path (``str``/``Path``,
        read a frame at a time as it is sent; one that shrinks meanwhile is
        InvalidArgument and stores nothing) or binary file object (from its position to
        its end, a frame at a time as it is sent, a pipe's as it comes; one that cannot
        be read is InvalidArgument; the put of a stream longer than two frames (a pipe,
        a compressed file's reader) is made again only if it failed before its first
        frame was sent, and needs a node of this release), a
        numpy array, a pyarrow Table or
        RecordBatch, or a torch tensor; or a pyarrow RecordBatchReader (or a list,
        tuple or iterator of RecordBatches of one schema), read and sent a frame at a
        time, stored as the table of its batches (none: a zero-row table of its
        schema); one that fails as it is read is MalformedArrow, a batch of another
        schema UnsupportedData, and either stores nothing. A node ends a put whose data
        gives no next frame within its ``stream_message_s`` (60 s by default):
        Unavailable, saying so, and nothing stored. A Table, RecordBatch, array or
        tensor is framed whole before it is sent, a copy beside it (twice its size at
        the peak); a reader (``table.to_reader()``) is framed as it is sent, and is read
        once: a second put of a reader (or generator) a put read from is
        InvalidArgument (it stored what was left of it). Raises InvalidName,
        UnsupportedData, OversizeFrame, PermissionDenied, ResourceExhausted,
        ArchiveUnavailable.
        """
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        with ReadableValue(data, self.frame_bytes) as value:
            frames: FileFrames | OnePassFrames | Sequence[memoryview]
            refuse_a_reader_read_before(value, f"the put of {dataset}/{shard}")
            streamed = frames_streamed(value, self.frame_bytes)
            uncounted = False
            if isinstance(value, FileFrames):
                kind, frames, count = ShardKind.RAW, value, len(value)
            elif isinstance(value, StreamFrames):  # not counted: the header says so
                kind, frames, count, uncounted = ShardKind.RAW, OnePassFrames(value), 0, True
            elif streamed is not None:
                # Not counted before they are sent: the header announces none (0).
                kind, frames, count = ShardKind.ARROW, OnePassFrames(streamed), 0
            else:
                framed = frame_value(value, self.frame_bytes)
                kind, frames, count = framed.kind, framed.frames, len(framed.frames)
            failed: list[Exception] = []
            waiting_since: list[float] = []  # while the data is asked for its next frame

            def messages() -> Iterator[shards_pb2.PutShardRequest]:
                yield shards_pb2.PutShardRequest(
                    header=shards_pb2.PutShardHeader(
                        dataset=dataset,
                        shard=shard,
                        kind=shard_kind_to_pb(kind),
                        frame_count=count,
                        uncounted=uncounted,
                    )
                )
                try:
                    source = iter(frames)
                    while True:
                        waiting_since[:] = [time.monotonic()]
                        frame = next(source, None)
                        waiting_since.clear()
                        if frame is None:
                            break
                        yield shards_pb2.PutShardRequest(frame=bytes(frame))
                except Exception as exc:
                    # End the stream without its end message: the server refuses it
                    # and stores nothing. (Raising here would have grpc log a stack
                    # trace.) The caller gets this error instead: a file that shrank,
                    # a reader that failed or changed schema.
                    failed.append(exc)
                    return
                yield shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd())

            stub = self._stub(shards_pb2_grpc.ShardServiceStub)

            refused: list[bool] = []  # each failed attempt: whether refused as busy
            # Every attempt, and the pauses while the node is busy, share one deadline.
            deadline = time.monotonic() + self.stream_timeout_s

            def attempt() -> common_pb2.ShardInfo:
                if isinstance(frames, OnePassFrames):
                    frames.check_unread(f"the put of {dataset}/{shard}", any(refused[-1:]))
                with GATE.call():
                    try:
                        answer: common_pb2.ShardInfo = stub.PutShard(
                            messages(),
                            timeout=max(deadline - time.monotonic(), 0.0),
                            metadata=self._channel.metadata,
                        )
                        return answer
                    except grpc.RpcError as error:
                        if failed:
                            # Not the RpcError it caused, but its own cause: where
                            # the caller's reader or file failed.
                            raise failed[0] from failed[0].__cause__
                        _raise_if_the_source_stalled(error, waiting_since, dataset, shard)
                        refused.append(refused_as_busy(error))
                        raise

            with self._no_token_named():
                try:
                    # Made again only while it cannot leave the client (ClientCore._call).
                    reply = retried(
                        attempt, False, deadline, changes=f"the put of {dataset}/{shard}"
                    )
                finally:
                    if streamed is not None and isinstance(frames, OnePassFrames):
                        note_a_reader_read(value, frames)
        return shard_info_from_pb(reply)

    def _read_whole(
        self, request: shards_pb2.GetShardRequest, receive: Callable[[ShardStream], T]
    ) -> T:
        """Open the GetShard stream of ``request`` and return ``receive(stream)``, which
        must take the whole stream and hand nothing of it out before it returns.

        A stream that fails UNAVAILABLE — at its header or part-way: the server went
        away, or the shard was overwritten or deleted while it was sent (the server
        cannot switch a stream to the new generation once its header named the old
        one) — is read again from the start, after each pause of ``RETRY_DELAYS_S``,
        so the caller gets the whole of one generation (after an overwrite, the new
        one) or the last error. Every attempt shares one deadline,
        ``stream_timeout_s`` from now. Other failures, and ``receive``'s own errors,
        are raised at once.
        """
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        deadline = time.monotonic() + self.stream_timeout_s

        def attempt() -> T:
            # Raw gRPC messages, mapped by retried: only the status code tells an
            # unreachable server from a spent deadline (both raise Unavailable).
            responses = stub.GetShard(
                request,
                timeout=max(deadline - time.monotonic(), 0.0),
                metadata=self._channel.metadata,
            )
            try:
                return receive(open_stream(responses, request))
            except BaseException:
                # What receive left unread is not wanted (a raw shard's frames for a
                # table read): the node stops sending it. (No-op on a call that ended.)
                responses.cancel()
                raise

        with self._no_token_named():
            return retried(attempt, True, deadline)

    def get(
        self, dataset: str, shard: str, *, offset: int = 0, length: int | None = None
    ) -> pa.Buffer:
        """Bytes ``[offset, offset + length)`` of a shard (to the end when ``length`` is None).

        Frames are verified (and decrypted) here, straight into the returned
        64-byte-aligned buffer (pinned only when the local-read options ask;
        docs/local-reads.md). Raises ShardNotFound,
        DatasetNotFound, InvalidRange, PermissionDenied, DataLoss (nothing unverified is
        returned), Unavailable.
        """

        def receive(stream: ShardStream) -> pa.Buffer:
            out = self._frame_allocator()(stream.length)
            stream.into(memoryview(out).cast("B"))
            return out

        return self._read_range(
            dataset, shard, offset, length, lambda local: local.buffers[0], receive
        )

    def download(
        self,
        dataset: str,
        shard: str,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> int:
        """Write bytes ``[offset, offset + length)`` of a shard to the file ``path``;
        returns how many.

        Unlike :meth:`get`, memory does not grow with the range: frames, streamed or
        read in place, are verified (and decrypted) straight into a mapping of the
        file, which the OS writes back as it needs. A regular file is written as a new
        file of its own beside ``path`` (``.<name>.<random>.part``, never one already
        there) and renamed over it once whole and verified (with the permissions of the
        file it replaces; a new file for an encrypted shard is made 0600, the others
        as ``open`` would), so a failed download leaves ``path`` as it was. A device, a
        pipe or one of this process's descriptors (``/dev/stdout``, ``/dev/fd/N``: the
        descriptor itself, at its own position, so ``>>`` appends) is written in place
        a frame at a time as each arrives, as :meth:`iter_bytes` hands them on: a
        stream cut off part way leaves a part written there, and raises. Raises as
        :meth:`get`, InvalidArgument for a ``path`` that is no path, and OSError when
        the file cannot be written.
        """
        if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
            raise InvalidArgument(
                f"path must be a file's path (a str or os.PathLike), not {path!r:.80}"
            )
        if os.fspath(path) == "":  # an unset variable, say: never the working directory
            raise InvalidArgument("path is empty: name the file to write")
        target, through_partial = output_target(path)
        if not through_partial:
            # A refusal (no such shard, no right to it) before the target is opened, as a
            # named pipe waits there for a reader; the stream only after: the node gives
            # up on a reader that takes no message for stream_message_s.
            self.stat(dataset, shard)
            with (
                open_in_place(target) as file,
                contextlib.closing(
                    self.iter_bytes(dataset, shard, offset=offset, length=length)
                ) as pieces,
            ):
                return sum(write_all(file, memoryview(piece)) for piece in pieces)
        # A new file for an encrypted shard's plaintext is the owner's alone (0600), not
        # the umask's (most often readable by every user); one written over keeps its
        # mode, which its owner chose. Told by the read itself, at no extra call.
        encrypted = False

        def take_local(local: LocalShard) -> int:
            nonlocal encrypted
            encrypted = local.encrypted
            return int(local.buffers[0].size)  # read in place straight into the file

        def receive(stream: ShardStream) -> int:
            nonlocal encrypted
            encrypted = stream.info.encrypted
            return stream_into_file(stream, partial)

        with partial_file(target, private_if_new=lambda: encrypted) as partial:
            return self._read_range(
                dataset, shard, offset, length, take_local, receive, file_allocator(partial)
            )

    def _read_range(
        self,
        dataset: str,
        shard: str,
        offset: int,
        length: int | None,
        take_local: Callable[[LocalShard], T],
        receive: Callable[[ShardStream], T],
        allocate: FrameAllocator | None = None,
    ) -> T:
        """A byte range read: checked, then read locally (``take_local`` of what it
        read, one buffer, from ``allocate`` if given) where the local path serves it, else
        streamed (``receive``)."""
        offset, length = _checked_range(dataset, shard, offset, length)
        # A fork() waits for the whole read, local or streamed (see forkgate).
        with GATE.call():
            if self._local is not None:
                local = self._local.read_range(dataset, shard, offset, length, allocate)
                if local is not None:
                    return take_local(local)
            self._counts.bump("grpc")
            return self._read_whole(_range_request(dataset, shard, offset, length), receive)

    def iter_bytes(
        self, dataset: str, shard: str, *, offset: int = 0, length: int | None = None
    ) -> Generator[bytearray, None, None]:
        """Bytes ``[offset, offset + length)`` of a shard, handed on a frame at a time as
        they arrive (each piece verified, and decrypted, into a ``bytearray`` of its own),
        so memory does not grow with the range. Always streamed from the service.

        The call opens the stream and receives the first piece before it returns: its
        failures (raised as :meth:`get`'s) are retried as a whole read's are, and nothing
        was handed out. Once the first piece is handed out nothing is retried: a stream
        cut off, or a shard overwritten or deleted under it, raises (Unavailable,
        DataLoss; DatasetNotFound for its dataset deleted under it) from the iteration,
        and the pieces already taken are then only part of the range. Every piece comes
        from one generation. All of it shares the one deadline, ``stream_timeout_s`` from
        the call; close the iterator to stop early.
        Do not fork while one is open (its stream is outside the fork gate).
        """
        request = _range_request(dataset, shard, *_checked_range(dataset, shard, offset, length))
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        deadline = time.monotonic() + self.stream_timeout_s

        def attempt() -> tuple[Any, Iterator[bytearray], builtins.list[bytearray]]:
            responses = stub.GetShard(
                request,
                timeout=max(deadline - time.monotonic(), 0.0),
                metadata=self._channel.metadata,
            )
            try:
                pieces = open_stream(responses, request).pieces()
                return responses, pieces, builtins.list(itertools.islice(pieces, 1))
            except BaseException:
                responses.cancel()
                raise

        with GATE.call(), self._no_token_named():
            self._counts.bump("grpc")
            responses, pieces, first = retried(attempt, True, deadline)
        return _handed_on(responses, first, pieces)

    def read_table(
        self, dataset: str, shard: str, columns: Iterable[str] | None = None
    ) -> pa.Table:
        """An Arrow shard as a table; its columns point into the received frames (no copy)
        — read locally from a plaintext shard, into the hot tier's map (its snapshot stays
        open while any of the table's buffers lives; docs/local-reads.md).

        ``columns`` selects (and orders) columns by name (any iterable of names; a bare
        string is InvalidArgument). Raises WrongShardKind for a raw shard, and as :meth:`get`.
        """
        return self.read_table_with_generation(dataset, shard, columns)[1]

    def read_table_with_generation(
        self, dataset: str, shard: str, columns: Iterable[str] | None = None
    ) -> tuple[int, pa.Table]:
        """:meth:`read_table`, with the generation its rows were read from (all of them
        from that one: a shard overwritten during the read is read again whole)."""
        arrowio.check_columns(columns)
        if columns is not None:  # once: a read tried again must select them again
            columns = list(columns)
        chosen = columns
        return self._read_arrow(
            dataset, shard, lambda frames, _: arrowio.frames_to_table(frames, chosen)
        )

    def _read_arrow(
        self,
        dataset: str,
        shard: str,
        build: Callable[[Sequence[pa.Buffer], int], T],
        *,
        one_pass: bool = False,
    ) -> tuple[int, T]:
        """The generation of an Arrow shard read whole, and ``build(frames, payload
        bytes)`` of its frames, read locally or streamed (a stream broken by an
        overwrite is read again: see :meth:`_read_whole`). ``one_pass``: ``build``
        asks for each frame once, in order, and is given frames let go of once asked
        for (streamed ones received as asked for), so that it need not hold every
        frame at once. Raises WrongShardKind for a raw shard, and as :meth:`get`."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        with GATE.call():  # a fork() waits for the whole read, local or streamed
            local = self._local_frames(dataset, shard)
            if local is not None:
                generation, frames = local
                size = sum(frame.size for frame in frames)
                return generation, build(arrowio.LettingGo(frames) if one_pass else frames, size)
            self._counts.bump("grpc")

            def receive(stream: ShardStream) -> tuple[int, T]:
                if stream.info.kind is ShardKind.RAW:  # the call is cancelled: see _read_whole
                    raise WrongShardKind(f"{dataset}/{shard} holds raw bytes, not Arrow data")
                allocate = self._frame_allocator()
                frames = stream.arriving_frames(allocate) if one_pass else stream.frames(allocate)
                return stream.info.generation, build(frames, stream.info.size)

            return self._read_whole(
                shards_pb2.GetShardRequest(dataset=dataset, shard=shard), receive
            )

    def _local_frames(
        self, dataset: str, shard: str
    ) -> tuple[int, builtins.list[pa.Buffer]] | None:
        """A local read's generation and frames (a list nothing else refers to), or None
        when the shard is to be read through the service."""
        local = self._local.read_frames(dataset, shard) if self._local is not None else None
        if local is None:
            return None
        if local.kind is ShardKind.RAW:
            raise WrongShardKind(f"{dataset}/{shard} holds raw bytes, not Arrow data")
        return local.generation, builtins.list(local.buffers)

    def _frame_allocator(self) -> FrameAllocator:
        """Where received frames land: the local path's allocator (aligned, or pinned when
        its options ask) when local reads are on, else aligned buffers."""
        return self._local.allocator() if self._local is not None else aligned_buffer

    def read_tensor(self, dataset: str, shard: str) -> Any:
        """A tensor shard as a numpy array (a torch tensor if it was stored from torch).

        A tensor of several frames is copied into place a frame at a time as the frames
        arrive, each let go of once copied: the read holds the tensor and a frame or
        two, not twice the tensor (read locally from an encrypted shard, its frames are
        decrypted at once, on two threads, and then copied: up to twice, for a moment).
        One of one frame points into its frame (no copy): read locally from a plaintext
        shard, into the hot tier's read-only map, where an in-place op on a torch tensor
        ends the process with SIGSEGV (numpy flags its array read-only; clone a tensor
        to write into it). Raises WrongShardKind for a raw shard or a table that holds
        no tensor, and as :meth:`get`."""
        return self._read_arrow(dataset, shard, tensors.frames_to_tensor, one_pass=True)[1]

    def stat(self, dataset: str, shard: str) -> ShardInfo:
        """What the server knows of a shard (size, frames, tiers, access counts — this
        client's local reads included)."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        self.report_local_reads()
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        reply = self._call(
            stub.StatShard,
            shards_pb2.StatShardRequest(dataset=dataset, shard=shard),
            idempotent=True,
        )
        return shard_info_from_pb(reply)

    def list(
        self,
        dataset: str,
        prefix: str | None = "",
        *,
        limit: int | None = None,
        start_after: str = "",
    ) -> builtins.list[ShardInfo]:
        """Shards of ``dataset`` whose names start with ``prefix`` and sort after
        ``start_after`` (to page on from the last name of an earlier listing), in name
        order (all of them, fetched page by page, unless ``limit`` caps the count)."""
        return builtins.list(self.iter_list(dataset, prefix, limit=limit, start_after=start_after))

    def iter_list(
        self,
        dataset: str,
        prefix: str | None = "",
        *,
        limit: int | None = None,
        start_after: str = "",
    ) -> Iterator[ShardInfo]:
        """:meth:`list`'s shards, fetched a page (up to 1,000) at a time as they are
        iterated: a listing of a million shards need not be held whole. The arguments
        are checked at once; a page's failure is raised where it is reached."""
        validate_dataset_name(dataset)
        if limit is not None:
            limit = whole_number("limit", limit, "shards")
            if limit < 0:  # it listed nothing, as if the dataset were empty
                raise InvalidArgument(f"limit must not be negative, got {limit}")
        prefix = checked_prefix(prefix)
        start_after = checked_text("start_after", start_after, "a shard name")
        return self._pages_of_shards(dataset, prefix, limit, start_after)

    def _pages_of_shards(
        self, dataset: str, prefix: str, limit: int | None, start_after: str
    ) -> Iterator[ShardInfo]:
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        listed = 0
        while limit is None or listed < limit:
            reply = self._call(
                stub.ListShards,
                shards_pb2.ListShardsRequest(
                    dataset=dataset,
                    prefix=prefix,
                    start_after=start_after,
                    limit=min(1000, limit - listed) if limit is not None else 1000,
                ),
                idempotent=True,
            )
            listed += len(reply.shards)
            yield from (shard_info_from_pb(s) for s in reply.shards)
            if not reply.next_start_after:
                return
            start_after = reply.next_start_after

    def delete(self, dataset: str, shard: str) -> None:
        """Delete a shard from every tier. Raises ShardNotFound; for a write-through
        dataset whose archive did not take the delete, NotArchivedYet (the node waits
        on an archive that answers nothing for 30 s: so the call's deadline is the
        transfers', ``stream_timeout_s``, which the default ``timeout_s`` of 30 s
        would have raced)."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        self._call(
            stub.DeleteShard,
            shards_pb2.DeleteShardRequest(dataset=dataset, shard=shard),
            idempotent=False,
            timeout_s=self.stream_timeout_s,
            changes=f"the delete of {dataset}/{shard}",
        )


#: How long a put's data may take over its next frame before a cancelled put is
#: put down to it: the node's stream_message_s is 60 s by default.
_STALLED_SOURCE_S = 1.0


def _raise_if_the_source_stalled(
    error: grpc.RpcError, waiting_since: builtins.list[float], dataset: str, shard: str
) -> None:
    """Raise Unavailable, saying why and that nothing was stored, for a put the node
    cancelled while its data was still being asked for its next frame: a node ends a
    request stream whose next message takes longer than its ``stream_message_s``, and
    the caller saw only "CANCELLED", with an "outcome unknown" that was not (the end
    of the stream, which commits it, had not been sent)."""
    if not waiting_since or error.code() is not grpc.StatusCode.CANCELLED:
        return
    if cancelled_here(error):  # a close() under it: that error says so
        return
    waited = time.monotonic() - waiting_since[0]
    if waited >= _STALLED_SOURCE_S:
        raise Unavailable(
            f"the node ended the put of {dataset}/{shard} while its data had given no "
            f"next frame for {waited:.0f} s: a node ends a put whose next frame takes "
            "longer than its stream_message_s (60 s by default). Nothing was stored: "
            "give data that is read faster (a file, or a table read first)"
        ) from None


def _checked_range(
    dataset: str, shard: str, offset: object, length: object
) -> tuple[int, int | None]:
    """A byte range read's arguments, checked: ``(offset, length)`` (None: to the end)."""
    validate_dataset_name(dataset)
    validate_shard_name(shard)
    start = _byte_position("offset", offset)
    size = None if length is None else _byte_position("length", length)
    # The wire carries both as uint64; any shard ends long before either limit.
    if start > _MAX_U64:
        raise RangePastEnd(f"byte offset {start} is past the end of any shard")
    if size is not None and size > _MAX_U64:
        size = None  # a range is cut at the shard's end: this one reaches it
    return start, size


def _range_request(
    dataset: str, shard: str, offset: int, length: int | None
) -> shards_pb2.GetShardRequest:
    byte_range = common_pb2.ByteRange(offset=offset)
    if length is not None:
        byte_range.length = length
    return shards_pb2.GetShardRequest(dataset=dataset, shard=shard, byte_range=byte_range)


def _handed_on(
    responses: Any, first: builtins.list[bytearray], rest: Iterator[bytearray]
) -> Generator[bytearray, None, None]:
    """:meth:`Client.iter_bytes`'s pieces: ``first`` (received already), then ``rest``
    as it arrives, its failures raised as the tierstore errors they stand for; the
    stream is cancelled if the caller stops early."""
    try:
        yield from first
        try:
            with closed_channel_is_unavailable():
                yield from rest
        except grpc.RpcError as error:
            raise_mapped(error)
    finally:
        responses.cancel()  # a no-op on a stream that ended


def _byte_position(name: str, value: object) -> int:
    """``value`` as a range's offset or length: a whole number, not negative; else
    InvalidRange naming ``name``, as the engine and the service raise for a malformed
    range (a bare InvalidArgument slipped past an ``except InvalidRange``)."""
    try:
        position = whole_number(name, value)
    except InvalidArgument as exc:
        raise InvalidRange(str(exc)) from None
    if position < 0:
        raise InvalidRange(f"{name} must not be negative, got {position}")
    return position


_MAX_U64 = 2**64 - 1
