"""The local certificate authority ``tierstore serve`` keeps in its data directory.

On first start :func:`ensure_tls_material` creates, under ``<data-dir>/tls/`` (mode 0700):

* ``ca.pem`` / ``ca.key`` — a self-signed CA (EC P-256, SHA-256, 10 years), unique to this
  installation; clients trust ``ca.pem``.
* ``server.pem`` / ``server.key`` — the server's certificate (825 days, serverAuth), valid
  for ``localhost``, ``127.0.0.1``, ``::1`` and the host names it is given.

Every file has mode 0600 and is written atomically. Later starts reuse the files; the
server certificate alone is reissued when it does not cover the requested names, nears its
end (30 days), or no longer matches its key or the CA. The CA is never replaced silently:
clients and issued client certificates trust it.

A node that keeps serving past that point reissues it while it serves:
:class:`ServerCertificateRenewal` says, at each new connection, whether a new certificate
is due (a clock read until it is), and :func:`renew_server_certificate` makes it, for the
same names and under the same CA, which it never creates or replaces.

:func:`issue_client_certificate` signs client certificates (clientAuth) for mutual TLS;
the certificate's common name is the principal name, which
:func:`principal_from_certificate` reads back from a certificate the handshake verified.

Private keys stay out of ``repr``: :class:`TlsMaterial` hides its key bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tierstore.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from tierstore.private_files import (
    ensure_private_dir,
    exclusive_lock,
    refuse_dangling_link,
    restrict_mode,
    write_private_file,
)
from tierstore.server.authz import check_principal_name

__all__ = [
    "CA_VALIDITY_DAYS",
    "CLIENT_VALIDITY_DAYS",
    "DEFAULT_HOSTNAMES",
    "RENEW_BEFORE_DAYS",
    "SERVER_VALIDITY_DAYS",
    "ServerCertificateRenewal",
    "TlsMaterial",
    "check_hostnames",
    "client_certificate_reusable",
    "ensure_tls_material",
    "issue_client_certificate",
    "principal_from_certificate",
    "renew_server_certificate",
]

log = logging.getLogger(__name__)

CA_VALIDITY_DAYS = 3650
SERVER_VALIDITY_DAYS = 825
CLIENT_VALIDITY_DAYS = 365
#: A server certificate with less left than this is reissued (at start, and while serving).
RENEW_BEFORE_DAYS = 30
#: How long a serving node waits before it tries again to reissue its certificate after
#: a try failed (seconds): it serves the one it has meanwhile.
RENEWAL_RETRY_S = 60.0
#: Names every server certificate covers.
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")

_RENEW_BEFORE = dt.timedelta(days=RENEW_BEFORE_DAYS)
# Tolerates clocks a little behind ours.
_BACKDATE = dt.timedelta(minutes=5)
_DNS_RE = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)

_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Where the TLS files are, and the PEM bytes a server needs (key bytes kept out of repr).

    The CA key stays on disk (``ca_key_path``); only :func:`issue_client_certificate`
    reads it.
    """

    directory: Path
    ca_cert_path: Path
    ca_key_path: Path
    server_cert_path: Path
    server_key_path: Path
    ca_pem: bytes = field(repr=False)
    server_cert_pem: bytes = field(repr=False)
    server_key_pem: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Names:
    dns: tuple[str, ...]
    ips: tuple[_IpAddress, ...]

    def general_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in self.dns]
        names.extend(x509.IPAddress(ip) for ip in self.ips)
        return names


def ensure_tls_material(data_dir: Path, hostnames: Sequence[str] = ()) -> TlsMaterial:
    """Create or reuse the CA and server certificate under ``<data_dir>/tls``.

    ``hostnames`` are extra DNS names or IP addresses the server certificate must cover.
    Safe against concurrent starts on one data directory (an exclusive file lock) and
    against crashes (atomic writes; keys are written before their certificates).

    Raises :class:`~tierstore.errors.InvalidArgument` for a host name that is neither a
    DNS name nor an IP address; :class:`~tierstore.errors.FailedPrecondition` when the CA
    files are unusable (certificate without key, key not matching, expired) — delete
    the ``tls`` directory to start a new CA; :class:`OSError` for file system errors.
    """
    names = _names(hostnames)
    tls_dir = data_dir / "tls"
    ensure_private_dir(tls_dir)
    paths = {name: tls_dir / name for name in ("ca.pem", "ca.key", "server.pem", "server.key")}
    with exclusive_lock(tls_dir / ".lock"):
        now = dt.datetime.now(dt.UTC)
        ca_cert, ca_key = _load_or_create_ca(paths["ca.pem"], paths["ca.key"], now)
        server_cert_pem, server_key_pem = _load_or_create_server(
            paths["server.pem"], paths["server.key"], ca_cert, ca_key, names, now, _RENEW_BEFORE
        )
        for name, path in paths.items():
            restrict_mode(path, secret=name.endswith(".key"))
    return TlsMaterial(
        directory=tls_dir,
        ca_cert_path=paths["ca.pem"],
        ca_key_path=paths["ca.key"],
        server_cert_path=paths["server.pem"],
        server_key_path=paths["server.key"],
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        server_cert_pem=server_cert_pem,
        server_key_pem=server_key_pem,
    )


def renew_server_certificate(
    material: TlsMaterial, renew_before: dt.timedelta = _RENEW_BEFORE
) -> TlsMaterial:
    """``material`` with its server certificate reissued, for the names it holds, if it
    has ``renew_before`` or less left (else as on disk: one another process reissued).

    For a serving node (:class:`ServerCertificateRenewal`): the CA on disk must be the
    one ``material`` holds, which clients trust; it is never created or replaced here.
    Raises :class:`~tierstore.errors.FailedPrecondition` when it is missing, another
    one, or unusable, :class:`OSError` for file system errors. Takes the same lock as
    :func:`ensure_tls_material`; thread-safe.
    """
    served = x509.load_pem_x509_certificate(material.server_cert_pem)
    sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    names = _names([*sans.get_values_for_type(x509.DNSName), *ips])
    with exclusive_lock(material.directory / ".lock"):
        now = dt.datetime.now(dt.UTC)
        if not material.ca_cert_path.exists():
            raise FailedPrecondition(f"{material.ca_cert_path} is gone")
        ca_cert, ca_key = _load_ca(material.ca_cert_path, material.ca_key_path, now)
        if ca_cert != x509.load_pem_x509_certificate(material.ca_pem):
            raise FailedPrecondition(
                f"{material.ca_cert_path} is not the CA this node started with"
            )
        cert_pem, key_pem = _load_or_create_server(
            material.server_cert_path,
            material.server_key_path,
            ca_cert,
            ca_key,
            names,
            now,
            renew_before,
        )
        restrict_mode(material.server_key_path, secret=True)
        restrict_mode(material.server_cert_path, secret=False)
    return dataclasses.replace(material, server_cert_pem=cert_pem, server_key_pem=key_pem)


class ServerCertificateRenewal:
    """When a serving node's certificate is due to be reissued, and the reissuing.

    :meth:`renewed` is meant to run before each TLS handshake (gRPC's certificate
    fetcher): a clock read until the certificate has ``renew_before`` left, then one
    caller reissues it (:func:`renew_server_certificate`) while the others go on with
    the one they have. A failed try is logged and tried again ``retry_s`` later.
    Thread-safe.
    """

    def __init__(
        self,
        material: TlsMaterial,
        renew_before: dt.timedelta = _RENEW_BEFORE,
        retry_s: float = RENEWAL_RETRY_S,
    ) -> None:
        self._material = material
        self._renew_before = renew_before
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._due = self._due_time(material)

    def renewed(self) -> TlsMaterial | None:
        """The material with the new server certificate, once, when one was just made;
        None otherwise (almost always)."""
        if time.time() < self._due or not self._lock.acquire(blocking=False):
            return None
        try:
            if time.time() < self._due:
                return None
            self._due = time.time() + self._retry_s  # whatever happens below
            try:
                material = renew_server_certificate(self._material, self._renew_before)
            except (FailedPrecondition, InvalidArgument, OSError, ValueError) as exc:
                log.warning(
                    "could not reissue the server certificate (valid until %s): %s; "
                    "trying again in %.0f s",
                    self._not_after(self._material).isoformat(),
                    exc,
                    self._retry_s,
                )
                return None
            self._due = self._due_time(material)
            if material.server_cert_pem == self._material.server_cert_pem:
                return None  # not due after all: the clock went back
            self._material = material
            log.info(
                "reissued the server certificate (valid until %s)",
                self._not_after(material).isoformat(),
            )
            return material
        finally:
            self._lock.release()

    def _due_time(self, material: TlsMaterial) -> float:
        return (self._not_after(material) - self._renew_before).timestamp()

    @staticmethod
    def _not_after(material: TlsMaterial) -> dt.datetime:
        return x509.load_pem_x509_certificate(material.server_cert_pem).not_valid_after_utc


def issue_client_certificate(
    material: TlsMaterial, common_name: str, *, validity_days: int = CLIENT_VALIDITY_DAYS
) -> tuple[bytes, bytes]:
    """Sign a client certificate for principal ``common_name``; returns ``(cert_pem, key_pem)``.

    The certificate carries the clientAuth usage only, so it cannot serve as a server (nor
    the server's certificate as a client). Keep the returned key secret. Raises
    :class:`~tierstore.errors.InvalidArgument` for a bad principal name or validity,
    :class:`~tierstore.errors.FailedPrecondition` if the CA key is unusable. Thread-safe.
    """
    check_principal_name(common_name)
    if validity_days < 1:
        raise InvalidArgument(f"validity_days must be at least 1, not {validity_days}")
    ca_cert = x509.load_pem_x509_certificate(material.ca_pem)
    ca_key = _load_key(material.ca_key_path.read_bytes(), material.ca_key_path)
    if ca_key.public_key() != ca_cert.public_key():
        raise FailedPrecondition(f"{material.ca_key_path} does not match the CA certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        _builder(_name(common_name), ca_cert, key, now, validity_days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def principal_from_certificate(pem: bytes) -> str:
    """The principal name (common name) of a client certificate.

    Call it only on a certificate the TLS handshake has verified against the CA (in gRPC:
    ``context.auth_context()["x509_pem_cert"][0]``); this function checks usage and name,
    not the signature chain. Raises :class:`~tierstore.errors.Unauthenticated` when the
    bytes are no certificate, it lacks the clientAuth usage, or its common name is missing,
    repeated or not a valid principal name. Thread-safe.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Unauthenticated(reason="bad-certificate") from exc
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise Unauthenticated(reason="not-a-client-certificate") from exc
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise Unauthenticated(reason="not-a-client-certificate")
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) != 1 or not isinstance(common_names[0].value, str):
        raise Unauthenticated(reason="bad-common-name")
    try:
        return check_principal_name(common_names[0].value)
    except InvalidArgument as exc:
        raise Unauthenticated(reason="bad-common-name") from exc


def check_hostnames(hostnames: Sequence[str]) -> None:
    """Raise InvalidArgument, as :func:`ensure_tls_material` would, for a host name
    that is neither a DNS name nor an IP address: for ``tierstore serve`` to refuse it
    before it makes anything, not once its store and archive are up."""
    _names(hostnames)


def _names(hostnames: Sequence[str]) -> _Names:
    if isinstance(hostnames, str):
        raise InvalidArgument("hostnames must be a sequence of names, not one string")
    dns: list[str] = []
    ips: list[_IpAddress] = []
    for raw in (*DEFAULT_HOSTNAMES, *hostnames):
        try:
            ip = ipaddress.ip_address(raw.strip("[]"))
        except ValueError:
            name = raw.lower().rstrip(".")
            if not _DNS_RE.fullmatch(name):
                raise InvalidArgument(f"{raw[:80]!r} is neither a DNS name nor an IP") from None
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    return _Names(tuple(dns), tuple(ips))


def _load_or_create_ca(
    cert_path: Path, key_path: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    refuse_dangling_link(cert_path, "the CA certificate")
    refuse_dangling_link(key_path, "the CA key")
    if cert_path.exists():
        return _load_ca(cert_path, key_path, now)
    # No certificate: a first start, or a crash before the certificate was written (a key
    # alone was never trusted by anyone), so a new CA is safe.
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"tierstore local CA {secrets.token_hex(4)}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_file(key_path, _key_pem(key))
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(
    cert_path: Path, key_path: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not key_path.exists():
        raise FailedPrecondition(
            f"{cert_path} exists but {key_path} does not; delete {cert_path.parent} "
            "to create a new CA (clients must then trust the new ca.pem)"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise FailedPrecondition(f"{cert_path} is not a PEM certificate") from exc
    key = _load_key(key_path.read_bytes(), key_path)
    if key.public_key() != cert.public_key():
        raise FailedPrecondition(f"{key_path} does not match {cert_path}")
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise FailedPrecondition(
            f"the CA certificate {cert_path} is not valid now; delete {cert_path.parent} "
            "to create a new CA"
        )
    return cert, key


def _load_or_create_server(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: _Names,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> tuple[bytes, bytes]:
    if cert_path.exists() and key_path.exists():
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        if _server_cert_reusable(cert_pem, key_pem, ca_cert, names, now, renew_before):
            return cert_pem, key_pem
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name("tierstore server"), ca_cert, key, now, SERVER_VALIDITY_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
    # Key first: a crash in between leaves a certificate that does not match its key,
    # which the next start detects and replaces.
    write_private_file(key_path, key_pem)
    write_private_file(cert_path, cert_pem)
    return cert_pem, key_pem


def _server_cert_reusable(
    cert_pem: bytes,
    key_pem: bytes,
    ca_cert: x509.Certificate,
    names: _Names,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> bool:
    cert = _reusable(cert_pem, key_pem, ca_cert, now, renew_before)
    if cert is None:
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    ips = set(sans.get_values_for_type(x509.IPAddress))
    return set(names.dns) <= dns and set(names.ips) <= ips


def client_certificate_reusable(material: TlsMaterial, cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether a client certificate and key made earlier still serve: issued by this CA
    (a new CA makes every old one useless), valid for more than ``RENEW_BEFORE_DAYS``,
    and matching its key (a crash between writing the two leaves them apart)."""
    ca_cert = x509.load_pem_x509_certificate(material.ca_pem)
    now = dt.datetime.now(dt.UTC)
    return _reusable(cert_pem, key_pem, ca_cert, now, _RENEW_BEFORE) is not None


def _reusable(
    cert_pem: bytes,
    key_pem: bytes,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> x509.Certificate | None:
    """The certificate of ``cert_pem``, if ``ca_cert`` issued it, ``key_pem`` is its
    key, and it is valid now and for more than ``renew_before``; else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None
    if key.public_key() != cert.public_key():
        return None
    if not cert.not_valid_before_utc <= now:
        return None
    if cert.not_valid_after_utc - now < renew_before:
        return None
    return cert


def _builder(
    subject: x509.Name,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    validity_days: int,
) -> x509.CertificateBuilder:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise FailedPrecondition(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FailedPrecondition(f"{path} is not an EC private key")
    return key
