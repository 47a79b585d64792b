"""Is a host or address on this machine's loopback? (stdlib only)

One answer for every place that relaxes a rule for loopback: plaintext serving,
plaintext client connections, unsigned archive upload bodies.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_address", "is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``; brackets allowed)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_address(address: str) -> bool:
    """Whether ``HOST:PORT`` names a loopback host."""
    return is_loopback_host(address.rsplit(":", 1)[0])
