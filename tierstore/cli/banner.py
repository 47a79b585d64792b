"""What a started node tells its operator (the banner: where to connect, with what),
and the admin CLI's client certificate a node with mutual TLS makes for it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TextIO

from tierstore.private_files import restrict_mode, write_private_file
from tierstore.server.app import TierstoreServer
from tierstore.server.tls import TlsMaterial, client_certificate_reusable, issue_client_certificate

__all__ = ["ADMIN_CLIENT_NAME", "connect_host", "ensure_admin_client_certificate", "print_banner"]


def connect_host(listen_host: str) -> str:
    """The host a client on this machine connects to for ``listen_host``: a wildcard
    (every interface) is no address to connect to, nor a name in the certificate, so
    the loopback address of its family."""
    if listen_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen_host in ("[::]", "::"):
        return "[::1]"
    return listen_host


#: The client certificate a node with mutual TLS makes for its admin CLI (in ``tls/``).
ADMIN_CLIENT_NAME = "admin-cli"


def ensure_admin_client_certificate(data_dir: Path, tls: TlsMaterial) -> tuple[Path, Path]:
    """For mutual TLS: ``tls/admin-cli.pem`` and its key ``tls/admin-cli.key`` (0600),
    made by the first start that needs them, and again when the CA changed, the pair
    nears its end or was torn apart, so that the CLI on this host can connect as the
    banner says (other callers get theirs from ``issue_client_certificate``)."""
    cert_path = data_dir / "tls" / f"{ADMIN_CLIENT_NAME}.pem"
    key_path = data_dir / "tls" / f"{ADMIN_CLIENT_NAME}.key"
    pair = cert_path.exists() and key_path.exists()
    if pair and client_certificate_reusable(tls, cert_path.read_bytes(), key_path.read_bytes()):
        restrict_mode(key_path)  # a reused key gets its mode back (as the node's own do)
        return cert_path, key_path
    cert_pem, key_pem = issue_client_certificate(tls, ADMIN_CLIENT_NAME)
    write_private_file(key_path, key_pem)  # the key first: a pair torn apart is remade
    write_private_file(cert_path, cert_pem)
    return cert_path, key_path


def print_banner(
    out: TextIO,
    listen_host: str,
    port: int,
    server: TierstoreServer,
    data_dir: Path,
    token: str | None,
    insecure: bool,
    client_files: tuple[Path, Path] | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Write the banner to ``out``: the node serves on ``port`` of ``listen_host`` (as
    bound), its health and metrics ports (the metrics bound on ``metrics_host``), and
    the exports a client on this host needs (an address it can connect to, the CA or
    --insecure, the client certificate, the admin token in ``data_dir``); a line saying
    the admin ``token`` is new, when it is."""
    # A wildcard is the truth for "serving on" (every interface, not loopback only),
    # but no address to connect to.
    address = f"{connect_host(listen_host)}:{port}"
    token_file = data_dir / "admin.token"
    client_lines = (
        [
            f"  export TIERSTORE_CLIENT_CERT={shlex.quote(str(client_files[0]))}",
            f"  export TIERSTORE_CLIENT_KEY={shlex.quote(str(client_files[1]))}",
        ]
        if client_files
        else []
    )
    lines = [
        f"tierstore: serving on {listen_host}:{port}"
        + (" (PLAINTEXT, loopback only)" if insecure else " (TLS)"),
        f"tierstore: health checks (plaintext) on port {server.health_port}"
        if server.health_port
        else "",
        f"tierstore: metrics on http://{connect_host(metrics_host)}:{server.metrics_port}/metrics"
        if server.metrics_port
        else "",
        "tierstore: connect with:",
        f"  export TIERSTORE_ADDRESS={address}",
        "  export TIERSTORE_INSECURE=1"
        if insecure
        else f"  export TIERSTORE_CA={shlex.quote(str(data_dir / 'tls' / 'ca.pem'))}",
        *client_lines,
        # The token's file, not the token: out of the environment every child of the
        # shell inherits (and `ps e` shows).
        f"  export TIERSTORE_TOKEN_FILE={shlex.quote(str(token_file))}"
        + ("" if token_file.exists() else "  # missing: put an admin token there first"),
        "  tierstore dataset ls",
        "tierstore: a new admin token was written to " + str(token_file) if token else "",
        "tierstore: ready",
    ]
    out.write("\n".join(line for line in lines if line) + "\n")
    out.flush()
