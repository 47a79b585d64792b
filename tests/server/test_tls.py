"""The local CA, server and client certificates (tierstore/server/tls.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from concurrent import futures
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tierstore.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from tierstore.server.tls import (
    ServerCertificateRenewal,
    TlsMaterial,
    ensure_tls_material,
    issue_client_certificate,
    principal_from_certificate,
    renew_server_certificate,
)

FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(pem: bytes) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        set(names.get_values_for_type(x509.DNSName)),
        {str(ip) for ip in names.get_values_for_type(x509.IPAddress)},
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


@pytest.fixture
def material(tmp_path: Path) -> TlsMaterial:
    return ensure_tls_material(tmp_path / "data", ["node-1.example", "10.1.2.3"])


def test_first_start_creates_private_files(material: TlsMaterial) -> None:
    assert mode(material.directory) == 0o700
    for name in FILES:
        assert mode(material.directory / name) == 0o600, name
    assert not [p for p in material.directory.iterdir() if p.name.endswith(".tmp")]
    assert material.ca_pem == material.ca_cert_path.read_bytes()
    assert material.server_cert_pem == material.server_cert_path.read_bytes()
    assert material.server_key_pem == material.server_key_path.read_bytes()


def test_certificates_have_the_right_shape(material: TlsMaterial) -> None:
    ca = x509.load_pem_x509_certificate(material.ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3649)
    server = x509.load_pem_x509_certificate(material.server_cert_pem)
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert sans(material.server_cert_pem) == (
        {"localhost", "node-1.example"},
        {"127.0.0.1", "::1", "10.1.2.3"},
    )


def test_repr_hides_keys(material: TlsMaterial) -> None:
    shown = repr(material)
    assert "PRIVATE" not in shown
    assert material.server_key_pem.decode() not in shown
    assert "server.key" in shown  # paths are fine


def test_restart_reuses_everything(tmp_path: Path, material: TlsMaterial) -> None:
    before = snapshot(material.directory)
    again = ensure_tls_material(tmp_path / "data", ["NODE-1.example."])
    assert again == material
    assert snapshot(material.directory) == before


def test_new_hostname_reissues_only_the_server_certificate(
    tmp_path: Path, material: TlsMaterial
) -> None:
    before = snapshot(material.directory)
    again = ensure_tls_material(tmp_path / "data", ["node-2.example", "fd00::7"])
    after = snapshot(material.directory)
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert after["server.pem"] != before["server.pem"]
    assert after["server.key"] != before["server.key"]
    dns, ips = sans(again.server_cert_pem)
    assert "node-2.example" in dns and "fd00::7" in ips and "localhost" in dns
    for name in FILES:
        assert mode(material.directory / name) == 0o600


def test_broken_server_files_are_replaced(tmp_path: Path, material: TlsMaterial) -> None:
    other = ensure_tls_material(tmp_path / "other")
    # a certificate from another CA, then a key that does not match
    for name, data in (("server.pem", other.server_cert_pem), ("server.key", other.server_key_pem)):
        ca_before = material.ca_cert_path.read_bytes()
        (material.directory / name).write_bytes(data)
        fixed = ensure_tls_material(tmp_path / "data", ["node-1.example"])
        assert fixed.ca_pem == ca_before
        cert = x509.load_pem_x509_certificate(fixed.server_cert_pem)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(fixed.ca_pem))


def test_ca_without_key_is_refused(tmp_path: Path, material: TlsMaterial) -> None:
    material.ca_key_path.unlink()
    with pytest.raises(FailedPrecondition, match=r"ca\.key"):
        ensure_tls_material(tmp_path / "data")


def test_ca_key_without_certificate_starts_a_new_ca(tmp_path: Path, material: TlsMaterial) -> None:
    material.ca_cert_path.unlink()  # as if a crash came between the two writes
    again = ensure_tls_material(tmp_path / "data")
    assert again.ca_pem != material.ca_pem
    assert again.server_cert_pem != material.server_cert_pem


@pytest.mark.parametrize("linked", ["ca.pem", "ca.key"])
def test_a_ca_file_linked_to_nothing_is_refused_not_replaced(
    tmp_path: Path, material: TlsMaterial, linked: str
) -> None:
    # The CA kept elsewhere (a secret mount, say) and linked in: while the link's target
    # is missing, a start must not take it for a first start and make a new CA over it.
    kept = tmp_path / "kept"
    kept.mkdir()
    link = material.directory / linked
    link.rename(kept / linked)
    link.symlink_to(kept / linked)
    assert ensure_tls_material(tmp_path / "data").ca_pem == material.ca_pem
    kept.rename(tmp_path / "unmounted")
    with pytest.raises(FailedPrecondition, match=f"{linked}.*link to .*which does not exist"):
        ensure_tls_material(tmp_path / "data")
    assert link.is_symlink()
    (tmp_path / "unmounted").rename(kept)
    assert ensure_tls_material(tmp_path / "data").ca_pem == material.ca_pem


def test_loose_modes_are_tightened(tmp_path: Path, material: TlsMaterial) -> None:
    material.server_key_path.chmod(0o644)
    material.directory.chmod(0o755)
    ensure_tls_material(tmp_path / "data", ["node-1.example"])
    assert mode(material.server_key_path) == 0o600
    assert mode(material.directory) == 0o700


# -- reissued while serving ---------------------------------------------------------------


def resigned(pem: bytes, tls_dir: Path, days_left: int = 10) -> bytes:
    """Certificate ``pem`` made again by the CA in ``tls_dir``, for the same key, names
    and usages, ending ``days_left`` days from now."""
    cert = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=800))
        .not_valid_after(now + dt.timedelta(days=days_left))
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def near_its_end(material: TlsMaterial) -> TlsMaterial:
    """``material`` with its server certificate (on disk too) 10 days from its end."""
    pem = resigned(material.server_cert_pem, material.directory)
    material.server_cert_path.write_bytes(pem)
    return dataclasses.replace(material, server_cert_pem=pem)


def test_renewal_reissues_for_the_same_names_under_the_same_ca(material: TlsMaterial) -> None:
    before = snapshot(material.directory)
    assert renew_server_certificate(material) == material  # not near its end: kept
    assert snapshot(material.directory) == before
    old = near_its_end(material)
    renewed = renew_server_certificate(old)
    after = snapshot(material.directory)
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert renewed.server_cert_pem == after["server.pem"] != old.server_cert_pem
    assert renewed.server_key_pem == after["server.key"] != before["server.key"]
    assert sans(renewed.server_cert_pem) == sans(material.server_cert_pem)
    cert = x509.load_pem_x509_certificate(renewed.server_cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(material.ca_pem))
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=800)
    for name in FILES:
        assert mode(material.directory / name) == 0o600


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_renewal_never_makes_or_takes_another_ca(
    tmp_path: Path, material: TlsMaterial, change: str
) -> None:
    # A start would make a new CA where ca.pem is gone; a serving node must not: its
    # clients trust the one it started with.
    old = near_its_end(material)
    if change == "removed":
        material.ca_cert_path.unlink()
    else:
        other = ensure_tls_material(tmp_path / "other")
        material.ca_cert_path.write_bytes(other.ca_pem)
        material.ca_key_path.write_bytes(other.ca_key_path.read_bytes())
    before = {path.name: path.read_bytes() for path in material.directory.glob("*.*")}
    with pytest.raises(FailedPrecondition, match=r"ca\.pem"):
        renew_server_certificate(old)
    assert {path.name: path.read_bytes() for path in material.directory.glob("*.*")} == before


def test_a_renewal_is_handed_out_once(material: TlsMaterial) -> None:
    assert ServerCertificateRenewal(material).renewed() is None  # not due
    old = near_its_end(material)
    renewal = ServerCertificateRenewal(old)
    results: list[TlsMaterial | None] = []
    start = threading.Barrier(8)

    def handshake() -> None:
        start.wait()
        results.append(renewal.renewed())

    threads = [threading.Thread(target=handshake) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    renewed = [found for found in results if found is not None]
    assert len(renewed) == 1  # the others kept the certificate they had
    assert renewed[0].server_cert_pem == material.server_cert_path.read_bytes()
    assert renewed[0].server_cert_pem != old.server_cert_pem
    assert renewal.renewed() is None  # the new one is far from its end


def test_a_failed_renewal_is_logged_and_tried_again_later(
    material: TlsMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    old = near_its_end(material)
    material.ca_key_path.rename(material.directory / "ca.key.away")
    renewal = ServerCertificateRenewal(old, retry_s=3600)
    assert renewal.renewed() is None
    assert "could not reissue the server certificate" in caplog.text
    assert "ca.key" in caplog.text
    (material.directory / "ca.key.away").rename(material.ca_key_path)
    assert renewal.renewed() is None  # not tried again at once: each handshake asks
    assert caplog.text.count("could not reissue") == 1
    assert ServerCertificateRenewal(old, retry_s=0).renewed() is not None


@pytest.mark.parametrize("bad", ["", "bad host", "-x.example", "a..b", "x" * 64, "ünï.example"])
def test_bad_hostnames(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ensure_tls_material(tmp_path, [bad])


def test_client_certificate_names_its_principal(material: TlsMaterial) -> None:
    cert_pem, key_pem = issue_client_certificate(material, "svc:trainer")
    assert b"PRIVATE KEY" in key_pem
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(material.ca_pem))
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert principal_from_certificate(cert_pem) == "svc:trainer"


def test_principal_extraction_refuses_non_client_certificates(material: TlsMaterial) -> None:
    for pem in (material.server_cert_pem, material.ca_pem, b"garbage", b""):
        with pytest.raises(Unauthenticated):
            principal_from_certificate(pem)


def test_bad_client_names(material: TlsMaterial) -> None:
    for bad in ("", "has space", "x" * 200):
        with pytest.raises(InvalidArgument):
            issue_client_certificate(material, bad)


# -- real handshakes -------------------------------------------------------------------------


def write_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


def ssl_handshake(
    material: TlsMaterial, server_hostname: str, client: tuple[Path, Path] | None
) -> str | None:
    """Serve one mutual-TLS connection on 127.0.0.1; returns the client's principal."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(material.server_cert_path, material.server_key_path)
    server_ctx.load_verify_locations(cadata=material.ca_pem.decode())
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cadata=material.ca_pem.decode())
    if client is not None:
        client_ctx.load_cert_chain(*client)
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    seen.append(principal_from_certificate(ssl.DER_cert_to_PEM_cert(der).encode()))
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(10)
    return seen[0] if seen else None


def test_ssl_mutual_tls_handshake(tmp_path: Path, material: TlsMaterial) -> None:
    client = write_pair(tmp_path, "client", *issue_client_certificate(material, "alice"))
    assert ssl_handshake(material, "localhost", client) == "alice"
    assert ssl_handshake(material, "node-1.example", client) == "alice"
    assert ssl_handshake(material, "127.0.0.1", client) == "alice"


def test_ssl_handshake_checks_the_server_name(tmp_path: Path, material: TlsMaterial) -> None:
    client = write_pair(tmp_path, "client", *issue_client_certificate(material, "alice"))
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl_handshake(material, "evil.example", client)


def test_ssl_handshake_refuses_foreign_and_missing_client_certs(
    tmp_path: Path, material: TlsMaterial
) -> None:
    foreign = ensure_tls_material(tmp_path / "foreign")
    stranger = write_pair(tmp_path, "stranger", *issue_client_certificate(foreign, "alice"))
    for client in (stranger, None):
        with pytest.raises((ssl.SSLError, OSError)):
            ssl_handshake(material, "localhost", client)


def _who(request: bytes, context: grpc.ServicerContext) -> bytes:
    # What the server's auth interceptor will do: the handshake verified this certificate.
    pem_certs = cast(list[bytes], context.auth_context()["x509_pem_cert"])
    return principal_from_certificate(pem_certs[0]).encode()


def _call(channel: grpc.Channel) -> bytes:
    method = channel.unary_unary(
        "/test.Who/Am", request_serializer=bytes, response_deserializer=bytes
    )
    return method(b"", timeout=10)


def test_grpc_mutual_tls(tmp_path: Path, material: TlsMaterial) -> None:
    cert_pem, key_pem = issue_client_certificate(material, "svc:loader")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Who", {"Am": grpc.unary_unary_rpc_method_handler(_who)}
            )
        ]
    )
    credentials = grpc.ssl_server_credentials(
        [(material.server_key_pem, material.server_cert_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    server.start()
    try:
        good = grpc.ssl_channel_credentials(material.ca_pem, key_pem, cert_pem)
        with grpc.secure_channel(f"127.0.0.1:{port}", good) as channel:
            assert _call(channel) == b"svc:loader"
        anonymous = grpc.ssl_channel_credentials(material.ca_pem)
        with (
            grpc.secure_channel(f"127.0.0.1:{port}", anonymous) as channel,
            pytest.raises(grpc.RpcError),
        ):
            _call(channel)
    finally:
        server.stop(None)


def test_ip_sans_are_addresses(material: TlsMaterial) -> None:
    cert = x509.load_pem_x509_certificate(material.server_cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("::1") in names.get_values_for_type(x509.IPAddress)
