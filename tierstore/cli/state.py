"""What the options given to a ``tierstore`` command set (the server it calls and how,
``--json``, ``--timeout``), and the clients it made, closed when it ends. One object for
the process: a ``tierstore`` process runs one command."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tierstore.client.deadlines import DEFAULT_STREAM_TIMEOUT_S, DEFAULT_TIMEOUT_S

__all__ = [
    "DEFAULT_DEADLINES",
    "State",
    "close_clients",
    "deadline_text",
    "gives_client_certificate",
    "speaks_plaintext",
    "state",
]


@dataclass
class State:
    """The connection options given (before the command's name or after it), --json,
    and the clients made so far."""

    address: str | None = None
    token: str | None = None
    #: the files' options as given ("" kept: refused as empty, not read as ".")
    token_file: str | None = None
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    #: --insecure (True) or --no-insecure (False); None: TIERSTORE_INSECURE decides
    insecure: bool | None = None
    #: seconds any one call may take (None: the client's defaults)
    timeout: float | None = None
    json: bool = False
    #: whether the command changes what the node holds (a report of it lost is said)
    changes: bool = False
    #: whether such a command's report could not be written (it then exits 1 at least)
    report_lost: bool = False
    #: clients this command made, closed when it ends (see command_client)
    clients: list[Any] = field(default_factory=list)


state = State()

#: the client's deadlines when --timeout is not given
DEFAULT_DEADLINES = f"{DEFAULT_TIMEOUT_S:g} s, {DEFAULT_STREAM_TIMEOUT_S:g} s for transfers"


def close_clients() -> None:
    """Close the clients this command made (closing reports the reads they served in
    place)."""
    while state.clients:
        state.clients.pop().close()


def deadline_text() -> str:
    """The deadline a call had, for an error line: --timeout's, or the defaults."""
    return DEFAULT_DEADLINES if state.timeout is None else f"{state.timeout:g} s"


def speaks_plaintext() -> bool:
    """Whether this command speaks plaintext: --insecure, or TIERSTORE_INSECURE set
    and not --no-insecure."""
    if state.insecure is not None:
        return state.insecure
    flag = os.environ.get("TIERSTORE_INSECURE", "").strip().lower()
    return flag in ("1", "true", "yes", "on")


def gives_client_certificate() -> bool:
    """Whether this command brings a client certificate or key: --client-cert or
    --client-key, or TIERSTORE_CLIENT_CERT or TIERSTORE_CLIENT_KEY."""
    return bool(
        state.client_cert
        or state.client_key
        or os.environ.get("TIERSTORE_CLIENT_CERT")
        or os.environ.get("TIERSTORE_CLIENT_KEY")
    )
