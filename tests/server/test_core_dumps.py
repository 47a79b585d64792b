"""A node's memory holds master keys, unwrapped data keys and spooled plaintext: `tierstore
serve` writes none of it to a core file."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess


def soft_core_file_limit(pid: int) -> str:
    """The soft core-file-size limit of process ``pid``, as /proc shows it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]
    raise AssertionError(f"no core file limit in /proc/{pid}/limits")


def test_a_node_started_where_core_files_are_written_writes_none(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("core files are off for good here: nothing to turn off")
    # The node inherits a limit that lets the kernel write a core file.
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        node = spawn_server()
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    assert soft_core_file_limit(node.pid) == "0"
