"""A node raises its soft open-file limit to what its hard limit allows (its connection
cap is half of it, and its embedded archive inherits it), and says how to raise a hard
limit too low to serve well."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess
from tierstore.cli.processlimits import OPEN_FILES_ENOUGH, OPEN_FILES_WANTED


def open_file_limits(pid: int) -> tuple[str, str]:
    """The soft and hard open-file limits of process ``pid``, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def test_a_node_started_under_a_low_soft_limit_raises_it_to_the_hard_one(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise to")
    node = spawn_server(open_files=(256, hard))
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    assert open_file_limits(node.pid)[0] == str(wanted)
    assert "open-file limit" not in node.errors()


def test_a_node_whose_hard_limit_is_low_serves_and_says_how_to_raise_it(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    low = OPEN_FILES_ENOUGH // 4
    node = spawn_server(open_files=(low // 2, low))
    assert open_file_limits(node.pid) == (str(low), str(low))  # raised as far as it goes
    assert f"the open-file limit is {low}, and its hard limit is {low}" in node.errors()
    assert "raise the hard limit" in node.errors()
    with node.connect() as client:  # it serves all the same
        assert client.list_datasets() == []


def test_an_embedded_archive_out_of_open_files_is_said_to_be(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data")
    node.open_files = (40, 40)  # too few for weed's servers, enough for the node's start
    process = node.launch()
    try:
        assert process.wait(120) != 0
    finally:
        node.kill()
    assert "weed exited" in node.errors()
    assert "it ran out of open files: raise the open-file limit, ulimit -n" in node.errors()
