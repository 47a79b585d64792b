"""The Python client of the tierstore service.

``tierstore.connect(address, token=..., ca=...)`` returns a :class:`Client`. Every
call carries the bearer token and a deadline; calls that are safe to repeat are
retried with back-off when the server is UNAVAILABLE, whole shard reads too when
their stream fails part-way (nothing of it was returned yet). Errors come back as the
same :mod:`tierstore.errors` class the server raised. A client is safe to share
between threads, and keeps working in processes forked from the one that made
it (each process opens its own channel on first use).

Reads (:meth:`Client.get`, :meth:`Client.read_table`, :meth:`Client.read_tensor`)
take the *local path* when the server runs on this host and grants it: frames are
read in place from the hot tier's LMDB map (:mod:`tierstore.client.local`,
docs/local-reads.md), and anything else — a cold shard, a refusal, any failure —
goes through the service. :attr:`Client.read_counts` tells which path served them.

Beside this module: :mod:`~tierstore.client.failures` (a failed call's error, and
retries), :mod:`~tierstore.client.arguments` (argument checks),
:mod:`~tierstore.client.putvalue` (what a put reads) and
:mod:`~tierstore.client.download` (a read into a file).
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pyarrow as pa

from tierstore import arrowio, tensors
from tierstore.client.allocation import FrameAllocator, aligned_buffer
from tierstore.client.arguments import (
    Checked,
    checked_text,
    durability_named,
    env_flag,
    grant_list,
    optional_path,
    positive_bytes,
    positive_seconds,
    readable_tls_file,
    whole_number,
)
from tierstore.client.channel import ChannelSettings, ProcessChannel
from tierstore.client.deadlines import DEFAULT_STREAM_TIMEOUT_S, DEFAULT_TIMEOUT_S
from tierstore.client.download import (
    output_target,
    partial_file,
    rewrite_file,
    stream_into_file,
    write_all,
)
from tierstore.client.failures import (
    closed_channel_is_unavailable,
    mapped_responses,
    raise_mapped,
    retried,
)
from tierstore.client.forkgate import GATE
from tierstore.client.local import LocalReadOptions, LocalReads, LocalShard, ReadCounter, ReadCounts
from tierstore.client.localrpc import GrpcLocalReadRpc
from tierstore.client.putvalue import FileFrames, ReadableValue
from tierstore.client.receive import ShardStream, open_stream
from tierstore.client.tokenfile import read_token_file
from tierstore.errors import (
    InvalidArgument,
    InvalidPlan,
    RangePastEnd,
    Unauthenticated,
    Unavailable,
    WrongShardKind,
)
from tierstore.framing import frame_value
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.plans import SamplerPlan, check_plan_ttl
from tierstore.types import (
    DEFAULT_POLICY_NAME,
    DatasetSettings,
    Grant,
    ShardInfo,
    ShardKind,
    TraceEvent,
    check_bool,
    check_hot_quota,
    check_pin_ttl,
)
from tierstore.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    placement_pb2,
    placement_pb2_grpc,
    shards_pb2,
    shards_pb2_grpc,
)
from tierstore.wire.convert import (
    dataset_settings_from_pb,
    dataset_settings_to_pb,
    durability_to_pb,
    shard_info_from_pb,
    shard_kind_to_pb,
)
from tierstore.wire.grants import grant_from_pb, grant_to_pb
from tierstore.wire.plans import sampler_to_pb
from tierstore.wire.trace import sizing_from_pb, trace_events_from_pb

__all__ = ["Client", "LocalReadOptions", "ReadCounts", "TierStats", "connect"]

T = TypeVar("T")

#: Frames sent per put: the server's frame limit (frames are cut client-side to fit).
DEFAULT_FRAME_BYTES = 4 * 1024 * 1024


class TierStats(dict[str, Any]):
    """Tier statistics as a plain mapping: ``hot_bytes``, ``hot_capacity_bytes``,
    ``backlog_bytes``, ``journal_entries``, ``archive_error`` (why the mover's last
    archive operation failed, or None; the reason itself only for a caller with a role
    on ``*``), ``data_loss`` (the shards of the datasets
    shown that the node reports lost, ``"dataset/name: why"``), ``datasets`` (per
    dataset: shards, bytes, hot_shards, hot_bytes, hits, misses, hit_ratio (None before
    its first read: no ratio, rather than a 0 % that looks like all misses), policy) and,
    when asked for,
    ``sizing`` (a list of ``{"capacity_bytes", "miss_ratio"}``) and ``traced_reads``."""


def _weak_rpc(client: Client) -> GrpcLocalReadRpc:
    """The local read path's calls over ``client``'s channel, holding the client weakly.

    The client holds its LocalReads, which holds these calls: held strongly, that
    cycle would keep a client dropped without close() — its channel and its data
    keys — until the cycle collector runs, whenever that is. Held weakly, the client
    goes as its last reference does, and its LocalReads with it: the data keys are
    zeroed as they are freed (DataKeys.__del__), the reporter's thread ends at its
    next wake-up, and the reads not reported yet are not sent. A call after that
    (the reporter's thread, about to send) raises Unavailable.
    """
    held = weakref.ref(client)

    def live() -> Client:
        found = held()
        if found is None:
            raise Unavailable("the client was dropped without close()")
        return found

    def stub() -> shards_pb2_grpc.ShardServiceStub:
        return live()._stub(shards_pb2_grpc.ShardServiceStub)

    def call(fn: Callable[..., T], request: Any, **options: Any) -> T:
        return live()._call(fn, request, **options)

    return GrpcLocalReadRpc(stub, call)


class Client:
    """One connection (lazily opened, per process) to a tierstore server.

    ``local``: how to read locally when the server is on this host (default: on; see
    :class:`~tierstore.client.local.LocalReadOptions`). ``timeout_s`` (unary calls)
    and ``stream_timeout_s`` (transfers): each attempt's deadline, a positive finite
    number of seconds; ``frame_bytes``: the most bytes of one frame a put sends. All
    three may be set later too; a bad value is InvalidArgument, then or here.
    """

    timeout_s = Checked(positive_seconds)
    stream_timeout_s = Checked(positive_seconds)
    frame_bytes = Checked(positive_bytes)

    def __init__(
        self,
        settings: ChannelSettings,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float = DEFAULT_STREAM_TIMEOUT_S,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        local: LocalReadOptions | None = None,
    ) -> None:
        self._channel = ProcessChannel(settings)
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.frame_bytes = frame_bytes
        self._local_options = local or LocalReadOptions()
        self._counts = ReadCounter()
        self._local: LocalReads | None = None
        if self._local_options.enabled:
            self._local = LocalReads(_weak_rpc(self), self._local_options, self._counts)

    def __repr__(self) -> str:
        return f"Client({self._channel.settings.address!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Never the channel, the local-read state or its thread: remade where unpickled.
        return {
            "settings": self._channel.settings,
            "timeout_s": self.timeout_s,
            "stream_timeout_s": self.stream_timeout_s,
            "frame_bytes": self.frame_bytes,
            "local": self._local_options,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        settings = state.pop("settings")
        self.__init__(settings, **state)  # type: ignore[misc]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Report pending local reads, zero data keys, and close this process's channel
        (the client reopens one if used again). Calls still in flight on it, in other
        threads, end with Unavailable."""
        if self._local is not None:
            self._local.close()
        self._channel.close()

    @property
    def read_counts(self) -> ReadCounts:
        """How many reads were served locally (in place) and through the service."""
        return self._counts.snapshot()

    def report_local_reads(self) -> None:
        """Send the server the local reads counted but not reported yet (normally sent
        in the background every second or so). :meth:`stat`, :meth:`stats`, the access
        plan calls and :meth:`export_trace` do this first, so a client sees its own
        reads counted, and the server hears them in order with its plan events."""
        if self._local is not None:
            self._local.flush()

    # Plumbing.

    def _stub(self, factory: Callable[[grpc.Channel], T]) -> T:
        with GATE.call():  # a stub registers its methods with gRPC's core
            return factory(self._channel.get())

    def _call(
        self,
        fn: Callable[..., T],
        request: Any,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
        changes: str | None = None,
    ) -> T:
        """``fn(request)`` with this client's deadline and credentials, retried when the
        server is unavailable if ``idempotent``. ``changes``: what the call changes (for
        one that changes something), named in the error of a call cut off before the
        server answered, which sets its ``outcome_unknown``."""

        def attempt() -> T:
            with GATE.call():  # a fork() waits for this call to end (see forkgate)
                return fn(
                    request, timeout=timeout_s or self.timeout_s, metadata=self._channel.metadata
                )

        with self._no_token_named():
            return retried(attempt, idempotent, changes=changes)

    @contextmanager
    def _no_token_named(self) -> Iterator[None]:
        """Say so when the server refused a call for want of credentials and this client
        has no token: the server's "missing or invalid credentials" does not tell which."""
        try:
            yield
        except Unauthenticated as exc:
            if self._channel.settings.token is not None:
                raise
            raise Unauthenticated(
                f"{exc}: this client has no token (give token= or token_file= to connect(), "
                "or set TIERSTORE_TOKEN or TIERSTORE_TOKEN_FILE)"
            ) from None

    # Datasets.

    def create_dataset(
        self,
        name: str,
        *,
        encrypted: bool = False,
        durability: str = "write-back",
        hot_quota_bytes: int = 0,
        policy: str = DEFAULT_POLICY_NAME,
    ) -> DatasetSettings:
        """Create a dataset.

        ``encrypted``: encrypt its shards at rest in both tiers (fixed at creation).
        ``durability``: ``"write-back"`` (acknowledged after the local commit) or
        ``"write-through"`` (after the archive holds it too). ``hot_quota_bytes``: 0
        for none. ``policy``: the placement policy of its shards (see
        :meth:`set_policy`). Raises InvalidName, AlreadyExists, PermissionDenied,
        UnknownPolicy.
        """
        validate_dataset_name(name)
        policy = checked_text("policy", policy, "a placement policy's name")
        settings = DatasetSettings(encrypted, durability_named(durability), hot_quota_bytes, policy)
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.CreateDataset,
            datasets_pb2.CreateDatasetRequest(name=name, settings=dataset_settings_to_pb(settings)),
            idempotent=False,
            changes=f"the creation of dataset {name}",
        )
        return dataset_settings_from_pb(reply.settings)

    def get_dataset(self, name: str) -> DatasetSettings:
        """A dataset's settings. Raises DatasetNotFound (also for datasets you may not see)."""
        validate_dataset_name(name)
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.GetDataset, datasets_pb2.GetDatasetRequest(name=name), idempotent=True
        )
        return dataset_settings_from_pb(reply.settings)

    def list_datasets(self) -> builtins.list[tuple[str, DatasetSettings]]:
        """The datasets you hold a role on, sorted by name."""
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(stub.ListDatasets, datasets_pb2.ListDatasetsRequest(), idempotent=True)
        return [(d.name, dataset_settings_from_pb(d.settings)) for d in reply.datasets]

    def update_dataset(
        self,
        name: str,
        *,
        durability: str | None = None,
        hot_quota_bytes: int | None = None,
        policy: str | None = None,
    ) -> DatasetSettings:
        """Change a dataset's durability, hot quota or placement policy (admin on the
        dataset); None leaves one as it is. Raises DatasetNotFound, UnknownPolicy,
        PermissionDenied, and InvalidArgument when all three are None (nothing to
        update: a silent success would hide a forgotten argument)."""
        validate_dataset_name(name)
        if durability is None and hot_quota_bytes is None and policy is None:
            raise InvalidArgument("nothing to update: give durability, hot_quota_bytes or policy")
        request = datasets_pb2.UpdateDatasetRequest(name=name)
        if durability is not None:
            request.durability = durability_to_pb(durability_named(durability))
        if hot_quota_bytes is not None:
            request.hot_quota_bytes = check_hot_quota(hot_quota_bytes)
        if policy is not None:
            request.policy = checked_text("policy", policy, "a placement policy's name")
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.UpdateDataset, request, idempotent=True, changes=f"the update of dataset {name}"
        )
        return dataset_settings_from_pb(reply.settings)

    def set_policy(self, dataset: str, name: str) -> DatasetSettings:
        """Switch ``dataset`` to the placement policy ``name`` (``lru``, ``s3fifo``,
        ``epoch-pin``, ``clairvoyant``, ...) at once; returns the new settings. The new
        policy starts from the dataset's hot shards and live plans. Admin on the
        dataset. Raises UnknownPolicy, DatasetNotFound, PermissionDenied."""
        # Checked here: update_dataset takes None as "unchanged", a silent no-op here.
        return self.update_dataset(
            dataset, policy=checked_text("policy", name, "a placement policy's name")
        )

    def delete_dataset(self, name: str, *, force: bool = False) -> int:
        """Delete a dataset; ``force`` also deletes its shards (admin on the dataset).
        Every token's grant on it goes too (the caller's own included): returns how many
        tokens lost one."""
        validate_dataset_name(name)
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.DeleteDataset,
            datasets_pb2.DeleteDatasetRequest(name=name, force=force),
            idempotent=False,
            changes=f"the delete of dataset {name}",
        )
        return int(reply.grants_removed)

    # Shards.

    def put(self, dataset: str, shard: str, data: Any) -> ShardInfo:
        """Store ``data`` as the new generation of ``dataset/shard``; returns its info.

        ``data``: bytes or any buffer, a file path (``str``/``Path``, read a frame at
        a time as it is sent; one that shrinks meanwhile is InvalidArgument and
        stores nothing) or binary file object (from its position to its end), a
        numpy array, a pyarrow Table or
        RecordBatch, or a torch tensor. Raises InvalidName, UnsupportedData,
        OversizeFrame, PermissionDenied, ResourceExhausted, ArchiveUnavailable.
        """
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        with ReadableValue(data, self.frame_bytes) as value:
            frames: FileFrames | Sequence[memoryview]
            if isinstance(value, FileFrames):
                kind, frames = ShardKind.RAW, value
            else:
                framed = frame_value(value, self.frame_bytes)
                kind, frames = framed.kind, framed.frames
            failed: list[InvalidArgument] = []

            def messages() -> Iterator[shards_pb2.PutShardRequest]:
                yield shards_pb2.PutShardRequest(
                    header=shards_pb2.PutShardHeader(
                        dataset=dataset,
                        shard=shard,
                        kind=shard_kind_to_pb(kind),
                        frame_count=len(frames),
                    )
                )
                try:
                    for frame in frames:
                        yield shards_pb2.PutShardRequest(frame=bytes(frame))
                except InvalidArgument as exc:
                    # End the stream short of the frames its header announced and
                    # without its end: the server refuses it and stores nothing.
                    # (Raising here would have grpc log a stack trace.) The caller gets
                    # this error instead.
                    failed.append(exc)
                    return
                yield shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd())

            stub = self._stub(shards_pb2_grpc.ShardServiceStub)
            with self._no_token_named():
                try:
                    with GATE.call(), closed_channel_is_unavailable():
                        reply = stub.PutShard(
                            messages(),
                            timeout=self.stream_timeout_s,
                            metadata=self._channel.metadata,
                        )
                except grpc.RpcError as error:
                    if failed:
                        raise failed[0] from None
                    raise_mapped(error, changes=f"the put of {dataset}/{shard}")
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
            return receive(open_stream(responses, request))

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

        return self._read_range(dataset, shard, offset, length, lambda local: local, receive)

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

        Unlike :meth:`get`, memory does not grow with the range: streamed frames are
        verified (and decrypted) straight into a mapping of the file, which the OS
        writes back as it needs. A regular file is written as a new file of its own
        beside ``path`` (``.<name>.<random>.part``, never one already there) and renamed
        over it once whole and verified, so a failed download leaves ``path`` as it
        was; a device or pipe is written in place (from one buffer, as ``get``).
        Raises as :meth:`get`, and OSError when the file cannot be written.
        """
        target, through_partial = output_target(Path(path))
        if not through_partial:
            whole = self.get(dataset, shard, offset=offset, length=length)
            with target.open("wb") as file:
                return write_all(file, memoryview(whole))
        with partial_file(target) as partial:
            return self._read_range(
                dataset,
                shard,
                offset,
                length,
                lambda local: rewrite_file(partial, memoryview(local)),
                lambda stream: stream_into_file(stream, partial),
            )

    def _read_range(
        self,
        dataset: str,
        shard: str,
        offset: int,
        length: int | None,
        take_local: Callable[[pa.Buffer], T],
        receive: Callable[[ShardStream], T],
    ) -> T:
        """A byte range read: checked, then read locally (``take_local`` of its one
        buffer) where the local path serves it, else streamed (``receive``)."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        offset = whole_number("offset", offset)
        length = None if length is None else whole_number("length", length)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument("offset and length must not be negative")
        # The wire carries both as uint64; any shard ends long before either limit.
        if offset > _MAX_U64:
            raise RangePastEnd(f"byte offset {offset} is past the end of any shard")
        if length is not None and length > _MAX_U64:
            length = None  # a range is cut at the shard's end: this one reaches it
        # A fork() waits for the whole read, local or streamed (see forkgate).
        with GATE.call():
            if self._local is not None:
                local = self._local.read_range(dataset, shard, offset, length)
                if local is not None:
                    return take_local(local.buffers[0])
            self._counts.bump("grpc")
            byte_range = common_pb2.ByteRange(offset=offset)
            if length is not None:
                byte_range.length = length
            return self._read_whole(
                shards_pb2.GetShardRequest(dataset=dataset, shard=shard, byte_range=byte_range),
                receive,
            )

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
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        arrowio.check_columns(columns)
        if columns is not None:  # once: a read tried again must select them again
            columns = list(columns)
        with GATE.call():  # a fork() waits for the whole read, local or streamed
            local = self._local.read_frames(dataset, shard) if self._local is not None else None
            if local is not None:
                return local.generation, _table_of(local, dataset, shard, columns)
            self._counts.bump("grpc")

            def receive(stream: ShardStream) -> tuple[int, pa.Table]:
                if stream.info.kind is ShardKind.RAW:
                    for _ in stream.messages:  # drain the stream so the call ends cleanly
                        pass
                    raise WrongShardKind(f"{dataset}/{shard} holds raw bytes, not Arrow data")
                frames = stream.frames(self._frame_allocator())
                return stream.info.generation, arrowio.frames_to_table(frames, columns)

            return self._read_whole(
                shards_pb2.GetShardRequest(dataset=dataset, shard=shard), receive
            )

    def _frame_allocator(self) -> FrameAllocator:
        """Where received frames land: the local path's allocator (aligned, or pinned when
        its options ask) when local reads are on, else aligned buffers."""
        return self._local.allocator() if self._local is not None else aligned_buffer

    def read_tensor(self, dataset: str, shard: str) -> Any:
        """A tensor shard as a numpy array (a torch tensor if it was stored from torch)."""
        return tensors.table_to_tensor(self.read_table(dataset, shard))

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
        self, dataset: str, prefix: str = "", *, limit: int | None = None, start_after: str = ""
    ) -> builtins.list[ShardInfo]:
        """Shards of ``dataset`` whose names start with ``prefix`` and sort after
        ``start_after`` (to page on from the last name of an earlier listing), in name
        order (all of them, fetched page by page, unless ``limit`` caps the count)."""
        validate_dataset_name(dataset)
        if limit is not None:
            limit = whole_number("limit", limit, "shards")
            if limit < 0:  # it listed nothing, as if the dataset were empty
                raise InvalidArgument(f"limit must not be negative, got {limit}")
        prefix = checked_text("prefix", prefix or "", "the start of shard names")  # None: all
        start_after = checked_text("start_after", start_after, "a shard name")
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        shards: builtins.list[ShardInfo] = []
        while limit is None or len(shards) < limit:
            reply = self._call(
                stub.ListShards,
                shards_pb2.ListShardsRequest(
                    dataset=dataset,
                    prefix=prefix,
                    start_after=start_after,
                    limit=min(1000, limit - len(shards)) if limit is not None else 1000,
                ),
                idempotent=True,
            )
            shards.extend(shard_info_from_pb(s) for s in reply.shards)
            if not reply.next_start_after:
                break
            start_after = reply.next_start_after
        return shards

    def delete(self, dataset: str, shard: str) -> None:
        """Delete a shard from every tier. Raises ShardNotFound."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        stub = self._stub(shards_pb2_grpc.ShardServiceStub)
        self._call(
            stub.DeleteShard,
            shards_pb2.DeleteShardRequest(dataset=dataset, shard=shard),
            idempotent=False,
            changes=f"the delete of {dataset}/{shard}",
        )

    # Placement.

    def _placement(self, method: str, dataset: str, shard: str) -> int:
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            getattr(stub, method),
            placement_pb2.ShardRef(dataset=dataset, shard=shard),
            idempotent=True,
            changes=f"the {method.lower()} of {dataset}/{shard}",
        )
        return int(reply.bytes)

    def pin(self, dataset: str, shard: str, *, ttl_s: float | None = None) -> int:
        """Keep a shard hot whatever the placement policy says (a cold one is promoted),
        for ``ttl_s`` seconds or, without one, until :meth:`unpin`; pinning again
        replaces the TTL. Returns bytes queued for promotion. Raises InvalidArgument
        (``ttl_s`` not a number of seconds in (0, ten years]), ShardNotFound,
        PermissionDenied."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        ttl_s = check_pin_ttl(ttl_s)
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            stub.Pin,
            placement_pb2.PinRequest(dataset=dataset, shard=shard, ttl_s=ttl_s or 0.0),
            idempotent=True,
            changes=f"the pin of {dataset}/{shard}",
        )
        return int(reply.bytes)

    def unpin(self, dataset: str, shard: str) -> None:
        """Let the placement policy evict a shard again."""
        self._placement("Unpin", dataset, shard)

    def evict(self, dataset: str, shard: str) -> int:
        """Drop a shard from the hot tier if the archive holds it; returns bytes freed."""
        return self._placement("Evict", dataset, shard)

    def prefetch(self, dataset: str, shards: Sequence[str]) -> int:
        """Queue promotion of the named shards that are cold; returns how many were
        queued. A name of no shard is not counted, as one hot already or on its way
        is not: a prefetch is a hint, so :meth:`stat` tells a typo. ``shards`` is a
        sequence of names: one name alone is InvalidArgument (a str is a sequence of
        its characters, each of which was asked for)."""
        validate_dataset_name(dataset)
        if isinstance(shards, str | bytes):
            raise InvalidArgument(
                f"shards must be a sequence of shard names, not one name ({shards!r:.80}): "
                "give [name]"
            )
        names = list(shards)  # once: a generator had nothing left after the checks
        for shard in names:
            validate_shard_name(shard)
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            stub.Prefetch,
            placement_pb2.PrefetchRequest(dataset=dataset, shards=names),
            idempotent=True,
        )
        return int(reply.queued)

    def stats(self, dataset: str = "", *, sizing: bool = False) -> TierStats:
        """Hot-tier usage, archive backlog, and per dataset: shards, bytes, hits, misses,
        hit ratio (since the server started) and policy. With ``sizing``, also the
        sizing curve: the miss ratio the server's recently traced reads (of the datasets
        shown) would have had with a hot tier of 1/8 to 4 times its capacity (costs the
        server a pass over its trace: up to a second or two)."""
        if dataset:
            validate_dataset_name(dataset)
        sizing = check_bool("sizing", sizing)
        self.report_local_reads()
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            stub.GetTierStats,
            placement_pb2.GetTierStatsRequest(dataset=dataset, sizing=sizing),
            idempotent=True,
        )
        extra: dict[str, Any] = {}
        if sizing:
            extra["sizing"] = [
                {"capacity_bytes": p.capacity_bytes, "miss_ratio": p.miss_ratio}
                for p in sizing_from_pb(reply.sizing)
            ]
            extra["traced_reads"] = reply.traced_reads
        return TierStats(
            **extra,
            hot_bytes=reply.hot_bytes,
            hot_capacity_bytes=reply.hot_capacity_bytes,
            backlog_bytes=reply.backlog_bytes,
            journal_entries=reply.journal_entries,
            data_loss=list(reply.data_loss),
            archive_error=reply.archive_error or None,
            datasets={
                d.dataset: {
                    "shards": d.shards,
                    "bytes": d.bytes,
                    "hot_shards": d.hot_shards,
                    "hot_bytes": d.hot_bytes,
                    "archived_shards": d.archived_shards,
                    "archived_bytes": d.archived_bytes,
                    "hits": d.hits,
                    "misses": d.misses,
                    "hit_ratio": d.hits / (d.hits + d.misses) if d.hits + d.misses else None,
                    "policy": d.policy,
                }
                for d in reply.datasets
            },
        )

    # Access plans.

    def declare_plan(
        self,
        dataset: str,
        *,
        sampler: SamplerPlan | None = None,
        shards: Sequence[str] | None = None,
        prefix: str = "",
        job: str | None = None,
        ttl_s: float = 300.0,
    ) -> str:
        """Tell the server the order in which this reader will read ``dataset``, so its
        placement policy can fetch shards just ahead of need; returns the job id.

        Exactly one of ``sampler`` (a :class:`~tierstore.plans.SamplerPlan`: the server
        regenerates the very order :func:`~tierstore.plans.rank_order` gives over the
        dataset's shard names under ``prefix``, sorted) and ``shards`` (names in
        reading order). ``job``: your id for the plan (declaring it again replaces the
        plan; other callers' ids never clash with yours); a random one if None.
        ``ttl_s``: the plan ends this long after the last :meth:`report_position`.
        Needs the reader role. Raises InvalidPlan (unknown shard, too long, not exactly
        one of sampler and shards), InvalidArgument, DatasetNotFound.
        """
        validate_dataset_name(dataset)
        ttl_s = check_plan_ttl(ttl_s)
        prefix = checked_text("prefix", prefix or "", "the start of shard names")  # None: all
        job = "" if job is None else checked_text("job", job, "a plan's id")
        self.report_local_reads()  # the server hears this reader's reads before its plan
        request = placement_pb2.DeclarePlanRequest(
            dataset=dataset, prefix=prefix, job=job or uuid.uuid4().hex, ttl_s=float(ttl_s)
        )
        if (sampler is None) == (shards is None):
            raise InvalidPlan("a plan is either a sampler or a list of shards (exactly one)")
        if sampler is not None:
            request.sampler.CopyFrom(sampler_to_pb(sampler))
        else:
            assert shards is not None
            if isinstance(shards, str):
                raise InvalidPlan("shards must be a sequence of shard names, not one string")
            request.explicit.SetInParent()
            try:
                request.explicit.shards.extend(shards)
            except (TypeError, ValueError) as exc:  # not strings (the server checks names)
                raise InvalidPlan(f"shards must be shard names: {exc}") from None
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        # Idempotent: the job id is chosen here, and declaring it again replaces the plan.
        reply = self._call(stub.DeclarePlan, request, idempotent=True)
        return str(reply.job)

    def report_position(self, job: str, position: int) -> None:
        """``job`` has read the first ``position`` entries of its plan; keeps the plan
        alive. Raises PlanNotFound (unknown, closed or expired), InvalidArgument
        (``position`` negative or past the plan's end)."""
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**64:
            raise InvalidArgument(
                "position must be a whole number from 0 to the plan's length (entries read "
                f"so far), got {position!r}"
            )
        job = checked_text("job", job, "a plan's id")
        self.report_local_reads()  # the reads come before the position that covers them
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        self._call(
            stub.ReportPosition,
            placement_pb2.ReportPositionRequest(job=job, position=position),
            idempotent=True,
        )

    def close_plan(self, job: str) -> None:
        """End ``job``'s plan. Raises PlanNotFound (unknown, closed or expired)."""
        job = checked_text("job", job, "a plan's id")
        self.report_local_reads()
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        self._call(stub.ClosePlan, placement_pb2.ClosePlanRequest(job=job), idempotent=False)

    # Administration.

    def create_token(
        self, principal: str, grants: Sequence[Grant], *, ttl_s: float = 0
    ) -> tuple[str, str]:
        """Issue a token (admin on "*"); returns ``(token_id, token)`` — the token is shown once.

        ``grants``: :class:`~tierstore.types.Grant` values. Raises InvalidArgument (a
        principal that is not text, grants that are not Grants), PermissionDenied."""
        principal = checked_text("principal", principal, "a name for whom the token is")
        grants = grant_list(grants)
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(
            stub.CreateToken,
            admin_pb2.CreateTokenRequest(
                principal=principal, grants=[grant_to_pb(g) for g in grants], ttl_s=ttl_s
            ),
            idempotent=False,
            changes=f"a token for {principal}",
        )
        return reply.token_id, reply.token

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token for good (admin on "*")."""
        token_id = checked_text("token_id", token_id, "a token's id")
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        self._call(
            stub.RevokeToken,
            admin_pb2.RevokeTokenRequest(token_id=token_id),
            idempotent=True,
            changes=f"the revocation of token {token_id}",
        )

    def list_tokens(self) -> builtins.list[dict[str, Any]]:
        """Every token's id, principal, grants, times and state (never the token)."""
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(stub.ListTokens, admin_pb2.ListTokensRequest(), idempotent=True)
        return [
            {
                "token_id": t.token_id,
                "principal": t.principal,
                "grants": [grant_from_pb(g) for g in t.grants],
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "revoked": t.revoked,
            }
            for t in reply.tokens
        ]

    def rotate_keys(self) -> tuple[int, str]:
        """Rotate the master key (admin on "*"); returns ``(rewrapped, new key id)``."""
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(
            stub.RotateKeys,
            admin_pb2.RotateKeysRequest(),
            idempotent=False,
            changes="the rotation of the master key",
        )
        return int(reply.rewrapped), reply.key_id

    def retire_key(self, key_id: str) -> tuple[builtins.list[str], str]:
        """Drop master key ``key_id`` from the node's key file, once no data key and no
        archive object needs it (admin on "*"); returns ``(the key ids left, the
        current one)``. The node keeps the key in ``<key file>.retired``, for nodes
        sharing the key file. Raises NotFound for an id the key file does not hold
        (retired already?), KeyRotationRefused (nothing changed) for the current key or
        a key still needed: after a rotation, until the mover has resealed the
        archive's metadata under the new key."""
        if not checked_text("key_id", key_id, "a master key's id"):
            raise InvalidArgument("key_id must be a master key's id, not ''")
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        request = admin_pb2.RetireKeyRequest(key_id=key_id)
        reply = self._call(
            stub.RetireKey, request, idempotent=False, changes=f"the retirement of key {key_id}"
        )
        return list(reply.key_ids), reply.current

    def export_trace(self, dataset: str | None = None) -> Iterator[TraceEvent]:
        """The server's recent reads and plan events (of ``dataset``, or all), oldest
        first, as :class:`~tierstore.types.TracedRead` / ``TracedPlan`` /
        ``TracedPosition`` / ``TracedClose`` (admin on "*"). Streamed: consume it to the
        end, or close it. Raises PermissionDenied, InvalidName."""
        if dataset is not None:
            validate_dataset_name(dataset)
        self.report_local_reads()
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        # Not in the fork gate: the gate cannot be held across the caller's iteration.
        # Do not fork while a trace stream is open (the only client stream so left).
        with closed_channel_is_unavailable():
            responses = stub.ExportTrace(
                admin_pb2.ExportTraceRequest(dataset=dataset or ""),
                timeout=self.stream_timeout_s,
                metadata=self._channel.metadata,
            )
        return trace_events_from_pb(mapped_responses(responses))


def _table_of(
    local: LocalShard, dataset: str, shard: str, columns: Iterable[str] | None
) -> pa.Table:
    if local.kind is ShardKind.RAW:
        raise WrongShardKind(f"{dataset}/{shard} holds raw bytes, not Arrow data")
    return arrowio.frames_to_table(local.buffers, columns)


_MAX_U64 = 2**64 - 1


def connect(
    address: str | None = None,
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    insecure: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: dict[str, str] | None = None,
    local_reads: bool | None = None,
) -> Client:
    """A client for the server at ``address`` (``HOST:PORT``).

    Unset arguments come from ``TIERSTORE_ADDRESS``, ``TIERSTORE_TOKEN`` and
    ``TIERSTORE_CA`` (a PEM file: the server's CA, ``<data-dir>/tls/ca.pem``).
    ``token_file`` (or ``TIERSTORE_TOKEN_FILE``): a file holding the token, read now
    (:func:`~tierstore.client.tokenfile.read_token_file`): give ``token`` or
    ``token_file``, not both; an argument wins over the environment, and
    ``TIERSTORE_TOKEN`` over ``TIERSTORE_TOKEN_FILE``.
    ``client_cert``/``client_key`` (or ``TIERSTORE_CLIENT_CERT``/``TIERSTORE_CLIENT_KEY``):
    PEM files for mutual TLS. ``insecure`` (or ``TIERSTORE_INSECURE=1``): plaintext,
    allowed only to loopback addresses. ``local_reads``: read hot shards in place when
    the server is on this host (docs/local-reads.md); unset, on unless
    ``TIERSTORE_LOCAL_READS`` is ``0``/``false``/``no``/``off``. Nothing connects until
    the first call. Raises InvalidArgument for a bad address or
    ``TIERSTORE_LOCAL_READS`` or ``TIERSTORE_INSECURE`` value, both ``token`` and
    ``token_file``, an empty ``token``, ``token_file`` or TLS file name (an unset
    variable in a script: never the environment's instead), an unreadable token
    file, a TLS file that is not there, or an argument of the wrong type.
    """
    env = os.environ if environ is None else environ
    if local_reads is None:
        local_reads = env_flag(env.get("TIERSTORE_LOCAL_READS", ""), "TIERSTORE_LOCAL_READS", True)
    local_reads = check_bool("local_reads", local_reads)
    if insecure is not None:  # insecure="no" connected in plaintext
        insecure = check_bool("insecure", insecure)
    if address == "":  # an unset variable, say: never the environment's node instead
        raise InvalidArgument(
            "address= is empty: give HOST:PORT, or leave it out (None) to use TIERSTORE_ADDRESS"
        )
    if address is not None and not isinstance(address, str):
        raise InvalidArgument(f"address= must be HOST:PORT as a str, not {type(address).__name__}")
    address = address or env.get("TIERSTORE_ADDRESS", "")
    if token is not None and not isinstance(token, str):
        raise InvalidArgument(f"token= must be a str, not {type(token).__name__}")
    if token == "":  # an unset variable, say: never the environment's token instead
        raise InvalidArgument(
            "token= is empty: give the token, or leave it out (None) to use "
            "TIERSTORE_TOKEN or TIERSTORE_TOKEN_FILE"
        )
    if token and token_file:
        raise InvalidArgument("give token= or token_file=, not both")
    for name, given, variable in (
        ("token_file", token_file, "TIERSTORE_TOKEN_FILE"),
        ("ca", ca, "TIERSTORE_CA"),
        ("client_cert", client_cert, "TIERSTORE_CLIENT_CERT"),
        ("client_key", client_key, "TIERSTORE_CLIENT_KEY"),
    ):
        if given == "":  # as for token=: never the environment's file instead
            raise InvalidArgument(
                f"{name}= is empty: give a path, or leave it out (None) to use {variable}"
            )
    token_path = optional_path("token_file", token_file)
    if token_path is not None:
        token = read_token_file(token_path)
    token = token or env.get("TIERSTORE_TOKEN") or None
    if token is None and env.get("TIERSTORE_TOKEN_FILE"):
        token = read_token_file(env["TIERSTORE_TOKEN_FILE"])
    tls_variables = {
        "ca": (ca, "TIERSTORE_CA"),
        "client_cert": (client_cert, "TIERSTORE_CLIENT_CERT"),
        "client_key": (client_key, "TIERSTORE_CLIENT_KEY"),
    }
    tls_files = {
        name: optional_path(name, given) or optional_path(variable, env.get(variable))
        for name, (given, variable) in tls_variables.items()
    }
    if insecure is None:
        insecure = env_flag(env.get("TIERSTORE_INSECURE", ""), "TIERSTORE_INSECURE", False)
    settings = ChannelSettings(
        address=address,
        token=token,
        ca=tls_files["ca"],
        client_cert=tls_files["client_cert"],
        client_key=tls_files["client_key"],
        insecure=insecure,
    )
    for name, path in tls_files.items():
        if path is not None and not insecure:  # plaintext reads none of them
            readable_tls_file(name, tls_variables[name][1], path)
    return Client(settings, timeout_s=timeout_s, local=LocalReadOptions(enabled=local_reads))
