"""An admin steering the tiers of a node of its own (a small hot tier): what pin,
unpin, evict, prefetch and stats say, and what they leave behind.

The real ``tierstore serve`` (``spawn_server``: the session SeaweedFS as its archive)
and the ``tierstore`` command run in this process (as tests/server/test_e2e_cli.py
runs it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tierstore import errors

from .conftest import ServerProcess, unique
from .test_e2e_cli import run

#: the hot tier of these nodes: two of the largest frames a put sends (4 MiB)
HOT_CAPACITY = 8 << 20


@pytest.fixture
def node(tmp_path: Path, spawn_server: Callable[..., ServerProcess]) -> ServerProcess:
    return spawn_server(tmp_path / "node", "--hot-capacity", str(HOT_CAPACITY))


def test_a_pin_of_a_shard_larger_than_the_hot_tier_is_refused(node: ServerProcess) -> None:
    # It was pinned, and said to be "queued for promotion, tried again while there is
    # no room": each try was skipped, once a minute for as long as the pin held, and
    # the shard never turned hot.
    env = node.cli_env()
    dataset = unique()
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, durability="write-through")
        client.put(dataset, "small", b"s" * 1000)
        client.put(dataset, "big", os.urandom(HOT_CAPACITY + (1 << 20)))
        client.evict(dataset, "big")
        client.evict(dataset, "small")
        assert not client.stat(dataset, "big").hot

        refused = run(env, "pin", dataset, "small", "big")
        assert refused.returncode == 1, refused.stderr.decode()
        assert json.loads(refused.stdout) == {
            "pinned": ["small"],
            "not_pinned": ["big"],
            "in_doubt": None,
        }
        said = refused.stderr.decode()
        assert "HotTierFull" in said and "big" in said and "could never" in said, said
        assert not client.stat(dataset, "big").pinned  # nothing promised
        assert client.stat(dataset, "small").pinned
        with pytest.raises(errors.HotTierFull):
            client.pin(dataset, "big", ttl_s=60)
        assert not client.stat(dataset, "big").pinned
