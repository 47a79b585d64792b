"""Fixtures of the client tests: the real server process of tests/server, reused.

The local read path needs a server in *another* process on this host (a reader never
maps the hot tier of a server in its own process), so these tests use the ``tierstore
serve`` subprocess fixtures of :mod:`tests.server.conftest`.
"""

from __future__ import annotations

from tests.server.conftest import admin, any_dataset, dataset, server, spawn_server

__all__ = ["admin", "any_dataset", "dataset", "server", "spawn_server"]
