"""``HOST:PORT`` addresses, as a node listens on them and a client connects to them
(stdlib only).

gRPC takes a target string as it is and finds out late what is wrong with it: a port
past 65535 wraps around (``127.0.0.1:82979`` reached port 17443, another service's
perhaps), and a scheme of its own (``https://``) or a stray character gives "errors
resolving" at the first call. Both sides check their addresses here first; a client
may also give gRPC's own schemes (``dns:``, ``ipv4:``, ``ipv6:``).
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["connect_address_problem", "split_host_port"]

#: a host name or IPv4 address: letters, digits, dots, hyphens and underscores.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def split_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT``, or None unless PORT is ASCII digits from 0 to
    65535 (no sign, no spaces). HOST is what precedes the last colon, as it is: it may
    be empty, or a bracketed IPv6 address."""
    host, colon, port = address.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host, int(port)


#: gRPC's own name schemes: ``dns:[//authority/]HOST:PORT`` (the usual way to spread
#: calls over the addresses a name resolves to), ``ipv4:`` and ``ipv6:`` with one or
#: more comma-separated ``HOST:PORT``.
_GRPC_SCHEMES = ("dns", "ipv4", "ipv6")


def connect_address_problem(address: str) -> str | None:
    """What is wrong with ``address`` as a server to connect to, or None: it must be
    ``HOST:PORT``, the host a name, an IPv4 address or a bracketed IPv6 address, the
    port from 1 to 65535; or one of gRPC's ``dns:``, ``ipv4:`` or ``ipv6:`` targets
    of such addresses."""
    scheme, colon, rest = address.partition(":")
    if colon and scheme in _GRPC_SCHEMES and not rest.isdigit():  # not host "dns", port
        if scheme == "dns":
            if rest.startswith("//"):
                rest = rest[2:].partition("/")[2]  # the DNS server to ask: gRPC's business
            return _host_port_problem(rest)
        problems = (_literal_problem(scheme, target) for target in rest.split(","))
        return next((problem for problem in problems if problem is not None), None)
    return _host_port_problem(address)


def _literal_problem(scheme: str, target: str) -> str | None:
    """What is wrong with one ``HOST:PORT`` of an ``ipv4:`` or ``ipv6:`` target: gRPC
    takes only an address of that family there (a name failed at the first call)."""
    problem = _host_port_problem(target)
    if problem is not None:
        return problem
    host = target.rpartition(":")[0]
    try:
        if scheme == "ipv4":
            ipaddress.IPv4Address(host)
        else:
            ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return f"an {scheme} address before the port after {scheme}:, not {host!r}"
    return None


def _host_port_problem(address: str) -> str | None:
    split = split_host_port(address)
    if split is None:
        return "a port from 1 to 65535 after the last colon"
    host, port = split
    if port == 0:
        return "a port from 1 to 65535 (0 is no port to connect to)"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"an IPv6 address inside the brackets, not {host!r}"
        return None
    if not _HOST_NAME.fullmatch(host):
        return (
            f"a host name or IP address before the port, not {host!r} (no scheme such as "
            "https://, no path or spaces; an IPv6 address goes in brackets: [::1]:7443)"
        )
    return None
