"""Cutting values into frames (tierstore/framing.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tierstore.errors import InvalidArgument, UnsupportedData
from tierstore.framing import frame_value
from tierstore.types import ShardKind


@pytest.mark.parametrize("size", [-1, 0, True, 2.0, "8"])
@pytest.mark.parametrize(
    "value", [b"important data", pa.py_buffer(b"xyz"), pa.table({"a": [1]}), np.ones(3)]
)
def test_a_frame_size_that_is_not_a_positive_int_is_refused(value: object, size: object) -> None:
    # Raw bytes cut by -1 made no frames at all: a put stored an empty shard.
    with pytest.raises(InvalidArgument, match="max_frame_bytes must be a positive int"):
        frame_value(value, size)  # type: ignore[arg-type]


def test_raw_bytes_are_cut_into_frames_of_the_size_given() -> None:
    framed = frame_value(b"0123456789", 4)
    assert framed.kind is ShardKind.RAW
    assert [bytes(frame) for frame in framed.frames] == [b"0123", b"4567", b"89"]


def test_a_masked_array_is_refused_at_put() -> None:
    # It was acknowledged as a tensor shard that no read could return.
    with pytest.raises(UnsupportedData, match="masked array"):
        frame_value(np.ma.array([1, 2, 3], mask=[False, True, False]), 4096)
