"""``connect()``: a :class:`~tierstore.client.client.Client` for a server, from its
arguments and the ``TIERSTORE_*`` environment, every argument checked before anything
connects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tierstore.client.arguments import (
    env_flag,
    optional_path,
    readable_tls_file,
)
from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.client.core import DEFAULT_FRAME_BYTES
from tierstore.client.deadlines import DEFAULT_STREAM_TIMEOUT_S, DEFAULT_TIMEOUT_S
from tierstore.client.local import LocalReadOptions
from tierstore.client.tokenfile import TokenFile
from tierstore.errors import InvalidArgument
from tierstore.types import check_bool

__all__ = ["connect"]


#: the variables :func:`connect` reads
_VARIABLES = (
    "TIERSTORE_ADDRESS",
    "TIERSTORE_TOKEN",
    "TIERSTORE_TOKEN_FILE",
    "TIERSTORE_CA",
    "TIERSTORE_CLIENT_CERT",
    "TIERSTORE_CLIENT_KEY",
    "TIERSTORE_INSECURE",
    "TIERSTORE_LOCAL_READS",
)


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
    stream_timeout_s: float = DEFAULT_STREAM_TIMEOUT_S,
    frame_bytes: int = DEFAULT_FRAME_BYTES,
    environ: Mapping[str, str] | None = None,
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
    ``TIERSTORE_LOCAL_READS`` is ``0``/``false``/``no``/``off``. ``timeout_s`` (default
    30): each attempt's deadline for a call that moves no shard (stat, list, the admin
    calls); ``stream_timeout_s`` (default 3600): a transfer's (get, put, download, the
    table and tensor reads; deletes and key rotation too, which may wait on the
    archive) — the longest a node that stopped answering can hold one.
    Both are positive seconds, and may be set on the client later too, as may
    ``frame_bytes``: the most bytes of one frame a put sends (4 MiB; at most the
    node's ``max_frame_bytes``, smaller on a node whose hot tier is). Nothing
    connects until the first call. Raises InvalidArgument for a bad address or
    ``TIERSTORE_LOCAL_READS`` or ``TIERSTORE_INSECURE`` value, both ``token`` and
    ``token_file``, an empty ``token``, ``token_file`` or TLS file name (an unset
    variable in a script: never the environment's instead), an unreadable token
    file, a TLS file that is not there, or an argument of the wrong type.
    """
    if environ is not None and not isinstance(environ, Mapping):
        raise InvalidArgument(
            f"environ= must be a mapping of variables (os.environ, a dict), not "
            f"{type(environ).__name__}"
        )
    env = os.environ if environ is None else environ
    for variable in _VARIABLES:  # a mapping loaded from YAML or JSON may hold numbers
        if variable in env and not isinstance(env[variable], str):
            raise InvalidArgument(
                f"{variable} must be a str, not {type(env[variable]).__name__} (in environ=)"
            )
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
    if token_path is None and not token and not env.get("TIERSTORE_TOKEN"):
        token_path = optional_path("TIERSTORE_TOKEN_FILE", env.get("TIERSTORE_TOKEN_FILE"))
    source: TokenFile | None = None
    if token_path is not None:
        token, source = TokenFile.read(token_path)
    token = token or env.get("TIERSTORE_TOKEN") or None
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
        token_file=source,
        ca=tls_files["ca"],
        client_cert=tls_files["client_cert"],
        client_key=tls_files["client_key"],
        insecure=insecure,
    )
    for name, path in tls_files.items():
        if path is not None and not insecure:  # plaintext reads none of them
            readable_tls_file(name, tls_variables[name][1], path)
    return Client(
        settings,
        timeout_s=timeout_s,
        stream_timeout_s=stream_timeout_s,
        frame_bytes=frame_bytes,
        local=LocalReadOptions(enabled=local_reads),
    )
