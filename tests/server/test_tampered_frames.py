"""A stored frame cut short on the node reaches a client as DataLoss on every read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.engine.backdoor import hot_frames, put_hot_frame
from tests.server.servers import serving
from tierstore.client.connect import connect
from tierstore.errors import DataLoss
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
