"""A serving node reissues its certificates as they near their end (tls.py, app.py,
serve.py): its server certificate, and with mutual TLS its admin CLI's.

The certificate lasts 825 days and was checked only at start: a node left running past
its end served an expired certificate, and every new connection's handshake failed.
Here the node is told (by variables for tests only) to reissue a certificate a few
seconds after it was made, instead of 30 days before its end, and to look for a due
admin CLI certificate often, instead of each hour.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from tests.server.conftest import ServerProcess, poll, unique
from tests.server.test_tls import resigned
from tierstore.cli.serve import CHECK_VARIABLE, RENEW_CERTIFICATE_BEFORE_VARIABLE
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
        before.create_dataset(dataset, encrypted=False)
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


def test_a_serving_node_reissues_the_admin_clis_certificate(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # With --require-client-cert the node makes tls/admin-cli.pem (365 days) for the
    # banner's exports, and made it again only at start: a year on, the CLI on the
    # node's own host could not connect.
    node = spawn_server(tmp_path / "node", "--require-client-cert", env={CHECK_VARIABLE: "0.2"})
    tls_dir = node.data_dir / "tls"
    pem, key = tls_dir / "admin-cli.pem", tls_dir / "admin-cli.key"
    pem.write_bytes(resigned(pem.read_bytes(), tls_dir))  # as if a year had gone by
    a_month_on = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)

    def reissued() -> x509.Certificate | None:
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        return cert if cert.not_valid_after_utc > a_month_on else None

    cert = poll(reissued, 30, "the node to reissue admin-cli.pem")
    assert cert is not None
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(node.ca_path.read_bytes()))
    with node.connect(client_cert=pem, client_key=key) as admin:
        assert admin.list_datasets() == []


@pytest.mark.parametrize("value", ["abc", "0", "nan", "-1"])
def test_a_bad_value_of_a_variable_for_tests_is_refused_before_the_node_is_up(
    value: str, tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # It was read after the banner: "abc" ended a node that had said it was serving,
    # "0" made it look every 0.1 s, and "nan" made it never look.
    with pytest.raises(AssertionError, match="the server exited with 2") as refused:
        spawn_server(tmp_path / "node", env={CHECK_VARIABLE: value})
    said = str(refused.value)
    assert CHECK_VARIABLE in said and "serving" not in said.split("stderr:")[0], said
