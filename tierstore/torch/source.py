"""Where a worker gets a shard's record batches: the one small :class:`ShardSource` contract.

:class:`GrpcShardSource` reads through the service (``Client.read_table``); a local
zero-copy LMDB source can sit beside it later without the datasets changing. A source is
made in the main process and travels to DataLoader workers by fork or pickle, so it holds
only *how* to connect (a picklable factory) and opens its client lazily in each process.

Every read passes through the fork gate (:mod:`tierstore.client.forkgate`), so a
DataLoader forking its workers never forks in the middle of one of our gRPC streams.

Reads are retried while the service is unavailable (a restarting server, a dropped
stream): a shard is returned whole or not at all, so a retry can neither repeat nor skip a
sample. Everything else — NotFound, DataLoss (a frame that failed verification),
PermissionDenied — propagates at once, with the shard named in a note.
"""

from __future__ import annotations

import logging
import math
import multiprocessing.context
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar, cast

import pyarrow as pa
import tenacity

from tierstore.client.arguments import optional_path
from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.client.failures import busy_wait
from tierstore.client.forkgate import GATE
from tierstore.client.tokenfile import read_token_file, rereadable
from tierstore.errors import InvalidArgument, ServerCertificateRejected, Unavailable

__all__ = [
    "GrpcShardSource",
    "ShardSource",
    "ShardTable",
    "given_source",
    "retried_by",
    "service_source",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")


class ShardTable(NamedTuple):
    """A shard read whole: its rows, and the generation they all came from."""

    table: pa.Table
    #: None where the source cannot tell (then a rewrite is not caught by generation)
    generation: int | None


class ShardSource(Protocol):
    """Reads whole Arrow shards. Implementations are thread-safe, survive ``fork()`` and
    pickling (reopening what they hold per process), and raise tierstore errors only."""

    def read(self, dataset: str, shard: str, stop: threading.Event | None = None) -> ShardTable:
        """The shard as a table (its columns may point into received frames), with its
        generation.

        ``stop``: set by the caller to abandon retries early (raises Unavailable then).
        Raises ShardNotFound, DatasetNotFound, WrongShardKind (raw bytes), DataLoss,
        PermissionDenied, Unavailable (after retrying for the source's retry budget).
        """
        ...  # pragma: no cover - a protocol

    def client(self) -> Client:
        """This process's client, for catalog calls (list, plans)."""
        ...  # pragma: no cover - a protocol


class GrpcShardSource:
    """Reads shards through the tierstore service with this process's own client.

    ``connect`` makes a client (such as ``functools.partial(tierstore.connect, ...)``: it
    must pickle for spawned workers). ``retry_s``: how long one shard read keeps retrying while
    the service is unavailable (a rejected server certificate is raised at once).
    Thread-safe; fork- and pickle-safe (the client is made
    again in each process and never pickled).
    """

    def __init__(self, connect: Callable[[], Client], retry_s: float = 60.0) -> None:
        if isinstance(retry_s, bool) or not isinstance(retry_s, int | float):
            raise InvalidArgument(f"retry_s must be a number of seconds, got {retry_s!r}")
        if not 0 <= retry_s < math.inf:  # NaN fails this too: it never stopped retrying
            raise InvalidArgument(
                f"retry_s must be from 0 (no retries) to a finite number of seconds, "
                f"got {retry_s!r}"
            )
        self._connect = connect
        self.retry_s = retry_s
        self._client: Client | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, object]:
        return {"connect": self._connect, "retry_s": self.retry_s}  # never the client

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["connect"], state["retry_s"])  # type: ignore[misc]

    def client(self) -> Client:
        """This process's client, made on first use here. (A client inherited through fork
        would work too — it opens a channel per process — but making one per process keeps
        the rule simple: a worker uses nothing of its parent's.)"""
        if self._pid != os.getpid():
            # No lock (one inherited through fork could be held forever): two threads racing
            # here both make a client and one is dropped, which costs nothing (clients
            # connect lazily). The client is stored before the pid that marks it valid.
            self._client = self._connect()
            self._pid = os.getpid()
        assert self._client is not None
        return self._client

    def read(self, dataset: str, shard: str, stop: threading.Event | None = None) -> ShardTable:
        """See :meth:`ShardSource.read`."""
        client = self.client()
        what = f"reading {dataset}/{shard}"
        try:
            read: ShardTable = self._retrying(what, stop)(
                _refused_at_once(_gated_read), client, dataset, shard
            )
        except Exception as exc:
            exc.add_note(f"tierstore.torch: while reading shard {dataset}/{shard}")
            raise
        return read

    def retried(self, call: Callable[[Client], T], what: str) -> T:
        """``call(client)``, tried again as a read is while the service is unavailable
        (for the dataset's listing and schema when it is made: a node restarting, or
        its archive asking to slow down, failed it at once)."""
        return self._retrying(what, None)(_refused_at_once(call), self.client())

    def _retrying(self, what: str, stop: threading.Event | None) -> tenacity.Retrying:
        """Retries for up to ``retry_s`` while the service is unavailable (a rejected
        server certificate is not), each logged as ``what``; ``stop`` set ends them."""
        stopping = stop or threading.Event()

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            _log.warning(
                "%s: the service is unavailable (%s); retry %d", what, error, state.attempt_number
            )

        def wait(seconds: float) -> None:
            stopping.wait(seconds)  # returns at once when the consumer stops

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Unavailable)
            & tenacity.retry_if_not_exception_type(ServerCertificateRejected),
            stop=tenacity.stop_after_delay(self.retry_s) | tenacity.stop_when_event_set(stopping),
            # Jittered: a node's many loader workers, refused together (a busy node), do
            # not come back in step.
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0) + tenacity.wait_random(0, 0.2),
            sleep=wait,
            before_sleep=log_retry,
            reraise=True,
        )


def _refused_at_once(call: Callable[..., T]) -> Callable[..., T]:
    """``call`` with the client's wait on a busy node off: a refusal (ServerBusy) comes
    back at once, for the source's own retries, which ``retry_s`` and the consumer's stop
    end (waiting in the client, up to two minutes, a read heeded neither: a diff review
    saw a read of ``retry_s`` 0, stopped, wait 20 s)."""

    def refused_at_once(*args: Any) -> T:
        with busy_wait(0.0):
            return call(*args)

    return refused_at_once


def _gated_read(client: Client, dataset: str, shard: str) -> ShardTable:
    # Inside the fork gate: a fork() waits for this stream to end (see forkgate).
    with GATE.call():
        generation, table = client.read_table_with_generation(dataset, shard)
        return ShardTable(table, generation)


def retried_by(source: ShardSource, call: Callable[[Client], T], what: str) -> T:
    """``call(source.client())``, retried as the source retries its reads (a
    :class:`GrpcShardSource`; a source of one's own is called once)."""
    if isinstance(source, GrpcShardSource):
        return source.retried(call, what)
    return call(source.client())


def given_source(source: object) -> ShardSource | None:
    """``source`` if it is None or a :class:`ShardSource` (it has ``read`` and
    ``client``); else InvalidArgument (it failed deep inside with an AttributeError)."""
    if source is None or (
        callable(getattr(source, "read", None)) and callable(getattr(source, "client", None))
    ):
        return cast("ShardSource | None", source)
    raise InvalidArgument(
        f"source= must be a ShardSource (with read() and client()), not {type(source).__name__}"
    )


def service_source(
    address: str | None,
    token: str | None,
    ca: str | Path | None,
    retry_s: float,
    token_file: str | Path | None = None,
) -> GrpcShardSource:
    """The default source: the service at ``address`` with ``token`` or ``token_file``,
    and ``ca`` (each from ``TIERSTORE_*`` when None, read by :func:`tierstore.connect`
    in each process: a regular token file is read again by each worker, where it runs).
    A token file that is a pipe or a descriptor's name (``/dev/stdin``), given or named
    by ``TIERSTORE_TOKEN_FILE``, is read here, and its token travels to the workers: a
    spawned worker cannot read it again. Both ``token`` and ``token_file``, or a bad
    one, are refused by ``connect`` when the dataset first connects (at construction)."""
    named = optional_path("token_file", token_file)
    if named is not None and token is None and not rereadable(named):
        return GrpcShardSource(
            _ServiceConnect(address, read_token_file(named), None, ca, True), retry_s
        )
    if named is not None:  # another process reads it where it runs, whatever its cwd
        token_file = Path(os.path.abspath(named))
    piped = _piped_token() if token is None and token_file is None else None
    given = token if piped is None else piped
    return GrpcShardSource(
        _ServiceConnect(address, given, token_file, ca, piped is not None), retry_s
    )


class _ServiceConnect:
    """``connect(address, token=token, token_file=token_file, ca=ca)``, picklable, with the
    token masked in its repr. A token read from a pipe (``piped``) is pickled only for a
    process being started (a spawned or forkserver DataLoader worker): a dataset pickled
    to a file keeps it out, as the pipe was meant to, and where it is loaded reads
    ``TIERSTORE_TOKEN_FILE`` there. A token given in code is pickled as it was given, a
    token file as its path."""

    def __init__(
        self,
        address: str | None,
        token: str | None,
        token_file: str | Path | None,
        ca: str | Path | None,
        piped: bool,
    ) -> None:
        self.address, self.token, self.token_file = address, token, token_file
        self.ca, self.piped = ca, piped

    def __call__(self) -> Client:
        return connect(self.address, token=self.token, token_file=self.token_file, ca=self.ca)

    def __repr__(self) -> str:
        token = None if self.token is None else "<hidden>"
        return (
            f"connect({self.address!r}, token={token}, token_file={self.token_file!r}, "
            f"ca={self.ca!r})"
        )

    def __reduce__(self) -> tuple[type[_ServiceConnect], tuple[object, ...]]:
        # multiprocessing sets the spawning Popen while it pickles a process it starts.
        starting = multiprocessing.context.get_spawning_popen() is not None
        if self.piped and not starting:
            return (_ServiceConnect, (self.address, None, None, self.ca, False))
        return (
            _ServiceConnect,
            (self.address, self.token, self.token_file, self.ca, self.piped),
        )


def _piped_token() -> str | None:
    """The token of ``TIERSTORE_TOKEN_FILE`` if that cannot be read again (a pipe, a
    descriptor's name: :func:`~tierstore.client.tokenfile.rereadable`) and
    ``TIERSTORE_TOKEN`` (which wins) is unset; else None, for :func:`tierstore.connect`
    to read in each process. A file that cannot be read is refused here, as connect
    would refuse it."""
    path = os.environ.get("TIERSTORE_TOKEN_FILE")
    if not path or os.environ.get("TIERSTORE_TOKEN"):
        return None
    return None if rereadable(path) else read_token_file(path)
