"""ListShards pages stay under the message limit, whatever the shards' frame counts.

Each ShardInfo carries every frame's size, so a page of 1,000 shards of many small
frames could pass the 80 MiB message limit, and the dataset could not be listed at
all. The server's limit is lowered here (to 64 KiB) so that a few shards of 1-byte
frames show it without gigabytes of data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tierstore.client.connect import connect
from tierstore.server import app
from tierstore.types import DatasetSettings, Role, ShardKind
from tierstore.v1 import shards_pb2

from .servers import invoke, serving

LIMIT = 64 * 1024
FRAMES = 2_000  # about 2 KB of frame sizes per shard: 32 of them fill the limit
SHARDS = 60


def test_a_listing_of_shards_of_many_frames_comes_in_pages_under_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "MAX_MESSAGE_BYTES", LIMIT)
    with serving(tmp_path, insecure=True, datasets={"many": DatasetSettings()}) as running:
        names = [f"s{i:03d}" for i in range(SHARDS)]
        for index, name in enumerate(names):
            frames = [bytes([index])] * FRAMES
            running.store.put_frames("many", name, ShardKind.RAW, frames)
        token = running.token("reader", ("many", Role.READER))
        (page,) = invoke(
            running.channel(),
            "/tierstore.v1.ShardService/ListShards",
            shards_pb2.ListShardsRequest(dataset="many", limit=SHARDS),
            token,
        )
        assert 0 < len(page.shards) < SHARDS
        assert page.ByteSize() < LIMIT
        assert page.next_start_after == page.shards[-1].name
        with connect(running.address, token=token, insecure=True, local_reads=False) as client:
            listed = client.list("many")
            assert [info.name for info in listed] == names
            assert all(info.frame_sizes == (1,) * FRAMES for info in listed)
            # A limit is still the most a listing holds, over short pages too.
            assert [info.name for info in client.list("many", limit=45)] == names[:45]
            after = client.list("many", start_after=names[10], limit=40)
            assert [info.name for info in after] == names[11:51]
