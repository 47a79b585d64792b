"""A frame forged in the archive, with a checksum that holds, reaches no reader.

A plaintext frame's checksum is seeded by the frame's public identity, not by a key. A
review replaced a frame of an evicted shard in the archive (through the embedded
archive's filer port, which takes no credentials) with another whose checksum held:
every reader got the forged bytes, and a promotion put them in the hot tier. The mover
now keeps every uploaded frame's SHA-256 where the archive cannot change it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import raw_s3_client
from tierstore import errors
from tierstore.frames import FrameSealer, shard_context
from tierstore.tiers.seaweedfs import SeaweedServer

from .conftest import ServerProcess, archive_of, poll

MiB = 1024 * 1024
FRAMES = 3
ORIGINAL = bytes(range(256)) * (FRAMES * 4 * MiB // 256)  # three full 4 MiB frames


@pytest.mark.timeout(120)
def test_a_forged_plaintext_frame_is_data_loss_for_readers_and_promotions(
    spawn_server: Callable[..., ServerProcess], seaweedfs: SeaweedServer
) -> None:
    node = spawn_server()
    with node.connect(local_reads=False) as client:
        client.create_dataset("plain", encrypted=False, durability="write-through")
        generation = client.put("plain", "victim", ORIGINAL).generation
        client.put("plain", "intact", b"untouched" * 1000)
        assert client.evict("plain", "victim") > 0

        settings = archive_of(node, seaweedfs)
        s3 = raw_s3_client(settings)
        key = f"{settings.prefix}plain/{generation:016x}.frames"
        stored = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        size = len(stored) // FRAMES
        forger = FrameSealer(shard_context("plain", "victim", generation), FRAMES)
        forged = forger.seal(1, b"EVIL" * MiB)
        assert len(forged) == size and bytes(forger.open(1, memoryview(forged)))[:4] == b"EVIL"
        s3.put_object(
            Bucket=settings.bucket, Key=key, Body=stored[:size] + forged + stored[2 * size :]
        )

        for read in (
            lambda: client.get("plain", "victim"),
            lambda: client.get("plain", "victim", offset=4 * MiB + 10, length=100),
        ):
            with pytest.raises(errors.DataLoss, match="other bytes at frame 1"):
                read()
        # The frames around it are what was put.
        assert client.get("plain", "victim", length=4 * MiB).to_pybytes() == ORIGINAL[: 4 * MiB]
        # A promotion refuses it too: the shard stays cold, never hot with forged bytes.
        client.pin("plain", "victim")
        poll(lambda: "promotion of plain/victim failed" in node.errors(), 30, "the pin's try")
        assert "other bytes at frame 1" in node.errors()
        assert not client.stat("plain", "victim").hot
        assert client.get("plain", "intact").to_pybytes() == b"untouched" * 1000
    assert node.stop() == 0
