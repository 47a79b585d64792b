"""A stored frame cut short or damaged on the node reaches a client as DataLoss on every
read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.engine.backdoor import flip, hot_frames, put_hot_frame
from tests.server.servers import serving
from tierstore.client.connect import connect
from tierstore.errors import DataLoss, IntegrityError
from tierstore.types import DatasetSettings, Role

DATASETS = {"plain": DatasetSettings(), "enc": DatasetSettings(encrypted=True)}


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_a_frame_cut_below_its_trailer_is_data_loss_through_the_service(
    tmp_path: Path, dataset: str
) -> None:
    table = pa.table({"a": np.arange(5000)})
    with serving(tmp_path, insecure=True, datasets=DATASETS, local_reads=False) as running:
        info = running.store.put(dataset, "victim", table)
        assert len(hot_frames(running.store, dataset, "victim")) > 2
        # Shorter than a checksum or a tag: no payload size to allocate for.
        put_hot_frame(running.store, info.generation, 1, b"cut")
        admin = running.token("admin", ("*", Role.ADMIN))
        with connect(running.address, token=admin, insecure=True, local_reads=False) as client:
            with pytest.raises(DataLoss):
                client.read_table(dataset, "victim")
            with pytest.raises(DataLoss):
                client.get(dataset, "victim")


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_a_damaged_frame_fails_a_streamed_download_with_the_file_left_as_it_was(
    tmp_path: Path, dataset: str
) -> None:
    """A download streamed into its partial file's mapping raised BufferError ("cannot
    close exported pointers exist"), not DataLoss: the slice of the mapping the frame
    was being opened into was held by the error's traceback, so the mapping could not
    be closed and that error replaced the first."""
    data = os.urandom(5 * 4096 + 100)  # 4 KiB frames: six of them
    with serving(tmp_path, insecure=True, datasets=DATASETS, local_reads=False) as running:
        info = running.store.put(dataset, "victim", data)
        stored = hot_frames(running.store, dataset, "victim")[1]
        assert stored is not None
        put_hot_frame(running.store, info.generation, 1, flip(stored, 10))
        admin = running.token("admin", ("*", Role.ADMIN))
        target = tmp_path / "out.bin"
        target.write_bytes(b"as it was")
        with connect(running.address, token=admin, insecure=True, local_reads=False) as client:
            # the whole shard; a range from inside the damaged frame (opened through a
            # scratch buffer); the damaged frame alone (opened straight into place)
            for offset, length in [(0, None), (4100, 100), (4096, 4096)]:
                with pytest.raises(IntegrityError):  # a DataLoss
                    client.download(dataset, "victim", target, offset=offset, length=length)
                assert target.read_bytes() == b"as it was"
                assert sorted(p.name for p in tmp_path.iterdir()) == ["node", "out.bin"]
            assert client.read_counts.grpc == 3  # each through the stream
