"""gRPC channels for the client: created lazily, one per process, safe across ``fork()``.

A channel (like every client object) is owned by one process. The client keeps
the process id that made its channel and makes a new one when it finds itself
in a forked child; the parent's channel is never used or closed there.

Making, closing and letting go of a channel all call into gRPC's core, so they run
inside the fork gate (:mod:`tierstore.client.forkgate`) like the calls do: a thread
that dropped a client (and so its channel) while a DataLoader forked made gRPC skip
its fork handlers, and hung a worker, in 2 of 4 runs. A :class:`ProcessChannel` that
is garbage-collected without :meth:`~ProcessChannel.close` closes its channel in the
gate too, from a finalizer.

``GRPC_ENABLE_FORK_SUPPORT=1`` must be set before grpc is first imported for a
forked child to open channels reliably (DESIGN.md, section 5): importing
:mod:`tierstore` sets it unless the environment already chose. gRPC reads it when it
is imported: where grpc was imported first (by the program or a library) with the
variable unset, fork support is off, and the first channel of the process says so.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "1")

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # the fork support gRPC read

from tierstore.addresses import connect_address_problem
from tierstore.client.forkgate import GATE
from tierstore.client.forklocks import ForkSafeLock
from tierstore.client.tokenfile import TokenFile, read_token_file
from tierstore.errors import InvalidArgument
from tierstore.loopback import is_loopback_address
from tierstore.wire.limits import MAX_MESSAGE_BYTES

__all__ = ["ChannelSettings", "ProcessChannel"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest wait between a channel's attempts to reconnect to a server that went
#: away (gRPC's own grows to two minutes); jittered by up to 20 % either way.
MAX_RECONNECT_BACKOFF_MS = 1_000
#: How long a channel keeps a connection with no call in flight: below the server's
#: default ``connection_idle_s`` (300 s), so the client lets it go first.
CLIENT_IDLE_MS = 240_000


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Where and how to connect. ``ca`` is a PEM file; ``insecure`` only for loopback.
    ``token_file``: where ``token`` was read from, if from a file: pickled in its place
    (see :class:`~tierstore.client.tokenfile.TokenFile`)."""

    address: str
    token: str | None = field(default=None, repr=False)
    token_file: TokenFile | None = None
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = field(default=None, repr=False)
    insecure: bool = False
    server_name: str | None = None

    def __post_init__(self) -> None:
        problem = connect_address_problem(self.address)
        if problem is not None:
            raise InvalidArgument(
                f"address must be HOST:PORT with {problem}; got {self.address!r} (pass "
                "one, or set TIERSTORE_ADDRESS; the CLI takes --address)"
            )
        if self.insecure and not is_loopback_address(self.address):
            raise InvalidArgument("plaintext connections are allowed only to loopback addresses")
        if self.token is not None:
            _check_token_characters(self.token)
        if (self.client_cert is None) != (self.client_key is None):
            # gRPC would abort the whole process ("Check failed: cert_chain != nullptr").
            raise InvalidArgument(
                "mutual TLS needs both a client certificate and its key (client_cert= and "
                "client_key=, TIERSTORE_CLIENT_CERT and TIERSTORE_CLIENT_KEY, or the CLI's "
                "--client-cert and --client-key): one was given"
            )

    def __copy__(self) -> ChannelSettings:
        return self  # frozen: and a copy reads no token file again

    def __deepcopy__(self, memo: dict[int, object]) -> ChannelSettings:
        return self

    def __reduce__(self) -> tuple[Callable[..., ChannelSettings], tuple[object, ...]]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        source = self.token_file
        if source is None or get_spawning_popen() is not None:
            return (_settings_of, (values,))  # given in code, or for a process started
        if not source.rereadable:
            raise InvalidArgument(
                f"a client whose token was read from a pipe or a descriptor "
                f"({source.path}) is pickled only for a process being started: it cannot "
                "be read again where the pickle is loaded, and a pipe kept the token out "
                "of every file (pickle what connect() needs instead, and call it there)"
            )
        return (_settings_reading_token, ({**values, "token": None},))


def _settings_of(values: dict[str, object]) -> ChannelSettings:
    return ChannelSettings(**values)  # type: ignore[arg-type]


def _settings_reading_token(values: dict[str, object]) -> ChannelSettings:
    """Unpickled settings whose token is read again from its file, where they are loaded."""
    source = values["token_file"]
    assert isinstance(source, TokenFile)
    return ChannelSettings(**{**values, "token": read_token_file(source.path)})  # type: ignore[arg-type]


#: The longest token a client sends: a node's are about 60 characters, and gRPC
#: refuses every call whose headers pass 8 KiB or so ("received metadata size exceeds
#: hard limit", which named no token).
MAX_TOKEN_CHARACTERS = 1024


def _check_token_characters(token: str) -> None:
    """Refuse a token no header can carry (gRPC would fail every call with a bare
    "Invalid metadata"), naming where the bad character is and never the token, or
    one far longer than a token is."""
    if len(token) > MAX_TOKEN_CHARACTERS:
        raise InvalidArgument(
            f"the token is {len(token)} characters: a token is one word of about 60, "
            f"ts_<id>_<secret>, and none over {MAX_TOKEN_CHARACTERS} is sent (was the "
            "wrong file or variable given?)"
        )
    for index, character in enumerate(token):
        if not (character.isascii() and character.isprintable()) or character.isspace():
            raise InvalidArgument(
                f"the token holds a whitespace, control or non-ASCII character at position "
                f"{index} of {len(token)}: a token is one word of visible ASCII, "
                "ts_<id>_<secret> (was a newline read with it?)"
            )


#: whether gRPC's fork support was looked at (once a process tree: a forked child
#: has the parent's gRPC, and the parent said it)
_fork_support_checked = False


def _say_if_fork_support_is_off() -> None:
    """Warn (once) when gRPC runs without the fork support tierstore turned on: grpc
    was imported before the variable was set (before tierstore, with it unset)."""
    global _fork_support_checked
    if _fork_support_checked:
        return
    _fork_support_checked = True
    turned_on = os.environ.get("GRPC_ENABLE_FORK_SUPPORT") == "1"
    if turned_on and getattr(cygrpc, "_GRPC_ENABLE_FORK_SUPPORT", True) is False:
        log.warning(
            "grpc was imported before GRPC_ENABLE_FORK_SUPPORT=1 was set (importing "
            "tierstore sets it): its fork support is off, and the channels of processes "
            "forked from this one (DataLoader workers) may fail; set it in the "
            "environment, or import tierstore before anything that imports grpc"
        )


class _HeldChannel:
    """The grpc channel a :class:`ProcessChannel` holds and the process that made it:
    apart from the ProcessChannel, so that its finalizer can close the channel.

    The two are one attribute, replaced whole, so that a thread that reads it without
    the lock sees both of one moment: kept apart and cleared one after the other by
    close(), a reader saw this process's pid beside no channel (AssertionError)."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: tuple[grpc.Channel, int] | None = None

    def close(self) -> None:
        """Close this process's channel and drop it, inside the fork gate (a channel
        inherited through fork is only dropped: it belongs to the parent)."""
        current, self.current = self.current, None
        if current is not None and current[1] == os.getpid():
            channel = current[0]
            del current
            with GATE.call():
                channel.close()
                del channel  # the last reference: freeing it calls into gRPC too

    def close_soon(self) -> None:
        """:meth:`close`, but never waiting for the fork gate: the channel is closed
        after a fork being prepared. For garbage collection, which may run this on a
        thread holding a lock that a fork handler takes (see ForkGate.run_or_defer):
        seen as a DataLoader fork that hung for good, 1 run in about 80."""
        current, self.current = self.current, None
        if current is None or current[1] != os.getpid():
            return
        held = [current[0]]
        del current

        def close() -> None:
            last = held.pop()
            last.close()
            del last  # the last reference: freeing it calls into gRPC too

        GATE.run_or_defer(close)


class ProcessChannel:
    """A lazily created channel, re-created in each new process. Thread-safe."""

    def __init__(self, settings: ChannelSettings) -> None:
        self.settings = settings
        # Taken only inside the fork gate (see stub()), so no fork waits for a holder;
        # fork-safe all the same, for a fork that went ahead at its gate's deadline (a
        # plain lock would stay held in the child).
        self._lock = ForkSafeLock()
        self._held = _HeldChannel()
        weakref.finalize(self, self._held.close_soon)

    def __getstate__(self) -> dict[str, object]:
        return {"settings": self.settings}  # channels never cross a pickle

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token (sent per call, so it works on any channel)."""
        token = self.settings.token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def get(self) -> grpc.Channel:
        """This process's channel (opened on first use, and again after :meth:`close`).
        A call made on it after another thread closed it raises ValueError, which the
        client's calls turn into Unavailable."""
        current = self._held.current  # one read: the channel and its process together
        if current is not None and current[1] == os.getpid():
            return current[0]
        with GATE.call(), self._lock:  # the gate first: see stub()
            return self._opened()

    def stub(self, factory: Callable[[grpc.Channel], T]) -> T:
        """``factory(channel)`` (a stub) on this process's channel, made under the lock
        that :meth:`close` takes: a stub registers its methods with the channel in
        gRPC's core, which crashed the process (SIGSEGV) on a channel another thread
        had just closed. A call made on the stub once the channel is closed ends with
        Unavailable. Thread-safe.

        The fork gate is entered before the lock is taken (here, in get() and close()),
        never the other way: a thread holding the lock while it waited for a fork
        would hold up every call in flight that needs the lock, and the fork waits for
        those calls (it went ahead at its deadline with one in flight)."""
        with GATE.call(), self._lock:
            return factory(self._opened())

    def _opened(self) -> grpc.Channel:
        """This process's channel, opened if it has none; inside the fork gate, with
        ``_lock`` held."""
        current = self._held.current
        if current is None or current[1] != os.getpid():
            current = self._held.current = (self._open(), os.getpid())
        return current[0]

    def _open(self) -> grpc.Channel:
        _say_if_fork_support_is_off()
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            # Let an idle connection go before the server does (its connection_idle_s,
            # 300 s by default): closed by the server, gRPC's core logs the GOAWAY on
            # stderr in the caller's process (a DataLoader worker idle through an eval).
            ("grpc.client_idle_timeout_ms", CLIENT_IDLE_MS),
            # A channel whose server went away keeps reconnecting in the background,
            # waiting longer each time: with gRPC's defaults (1 s, growing to 120 s) a
            # client kept failing for 8 s after a node that was down a minute was back,
            # longer than its retries last. (Not min_reconnect_backoff_ms: that is the
            # time one connection attempt may take, 20 s.)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]
        s = self.settings
        if s.server_name:
            options.append(("grpc.ssl_target_name_override", s.server_name))
        if s.insecure:
            return grpc.insecure_channel(s.address, options=options)
        try:
            root = s.ca.read_bytes() if s.ca is not None else None
            cert = s.client_cert.read_bytes() if s.client_cert is not None else None
            key = s.client_key.read_bytes() if s.client_key is not None else None
        except OSError as exc:
            raise InvalidArgument(f"cannot read TLS file: {exc}") from exc
        # Else grpc fails every call with "Failed to create security handshaker", and
        # the CLI's hint blamed the CA file and the address.
        for path, pem, marker, what in (
            (s.ca, root, b"-----BEGIN CERTIFICATE-----", "certificate"),
            (s.client_cert, cert, b"-----BEGIN CERTIFICATE-----", "certificate"),
            (s.client_key, key, b"PRIVATE KEY-----", "private key"),
        ):
            if pem is not None and (marker not in pem or b"-----BEGIN " not in pem):
                raise InvalidArgument(f"TLS file {path} holds no PEM {what}")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )
        return grpc.secure_channel(s.address, credentials, options=options)

    def close(self) -> None:
        """Close this process's channel (a channel inherited through fork is left alone)."""
        with GATE.call(), self._lock:  # the gate first: see stub()
            self._held.close()
