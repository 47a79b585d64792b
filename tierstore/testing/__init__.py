"""Test and benchmark instruments that stand in for the world outside one machine.

Nothing here is imported by the service itself. :mod:`tierstore.testing.throttle` puts a real
object store's latency and bandwidth between a client and a loopback archive.
"""

from __future__ import annotations

__all__: list[str] = []
