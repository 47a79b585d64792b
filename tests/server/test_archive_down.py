"""A node whose archive went away: a cold read fails once, with ArchiveUnavailable.

The server retries the archive itself (the S3 client's attempts), so when its answer is
ArchiveUnavailable the client must not send the read again: against an archive that
accepts connections and never answers, each try costs the whole of the server's retry
budget. (The client retried it as if the server were down: 5 tries of one read.)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tierstore import errors

from .conftest import ServerProcess, poll, unique


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def dead(pid: int) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_cold_read_of_a_node_whose_archive_is_gone_is_tried_once(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    node = spawn_server(tmp_path / "node", embedded=True)
    dataset = unique()
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, durability="write-through")
        client.put(dataset, "s", os.urandom(3 << 20))
        client.evict(dataset, "s")
        assert not client.stat(dataset, "s").hot
        (archive,) = children(node.pid)  # the embedded SeaweedFS
        os.kill(archive, signal.SIGKILL)
        poll(lambda: dead(archive), 10, "the archive to be gone")
        with pytest.raises(errors.ArchiveUnavailable):
            client.get(dataset, "s")
    node.stop()
    reads = [
        line
        for line in node.errors().splitlines()
        if "method=/tierstore.v1.ShardService/GetShard" in line
    ]
    assert len(reads) == 1 and "outcome=UNAVAILABLE" in reads[0], reads
