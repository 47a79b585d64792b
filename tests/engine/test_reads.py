"""Read planning, read leases and ShardData (tierstore.engine.reads), without a store."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierstore.engine.reads import FrameSlice, LeasePool, ShardData, plan_reads
from tierstore.errors import InvalidArgument, InvalidRange, RangePastEnd
from tierstore.types import ShardInfo, ShardKind

SIZES = (4, 4, 4, 2)  # 14 bytes in four frames
DATA = bytes(range(14))


def read(sizes: tuple[int, ...], data: bytes, slices: list[FrameSlice]) -> bytes:
    """What a read of ``slices`` returns, given the shard's bytes."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return b"".join(data[starts[s.index] + s.start : starts[s.index] + s.stop] for s in slices)


def test_whole_shard() -> None:
    assert plan_reads(SIZES) == [
        FrameSlice(0, 0, 4),
        FrameSlice(1, 0, 4),
        FrameSlice(2, 0, 4),
        FrameSlice(3, 0, 2),
    ]


def test_empty_shard() -> None:
    assert plan_reads(()) == []
    assert plan_reads((), byte_range=(0, 0)) == []
    assert plan_reads((), byte_range=(0, 10)) == []
    assert plan_reads((), frame_range=(0, 3)) == []
    with pytest.raises(InvalidRange):
        plan_reads((), byte_range=(1, 0))


@pytest.mark.parametrize(
    ("byte_range", "expected"),
    [
        ((0, 14), [(0, 0, 4), (1, 0, 4), (2, 0, 4), (3, 0, 2)]),
        ((5, 2), [(1, 1, 3)]),
        ((3, 6), [(0, 3, 4), (1, 0, 4), (2, 0, 1)]),
        ((4, 4), [(1, 0, 4)]),  # exactly one frame: nothing of its neighbours
        ((12, 100), [(3, 0, 2)]),  # cut at the end
        ((13, 1), [(3, 1, 2)]),
        ((14, 5), []),  # at the end: empty, not an error
        ((6, 0), []),
    ],
)
def test_byte_ranges(byte_range: tuple[int, int], expected: list[tuple[int, int, int]]) -> None:
    assert plan_reads(SIZES, byte_range=byte_range) == [FrameSlice(*e) for e in expected]


@pytest.mark.parametrize(
    ("frame_range", "expected"),
    [((0, 1), [0]), ((1, 2), [1, 2]), ((2, 100), [2, 3]), ((4, 1), []), ((0, 0), [])],
)
def test_frame_ranges(frame_range: tuple[int, int], expected: list[int]) -> None:
    slices = plan_reads(SIZES, frame_range=frame_range)
    assert [s.index for s in slices] == expected
    assert all(s.start == 0 and s.stop == SIZES[s.index] for s in slices)


@pytest.mark.parametrize(
    "arguments",
    [
        {"byte_range": (15, 1)},
        {"byte_range": (-1, 2)},
        {"byte_range": (0, -1)},
        {"frame_range": (5, 1)},
        {"frame_range": (-1, 1)},
        {"frame_range": (0, -1)},
        {"byte_range": (0, 1), "frame_range": (0, 1)},
        {"byte_range": (1.5, 2)},
        {"byte_range": (0, 2.0)},
        {"byte_range": (0,)},
        {"byte_range": (0, 1, 2)},
        {"byte_range": "ab"},
        {"byte_range": 3},
        {"byte_range": (None, 1)},
        {"frame_range": ("0", 1)},
        # True is no count (the client refuses it as an offset or length too)
        {"byte_range": (0, True)},
        {"byte_range": (False, 2)},
        {"frame_range": (True, 1)},
        {"frame_range": (0, np.bool_(True))},
    ],
    ids=repr,
)
def test_bad_ranges_raise_invalid_range(arguments: dict[str, Any]) -> None:
    with pytest.raises(InvalidRange):
        plan_reads(SIZES, **arguments)


@pytest.mark.parametrize(
    "arguments",
    [{"byte_range": (15, 1)}, {"byte_range": (15, 0)}, {"frame_range": (5, 1)}],
    ids=repr,
)
def test_a_range_starting_past_the_end_is_out_of_range(arguments: dict[str, Any]) -> None:
    # gRPC's OUT_OF_RANGE: it could be met once the shard is rewritten longer.
    with pytest.raises(RangePastEnd, match="past the end") as caught:
        plan_reads(SIZES, **arguments)
    assert caught.value.status_code == "OUT_OF_RANGE"


@pytest.mark.parametrize(
    "arguments",
    [{"byte_range": (-1, 2)}, {"frame_range": (0, -1)}, {"frame_range": (-1, 1)}],
    ids=repr,
)
def test_a_negative_range_is_an_invalid_argument(arguments: dict[str, Any]) -> None:
    with pytest.raises(InvalidRange) as caught:
        plan_reads(SIZES, **arguments)
    assert not isinstance(caught.value, RangePastEnd)
    assert caught.value.status_code == "INVALID_ARGUMENT"


def test_integer_like_range_values_are_accepted() -> None:
    assert plan_reads(SIZES, byte_range=(np.int64(5), np.int32(2))) == [FrameSlice(1, 1, 3)]


@given(
    st.lists(st.integers(0, 9), max_size=8).map(tuple),
    st.integers(0, 80),
    st.integers(0, 80),
)
def test_byte_range_reads_exactly_the_bytes_asked(
    sizes: tuple[int, ...], offset: int, length: int
) -> None:
    data = bytes(i % 251 for i in range(sum(sizes)))
    if offset > len(data):
        with pytest.raises(InvalidRange):
            plan_reads(sizes, byte_range=(offset, length))
        return
    slices = plan_reads(sizes, byte_range=(offset, length))
    assert read(sizes, data, slices) == data[offset : offset + length]
    assert all(s.stop > s.start or sizes[s.index] == 0 for s in slices), "an empty slice"
    assert [s.index for s in slices] == sorted({s.index for s in slices})


@given(st.lists(st.integers(0, 9), max_size=8).map(tuple), st.integers(0, 9), st.integers(0, 9))
def test_frame_range_reads_whole_frames(sizes: tuple[int, ...], first: int, count: int) -> None:
    if first > len(sizes):
        with pytest.raises(InvalidRange):
            plan_reads(sizes, frame_range=(first, count))
        return
    slices = plan_reads(sizes, frame_range=(first, count))
    assert [s.index for s in slices] == list(range(first, min(len(sizes), first + count)))


# Leases.


class FakeTxn:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


def test_lease_pool_refuses_past_its_limit_and_releases_on_collection() -> None:
    pool = LeasePool(2, FakeTxn.abort)
    txns = [FakeTxn() for _ in range(3)]
    first, second = pool.try_open(txns[0]), pool.try_open(txns[1])
    assert first is not None and second is not None
    assert pool.try_open(txns[2]) is None
    assert pool.live == 2
    del first
    gc.collect()
    assert pool.live == 1 and txns[0].aborted == 1 and txns[1].aborted == 0
    third = pool.try_open(txns[2])
    assert third is not None  # room again
    assert pool.older_than(0) == 2
    assert pool.older_than(3600) == 0


def test_a_buffer_keeps_its_lease_alive() -> None:
    pool = LeasePool(1, FakeTxn.abort)
    txn = FakeTxn()
    backing = bytearray(b"0123456789")
    lease = pool.try_open(txn)
    assert lease is not None
    buffer = lease.keep(memoryview(backing)[2:6])
    del lease
    gc.collect()
    assert pool.live == 1 and txn.aborted == 0  # the buffer still needs the snapshot
    assert buffer.to_pybytes() == b"2345"
    assert buffer.address == pa.py_buffer(backing).address + 2  # a view, not a copy
    del buffer
    gc.collect()
    assert pool.live == 0 and txn.aborted == 1


# ShardData.


def info(sizes: tuple[int, ...]) -> ShardInfo:
    return ShardInfo("ds", "s", 1, ShardKind.RAW, sizes, 0.0, False, True, False)


def test_shard_data_joins_and_detaches() -> None:
    frames = (pa.py_buffer(b"abcd"), pa.py_buffer(b"ef"))
    data = ShardData(info((4, 2)), 0, frames, "hot")
    assert data.nbytes == 6
    assert data.to_bytes() == b"abcdef"
    assert data.to_buffer().to_pybytes() == b"abcdef"
    single = ShardData(info((4,)), 0, frames[:1], "hot")
    assert single.to_buffer() is frames[0]  # one frame: no copy
    copy = data.detach()
    assert copy.to_bytes() == b"abcdef" and copy.source == "hot"
    assert all(c.address != f.address for c, f in zip(copy.frames, frames, strict=True))


def test_errors_are_invalid_arguments() -> None:
    assert issubclass(InvalidRange, InvalidArgument)
