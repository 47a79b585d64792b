"""A serving node reissues its server certificate as it nears its end (tls.py, app.py).

The certificate lasts 825 days and was checked only at start: a node left running past
its end served an expired certificate, and every new connection's handshake failed.
Here the node is told (by a variable for tests only) to reissue a certificate a few
seconds after it was made, instead of 30 days before its end.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from tests.server.conftest import ServerProcess, poll, unique
from tierstore.cli.serve import RENEW_CERTIFICATE_BEFORE_VARIABLE
from tierstore.server.tls import SERVER_VALIDITY_DAYS

# Due 3 s after it was issued.
RENEW_BEFORE_S = SERVER_VALIDITY_DAYS * 86400 - 3


def served_certificate(node: ServerProcess, client: tuple[Path, Path] | None) -> x509.Certificate:
    """The certificate a new connection to ``node`` is shown, verified against the CA
    (as the client library verifies it: it trusts the CA, it pins no certificate)."""
    context = ssl.create_default_context(cafile=node.ca_path)
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(*client)
    with (
        socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.parametrize("flags", [(), ("--require-client-cert",)], ids=["tls", "mtls"])
def test_a_serving_node_reissues_its_certificate(
    flags: tuple[str, ...], tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    node = spawn_server(
        tmp_path / "node", *flags, env={RENEW_CERTIFICATE_BEFORE_VARIABLE: str(RENEW_BEFORE_S)}
    )
    pid = node.pid
    ca_pem = node.ca_path.read_bytes()
    client_files = None
    if flags:
        tls_dir = node.data_dir / "tls"
        client_files = (tls_dir / "admin-cli.pem", tls_dir / "admin-cli.key")
    files = {"client_cert": client_files[0], "client_key": client_files[1]} if client_files else {}
    dataset = unique()
    with node.connect(**files) as before:  # a connection made before the renewal
        before.create_dataset(dataset)
        before.put(dataset, "a", b"first")
        first = served_certificate(node, client_files)

        def renewed() -> x509.Certificate | None:
            seen = served_certificate(node, client_files)
            return seen if seen.not_valid_after_utc > first.not_valid_after_utc else None

        later = poll(renewed, 60, "a new connection to be shown a renewed certificate", 0.2)
        assert later is not None
        assert later.serial_number != first.serial_number
        assert later.public_key() != first.public_key()  # a new key too
        ca = x509.load_pem_x509_certificate(ca_pem)
        later.verify_directly_issued_by(ca)  # by the same CA, which stays
        assert node.ca_path.read_bytes() == ca_pem
        assert later.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ) == first.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        # The node never restarted, and the connection made before still serves.
        assert node.process is not None and node.process.poll() is None and node.pid == pid
        assert bytes(before.get(dataset, "a")) == b"first"
        before.put(dataset, "b", b"second")
    # A client connecting now, trusting the CA, is served too.
    with node.connect(**files) as after:
        assert bytes(after.get(dataset, "b")) == b"second"
    assert "reissued the server certificate" in node.errors()
    assert node.process.poll() is None and node.pid == pid
