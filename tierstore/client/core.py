"""The core of the Python client: one connection, its deadlines and credentials, and
the plumbing every call goes through (:class:`ClientCore`). The calls themselves are in
:mod:`~tierstore.client.client` (shards), :mod:`~tierstore.client.placementcalls`
(placement, statistics, access plans) and :mod:`~tierstore.client.admincalls`
(datasets, tokens, master keys, the trace).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar

import grpc

from tierstore.client.arguments import Checked, frame_size, positive_seconds
from tierstore.client.channel import ChannelSettings, ProcessChannel
from tierstore.client.deadlines import DEFAULT_STREAM_TIMEOUT_S, DEFAULT_TIMEOUT_S
from tierstore.client.failures import retried
from tierstore.client.forkgate import GATE
from tierstore.client.local import LocalReadOptions, LocalReads, ReadCounter, ReadCounts
from tierstore.client.localrpc import GrpcLocalReadRpc
from tierstore.errors import InvalidArgument, Unauthenticated, Unavailable
from tierstore.types import token_id_of
from tierstore.v1 import shards_pb2_grpc

__all__ = ["DEFAULT_FRAME_BYTES", "ClientCore"]

T = TypeVar("T")

#: Frames sent per put: the server's frame limit (frames are cut client-side to fit).
DEFAULT_FRAME_BYTES = 4 * 1024 * 1024


def _weak_rpc(client: ClientCore) -> GrpcLocalReadRpc:
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

    def live() -> ClientCore:
        found = held()
        if found is None:
            raise Unavailable("the client was dropped without close()")
        return found

    def stub() -> shards_pb2_grpc.ShardServiceStub:
        return live()._stub(shards_pb2_grpc.ShardServiceStub)

    def call(fn: Callable[..., T], request: Any, **options: Any) -> T:
        return live()._call(fn, request, **options)

    return GrpcLocalReadRpc(stub, call, lambda: live().timeout_s)


class ClientCore:
    """One connection (lazily opened, per process) to a tierstore server: what every
    call of a :class:`~tierstore.client.client.Client` goes through.

    ``local``: how to read locally when the server is on this host (default: on; see
    :class:`~tierstore.client.local.LocalReadOptions`). ``timeout_s`` (unary calls)
    and ``stream_timeout_s`` (transfers): each attempt's deadline, a positive finite
    number of seconds; ``frame_bytes``: the most bytes of one frame a put sends. All
    three may be set later too; a bad value is InvalidArgument, then or here.
    """

    timeout_s = Checked(positive_seconds)
    stream_timeout_s = Checked(positive_seconds)
    frame_bytes = Checked(frame_size)

    def __init__(
        self,
        settings: ChannelSettings,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float = DEFAULT_STREAM_TIMEOUT_S,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        local: LocalReadOptions | None = None,
    ) -> None:
        if not isinstance(settings, ChannelSettings):
            raise InvalidArgument(
                f"settings must be a ChannelSettings, not {settings!r:.80} (for a client of "
                "an address: tierstore.connect(address, ...))"
            )
        if local is not None and not isinstance(local, LocalReadOptions):
            raise InvalidArgument(
                f"local must be a LocalReadOptions (or None), not {local!r:.80} (connect() "
                "takes local_reads=True or False)"
            )
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Report pending local reads, zero data keys, and close this process's channel
        (the client reopens one if used again). Thread-safe: calls still in flight on
        it, in other threads, end with their result or with Unavailable."""
        if self._local is not None:
            self._local.close()
        self._channel.close()

    @property
    def token_id(self) -> str | None:
        """The id of the token this client calls with (as ``list_tokens`` shows it),
        or None without one, or with one the node could not have issued."""
        return token_id_of(self._channel.settings.token)

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
        # Under the channel's lock: close() on another thread cannot close the channel
        # while the stub registers its methods with it (gRPC's core crashed).
        return self._channel.stub(factory)

    def _call(
        self,
        fn: Callable[..., T],
        request: Any,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
        changes: str | None = None,
        retry_unsent: bool = True,
    ) -> T:
        """``fn(request)`` with this client's deadline and credentials, retried when the
        server is unavailable if ``idempotent``. ``changes``: what the call changes (for
        one that changes something), named in the error of a call cut off before the
        server answered, which sets its ``outcome_unknown``. ``retry_unsent``: a call
        that is not ``idempotent`` is retried too while it fails without having left
        the client (its channel could not connect, as for a second or so after a
        server's restart: a put or a delete failed then, where a read went through), for
        as long as an idempotent one would be."""

        timeout = timeout_s or self.timeout_s

        def attempt() -> T:
            with GATE.call():  # a fork() waits for this call to end (see forkgate)
                return fn(request, timeout=timeout, metadata=self._channel.metadata)

        # Each attempt has the whole timeout; waits for a busy node end with the first's.
        deadline = time.monotonic() + timeout
        with self._no_token_named():
            return retried(
                attempt,
                idempotent,
                changes=changes,
                retry_unsent=retry_unsent,
                busy_deadline=deadline,
            )

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
                f"{exc}: this client has no token (set TIERSTORE_TOKEN or "
                "TIERSTORE_TOKEN_FILE, or give the CLI's --token or --token-file, or "
                "connect()'s token= or token_file=)"
            ) from None
