"""gRPC channels for the client: created lazily, one per process, safe across ``fork()``.

A channel (like every client object) is owned by one process. The client keeps
the process id that made its channel and makes a new one when it finds itself
in a forked child; the parent's channel is never used or closed there.
``GRPC_ENABLE_FORK_SUPPORT=1`` must be set before grpc is first imported for a
forked child to open channels reliably (DESIGN.md, section 5): importing
:mod:`tierstore` sets it unless the environment already chose.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "1")

import grpc

from tierstore.errors import InvalidArgument
from tierstore.loopback import is_loopback_address

__all__ = ["ChannelSettings", "ProcessChannel"]

#: Largest message either side sends: a 4 MiB frame plus headroom for its envelope.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Where and how to connect. ``ca`` is a PEM file; ``insecure`` only for loopback."""

    address: str
    token: str | None = field(default=None, repr=False)
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = field(default=None, repr=False)
    insecure: bool = False
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not self.address or ":" not in self.address:
            raise InvalidArgument(
                f"address must be HOST:PORT, got {self.address!r} (pass one, or set "
                "TIERSTORE_ADDRESS; the CLI takes --address)"
            )
        if self.insecure and not is_loopback_address(self.address):
            raise InvalidArgument("plaintext connections are allowed only to loopback addresses")


class ProcessChannel:
    """A lazily created channel, re-created in each new process. Thread-safe."""

    def __init__(self, settings: ChannelSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._pid = -1

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
        """This process's channel (opened on first use)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._channel = self._open()
                    self._pid = os.getpid()
        assert self._channel is not None
        return self._channel

    def _open(self) -> grpc.Channel:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
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
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )
        return grpc.secure_channel(s.address, credentials, options=options)

    def close(self) -> None:
        """Close this process's channel (a channel inherited through fork is left alone)."""
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = None
            self._pid = -1
