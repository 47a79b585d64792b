"""ShardService: streamed puts and gets of frames, stat, list and delete.

Puts arrive as a header and then one message per frame; the frames are spooled
(memory, then an unlinked file, encrypted for an encrypted dataset) until the
stream ends, and only a complete stream is committed, so an interrupted put
leaves no shard and no space behind.
Gets send a header (shard info and how to verify or decrypt) and then the
stored frames one message at a time, each read in its own short transaction:
gRPC's flow control pulls the next frame only when the last one is sent, so a
slow reader holds a few frames of server memory (docs/service.md) and no LMDB
pages. Each get and put stream holds one of the node's shard-stream places
(:mod:`tierstore.server.streamslots`). The local-read
RPCs (grant, data key, read reports) unpack here and are answered by
:mod:`tierstore.server.localreads` (a read report is checked before it is parsed:
:mod:`tierstore.server.requestchecks`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import grpc

from tierstore.engine.allocator import IdleTrim
from tierstore.engine.schemas import schema_check
from tierstore.engine.sealedpath import SealedRead
from tierstore.engine.store import Store
from tierstore.errors import (
    DatasetNotFound,
    FailedPrecondition,
    InvalidArgument,
    OversizeFrame,
    Unavailable,
)
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.server.archivecalls import ArchiveCalls, HeldSlot
from tierstore.server.authz import Principal, authorize, reauthorizer
from tierstore.server.localreads import LocalReadService
from tierstore.server.rpc import (
    caller,
    handler,
    note_shard,
    refuse_if_caller_gone,
    stream_handler,
)
from tierstore.server.spool import SERVER_SPOOL_MEMORY, FrameSpool, SpoolMemory
from tierstore.server.streamslots import ShardStreams
from tierstore.types import DatasetSettings, Durability, ShardInfo
from tierstore.v1 import common_pb2, shards_pb2, shards_pb2_grpc
from tierstore.wire.convert import shard_info_to_pb, shard_kind_from_pb
from tierstore.wire.limits import (
    DEFAULT_PAGE_ENTRIES,
    ENTRY_OVERHEAD,
    MAX_MESSAGE_BYTES,
    MAX_PAGE_ENTRIES,
    answer_budget,
)
from tierstore.wire.local import grant_to_pb, read_counts_from_pb

__all__ = ["ShardServicer"]

log = logging.getLogger(__name__)

_SERVICE = "/tierstore.v1.ShardService/"
#: of a put's remaining deadline, what is kept for its commit after a quota wait.
_COMMIT_MARGIN_S = 1.0


def _wait_within(context: grpc.ServicerContext) -> float | None:
    """How long a put may wait for quota room: ending before the caller's deadline,
    so that a put the caller gave up on does not land after it (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - _COMMIT_MARGIN_S)


class ShardServicer(shards_pb2_grpc.ShardServiceServicer):
    """The shard RPCs over one store."""

    def __init__(
        self,
        store: Store,
        spool_dir: Path,
        max_shard_frames: int = 1 << 20,
        served: Callable[[str, int], None] | None = None,
        local: LocalReadService | None = None,
        principal_now: Callable[[Principal], Principal] | None = None,
        idle_trim: IdleTrim | None = None,
        archive_calls: ArchiveCalls | None = None,
        message_bytes: int = MAX_MESSAGE_BYTES,
        streams: ShardStreams | None = None,
    ) -> None:
        self._store = store
        #: the most a ListShards page carries: a shard's info holds every frame's size
        #: (a page of 1,000 shards of many small frames passed the message limit, and
        #: the dataset could not be listed at all); well under the limit, for the rest
        self._list_page_bytes = answer_budget(message_bytes)
        #: bounds the calls that wait on the archive (cold reads, write-through puts
        #: and deletes), so that a frozen archive leaves workers for the hot tier
        self._archive_calls = archive_calls or ArchiveCalls.for_workers(32)
        #: bounds the get and put streams, so that streams left unread (or unsent) leave
        #: workers for the calls that stream no shard
        self._streams = streams or ShardStreams.for_workers(32)
        self._spool_dir = spool_dir
        #: what the puts being received hold in memory, together
        self._spool_memory = SpoolMemory(SERVER_SPOOL_MEMORY)
        self._max_frames = max_shard_frames
        #: called with (tier, bytes) for every frame sent
        self._served = served or (lambda tier, nbytes: None)
        self._local = local or LocalReadService(store)
        #: the caller as its credential stands now (TokenStore.principal_now)
        self._principal_now = principal_now or (lambda principal: principal)
        #: gives the memory of a burst of puts or cold reads back to the OS once they stop
        self._idle_trim = idle_trim

    def _check(self, method: str, dataset: str, shard: str | None = None) -> None:
        validate_dataset_name(dataset)
        if shard is not None:
            note_shard(validate_shard_name(shard))  # for the call's audit line
        authorize(caller(), _SERVICE + method, dataset)

    @handler
    def PutShard(
        self, request_iterator: Iterator[shards_pb2.PutShardRequest], context: grpc.ServicerContext
    ) -> common_pb2.ShardInfo:
        # The header is read and the caller's right checked before the put takes a
        # stream's place: a caller with no right to put held them (a review's token of
        # no grant at all opened puts and sent nothing).
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidArgument("a put stream starts with its header")
        header = first.header
        self._check("PutShard", header.dataset, header.shard)
        if header.uncounted and header.frame_count:
            raise InvalidArgument(
                f"the put's header is marked uncounted and announces {header.frame_count} "
                "frames: an uncounted put announces none (frame_count 0)"
            )
        in_flight = self._idle_trim.busy() if self._idle_trim else contextlib.nullcontext()
        with self._streams.slot("a shard put", caller().name), in_flight:
            return self._put(header, request_iterator, context)

    def _put(
        self,
        header: shards_pb2.PutShardHeader,
        request_iterator: Iterator[shards_pb2.PutShardRequest],
        context: grpc.ServicerContext,
    ) -> common_pb2.ShardInfo:
        # Checked at every message, so a put whose right went (the dataset deleted, and
        # perhaps made again for someone else; the token revoked or run out) ends at its
        # next one rather than keep a worker, and spool, for a put that cannot land, and
        # at the commit.
        writer_now = reauthorizer(
            caller(), self._principal_now, _SERVICE + "PutShard", header.dataset
        )

        def still_allowed(settings: DatasetSettings) -> None:
            # Checked inside the commit's transaction, so no delete slips in after it (a
            # delete takes the writer); a revocation that returns while the commit runs
            # may still see this put land.
            writer_now()
            refuse_if_caller_gone(context, f"the put of {header.dataset}/{header.shard}")
            if settings.encrypted and not encrypted:
                # Made again encrypted while the frames were spooled in plaintext: the
                # put belongs to the plaintext dataset it began in.
                raise FailedPrecondition(
                    f"{header.dataset} was deleted and made again with encryption while "
                    f"{header.dataset}/{header.shard} was being received: nothing was "
                    "stored; put it again"
                )

        def receiving() -> None:
            writer_now()
            # A grant on "*" outlives a deleted dataset: such a writer's put ends at its
            # next message too, rather than spool the rest for a commit with no dataset
            # (one made again meanwhile takes it, as at the commit).
            if not self._store.has_dataset(header.dataset):
                raise DatasetNotFound(f"no dataset {header.dataset!r}")

        kind = shard_kind_from_pb(header.kind)
        if header.frame_count > self._max_frames:
            raise InvalidArgument(
                f"{header.frame_count} frames is over the server's limit of {self._max_frames}"
            )
        settings = self._store.get_dataset(header.dataset)
        if settings.durability is Durability.WRITE_THROUGH:
            # Its archive slot is taken at the commit, once the stream is received (its
            # sender may be slow); with none free now it is refused before its sender
            # sends the whole shard for the same refusal.
            self._archive_calls.refuse_if_none_free(
                f"a write-through put of {header.dataset}", caller().name
            )

        def first_frame(frame: bytes) -> None:
            # A shard without its dataset's Arrow schema is refused at its first frame,
            # not once its sender has sent the rest; the commit checks again.
            schema_check(header.dataset, header.shard, kind, lambda: frame)(settings)

        # An encrypted dataset's frames reach the disk only encrypted, even in the spool.
        encrypted = settings.encrypted
        with FrameSpool(self._spool_dir, encrypted=encrypted, shared=self._spool_memory) as spool:
            self._receive_frames(request_iterator, header, spool, receiving, first_frame)
            with self._slot_if_write_through(header.dataset, "a write-through put of"):
                info = self._store.put_frames(
                    header.dataset,
                    header.shard,
                    kind,
                    spool.views(),
                    quota_wait_s=_wait_within(context),
                    caller_gone=lambda: not context.is_active(),
                    admit=still_allowed,
                )
        return shard_info_to_pb(info)

    def _receive_frames(
        self,
        messages: Iterator[shards_pb2.PutShardRequest],
        header: shards_pb2.PutShardHeader,
        spool: FrameSpool,
        still_allowed: Callable[[], None],
        first_frame: Callable[[bytes], None],
    ) -> None:
        """Spool the frames that follow ``header``, up to the stream's end message,
        calling ``still_allowed`` (which raises once the put may not land) at each, and
        ``first_frame`` (which raises for a shard that may not land, such as one of
        another schema) with the first before it is spooled.

        Raises InvalidArgument for a stream that is not frames and then the end, with as
        many frames as the header announced (an Arrow or tensor put announcing 0 was
        not counted first, streamed from a record-batch reader, and so was one marked
        ``uncounted``, a raw shard read from a pipe: up to the server's frame limit, as
        the end message says): one that stops without its end message was
        cancelled by its client or failed part way, even with every frame received
        (gRPC may end a cancelled stream as if the client had closed it). Raises
        OversizeFrame, and what ``Store.check_put_size`` raises for a put that could
        never be stored, as soon as its frames show it (before they fill the disk), and
        what ``still_allowed`` and ``first_frame`` raise (Unauthenticated,
        DatasetNotFound, SchemaMismatch...).
        """
        limit = self._store.settings.max_frame_bytes
        largest = self._store.largest_put(header.dataset)
        # An Arrow or tensor shard has at least its schema frame: 0 is "not announced".
        announced = not header.uncounted and (
            bool(header.frame_count) or header.kind == common_pb2.SHARD_KIND_RAW
        )
        most = header.frame_count if announced else self._max_frames
        received = 0
        ended = False
        for message in messages:
            still_allowed()
            item = message.WhichOneof("item")
            if item == "end":
                ended = True
                break  # the last message: nothing after it is read
            if item != "frame":
                raise InvalidArgument(f"message {spool.count + 1} of the put is not a frame")
            frame = message.frame  # each access copies the bytes: read it once
            if len(frame) > limit:
                raise OversizeFrame(
                    f"frame {spool.count} is {len(frame)} bytes; this node's limit "
                    f"(max_frame_bytes) is {limit}: cut frames no larger (the Python "
                    "client's frame_bytes, 4 MiB unless set; the CLI's put --frame-bytes)"
                )
            if spool.count == most:
                raise InvalidArgument(
                    f"more frames than the {header.frame_count} the header announced"
                    if announced
                    else f"more frames than the server's limit of {self._max_frames}"
                )
            received += len(frame)
            if received > largest:  # read again: the quota may have been raised
                self._store.check_put_size(header.dataset, header.shard, received)
                largest = self._store.largest_put(header.dataset)
            if not spool.count:
                first_frame(frame)
            spool.append(frame)
        if announced and spool.count != header.frame_count:
            raise InvalidArgument(
                f"the stream ended after {spool.count} of {header.frame_count} frames"
            )
        if not ended:
            # Every frame announced and no end message: what a client of a release
            # before end messages sends, as well as what a cancelled stream may look like.
            older = (
                "; a client of a release before put end messages sends none: upgrade it"
                if announced
                else ""
            )
            raise InvalidArgument(
                "the put stream stopped without its end message (cancelled by the client?"
                f"{older}); nothing was stored"
            )

    @stream_handler
    def GetShard(
        self, request: shards_pb2.GetShardRequest, context: grpc.ServicerContext
    ) -> Iterator[shards_pb2.GetShardResponse]:
        with self._streams.slot("a shard read", caller().name):
            yield from self._get(request, context)

    def _get(
        self, request: shards_pb2.GetShardRequest, context: grpc.ServicerContext
    ) -> Iterator[shards_pb2.GetShardResponse]:
        self._check("GetShard", request.dataset, request.shard)
        # Checked before each frame is read. (The caller is taken before the shard is
        # opened: found revoked after, it left a cold shard opened and not abandoned,
        # whose promotion was then never made.)
        principal = caller()
        reader_now = reauthorizer(
            principal, self._principal_now, _SERVICE + "GetShard", request.dataset
        )

        which = request.WhichOneof("range")
        byte_range = frame_range = None
        if which == "byte_range":
            length = request.byte_range.length if request.byte_range.HasField("length") else None
            byte_range = (request.byte_range.offset, length if length is not None else 1 << 62)
        elif which == "frame_range":
            frame_range = (request.frame_range.first, request.frame_range.count)
        sealed = self._store.open_sealed(
            request.dataset, request.shard, byte_range=byte_range, frame_range=frame_range
        )
        # Held only while the stream waits on the archive; a read cold from the start
        # takes it here, so that one too many is refused before its header.
        archive_bound = self._archive_calls.held(
            f"a cold read of {request.dataset}", principal.name
        )
        # A read leaves memory to give back once the node is idle, as a put does: a cold
        # one holds its archive answers in the heap while it runs (a trim waits for it);
        # a hot one copies each frame into messages on its worker's arena, and owes a
        # trim once it ends (24 hot reads at once left 390 MB held, measured, until the
        # next put), without putting one off: hot reads that overlap for hours would
        # keep the node from ever trimming.
        cold = not sealed.info.hot
        in_flight = (
            self._idle_trim.busy()
            if self._idle_trim is not None and cold
            else contextlib.nullcontext()
        )
        try:
            with in_flight:
                if cold:
                    try:
                        archive_bound.take()
                    except Unavailable:
                        # Refused for want of a slot: a miss the policy admitted is still
                        # promoted, in the background, so the caller's retry finds it hot.
                        sealed.abandon()
                        raise
                yield from self._send(sealed, archive_bound, request, context, reader_now)
        finally:
            archive_bound.give_back()
            if self._idle_trim is not None and not cold:
                self._idle_trim.owe()

    def _send(
        self,
        sealed: SealedRead,
        archive_bound: HeldSlot,
        request: shards_pb2.GetShardRequest,
        context: grpc.ServicerContext,
        still_allowed: Callable[[], None],
    ) -> Iterator[shards_pb2.GetShardResponse]:
        """GetShard's messages: the header, then each frame of ``sealed``, each sent once
        ``still_allowed`` (which raises once the caller may not read) passed after it
        was opened or read: opening unwraps the data key the header carries, and a frame
        may wait on the archive, so a check made before either may be stale by then. A
        frame is read only after a check too (a read may fetch the whole shard)."""
        still_allowed()
        header = shards_pb2.GetShardResponse(
            header=shards_pb2.GetShardHeader(
                info=shard_info_to_pb(sealed.info),
                seal=shards_pb2.Seal(
                    context=sealed.context,
                    frame_count=sealed.frame_count,
                    data_key=sealed.data_key or b"",
                    nonce_prefix=sealed.nonce_prefix or b"",
                ),
                first_frame=sealed.first_frame,
                frame_count=len(sealed.slices),
                skip=sealed.slices[0].start if sealed.slices else 0,
                length=sum(piece.stop - piece.start for piece in sealed.slices),
            )
        )
        try:
            yield header
        except GeneratorExit:  # the client went away before any frame was read
            try:
                sealed.abandon()
            except Exception:  # nobody to tell: the generator is being closed
                log.exception("abandoning the read of %s/%s", request.dataset, request.shard)
            raise
        tier = "hot" if sealed.info.hot else "archive"
        frames = sealed.frames(archive_bound)
        while True:
            still_allowed()  # before the read too: it may fetch (and promote) from the archive
            try:
                item = next(frames, None)
            except Unavailable:
                # The frames went. A grant on "*" outlives a deleted dataset, so such a
                # reader is not stopped by still_allowed: it is told what a reader with
                # a grant on the dataset is (not to retry a read of a dataset gone).
                if not self._store.has_dataset(request.dataset):
                    raise DatasetNotFound(f"no dataset {request.dataset!r}") from None
                raise
            if item is None:
                return
            still_allowed()
            index, stored = item
            if not context.is_active():
                return  # the client went away: stop reading
            self._served(tier, len(stored))
            # Built in place: the constructor form copies the 4 MiB frame twice more.
            response = shards_pb2.GetShardResponse()
            response.frame.index = index
            response.frame.data = stored
            yield response

    @handler
    def StatShard(
        self, request: shards_pb2.StatShardRequest, context: grpc.ServicerContext
    ) -> common_pb2.ShardInfo:
        self._check("StatShard", request.dataset, request.shard)
        return shard_info_to_pb(self._store.stat(request.dataset, request.shard))

    @handler
    def ListShards(
        self, request: shards_pb2.ListShardsRequest, context: grpc.ServicerContext
    ) -> shards_pb2.ListShardsResponse:
        self._check("ListShards", request.dataset)
        limit = min(request.limit or DEFAULT_PAGE_ENTRIES, MAX_PAGE_ENTRIES)
        entries: list[common_pb2.ShardInfo] = []

        def size_of(info: ShardInfo) -> int:
            entry = shard_info_to_pb(info)
            entries.append(entry)
            return int(entry.ByteSize()) + ENTRY_OVERHEAD

        # Fewer than asked, never more: a page that passes its bytes ends before the
        # shard that passed them (sized, not listed), where the next page starts.
        page, next_start = self._store.list(
            request.dataset,
            request.prefix,
            request.start_after or None,
            limit,
            max_bytes=self._list_page_bytes,
            size_of=size_of,
        )
        return shards_pb2.ListShardsResponse(
            shards=entries[: len(page)], next_start_after=next_start or ""
        )

    @handler
    def DeleteShard(
        self, request: shards_pb2.DeleteShardRequest, context: grpc.ServicerContext
    ) -> shards_pb2.DeleteShardResponse:
        self._check("DeleteShard", request.dataset, request.shard)
        # (No wait before the delete: a slot is taken or refused at once, and the local
        # delete commits before a write-through one waits on the archive.)
        with self._slot_if_write_through(request.dataset, "a write-through delete in"):
            self._store.delete(
                request.dataset,
                request.shard,
                admit=lambda _: refuse_if_caller_gone(
                    context, f"the delete of {request.dataset}/{request.shard}"
                ),
            )
        return shards_pb2.DeleteShardResponse()

    def _slot_if_write_through(self, dataset: str, what: str) -> AbstractContextManager[None]:
        """An archive slot for ``what`` (followed by the dataset's name) if ``dataset``'s
        puts and deletes return only once the archive has them (write-through); else
        nothing to hold."""
        if self._store.get_dataset(dataset).durability is Durability.WRITE_THROUGH:
            return self._archive_calls.slot(f"{what} {dataset}", caller().name)
        return contextlib.nullcontext()

    # Local reads (tierstore.server.localreads).

    @handler
    def OpenLocal(
        self, request: shards_pb2.OpenLocalRequest, context: grpc.ServicerContext
    ) -> shards_pb2.LocalGrant:
        self._check("OpenLocal", request.dataset)
        grant = self._local.open_local(caller(), context.peer(), request.dataset)
        return grant_to_pb(grant)

    @handler
    def GrantDataKey(
        self, request: shards_pb2.GrantDataKeyRequest, context: grpc.ServicerContext
    ) -> shards_pb2.DataKeyGrant:
        self._check("GrantDataKey", request.dataset, request.shard)
        key = self._local.data_key(request.dataset, request.shard, request.generation)
        # Again, after the unwrap (a KMS's network call, say): a token revoked meanwhile
        # gets no key.
        self._check("GrantDataKey", request.dataset, request.shard)
        return shards_pb2.DataKeyGrant(data_key=key.key, nonce_prefix=key.nonce_prefix)

    @handler
    def ReportLocalReads(
        self, request: shards_pb2.ReportLocalReadsRequest, context: grpc.ServicerContext
    ) -> shards_pb2.ReportLocalReadsResponse:
        self._check("ReportLocalReads", request.dataset)
        # Refused (off here, or not from this host) before the entries are looked at.
        self._local.check_local_caller(context.peer(), request.dataset)
        recorded = self._local.record(request.dataset, read_counts_from_pb(request))
        return shards_pb2.ReportLocalReadsResponse(recorded=recorded)
