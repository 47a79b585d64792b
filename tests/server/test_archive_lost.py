"""A node whose archive is lost for good (the embedded archive's directory deleted)
refuses to start, and starts with ``--archive-lost``: its hot shards are archived
again, the shards whose only copy was in the lost archive are dropped (named in the
log, reads of them ShardNotFound), and a rebuild from the new archive alone finds the
hot ones. On a node whose archive is fine the flag changes nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tierstore import errors

from .conftest import ServerProcess, poll


@pytest.mark.timeout(300)
def test_a_node_whose_archive_was_lost_archives_its_hot_tier_again(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir, embedded=True)
    hot = {"h1": os.urandom(5000), "dir/h2": os.urandom(70_000)}
    cold = {"c1": os.urandom(3000), "dir/c2": os.urandom(9000)}
    with first.connect() as client:
        client.create_dataset("wb", encrypted=False)  # write-back: archived by the mover
        client.create_dataset("other", encrypted=False, durability="write-through")
        for name, blob in {**hot, **cold}.items():
            client.put("wb", name, blob)
        client.put("other", "h3", b"write-through, still hot")
        poll(lambda: client.stats()["journal_entries"] == 0, 60, "the uploads")
        for name in cold:
            client.evict("wb", name)
        assert all(client.stat("wb", name).archived for name in hot)
    assert first.stop() == 0
    shutil.rmtree(data_dir / "archive")

    with pytest.raises(AssertionError, match="the server exited with 1") as refused:
        spawn_server(data_dir, embedded=True)
    assert "--archive-lost" in str(refused.value)

    node = spawn_server(data_dir, "--archive-lost", embedded=True)
    logged = node.errors()
    for name in cold:
        assert f"wb/{name}" in logged, logged
    assert "wb/h1" not in logged
    with node.connect() as client:
        for name, blob in hot.items():
            assert client.get("wb", name).to_pybytes() == blob
        assert client.get("other", "h3").to_pybytes() == b"write-through, still hot"
        for name in cold:
            with pytest.raises(errors.ShardNotFound):
                client.get("wb", name)
        assert sorted(info.name for info in client.list("wb")) == sorted(hot)
        poll(lambda: client.stats()["journal_entries"] == 0, 60, "the uploads again")
        assert all(client.stat("wb", name).archived for name in hot)
        assert client.stat("other", "h3").archived
    assert node.stop() == 0

    # The archive is the node's again: the flag, given again, changes nothing.
    again = spawn_server(data_dir, "--archive-lost", embedded=True)
    assert "--archive-lost is ignored" in again.errors(), again.errors()
    with again.connect() as client:
        assert client.stats()["journal_entries"] == 0
        assert sorted(info.name for info in client.list("wb")) == sorted(hot)
    assert again.stop() == 0

    shutil.rmtree(data_dir / "hot")  # a rebuild from the new archive alone
    rebuilt = spawn_server(data_dir, "--rebuild-from-archive", embedded=True)
    with rebuilt.connect() as client:
        for name, blob in hot.items():
            assert client.get("wb", name).to_pybytes() == blob
        assert client.get("other", "h3").to_pybytes() == b"write-through, still hot"
        assert sorted(info.name for info in client.list("wb")) == sorted(hot)
