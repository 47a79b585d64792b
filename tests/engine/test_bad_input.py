"""Bad input: each gets a specific InvalidArgument, and the store keeps working, data intact.

After every bad call the ``known`` shards still read back, the store still
accepts a write, the listing holds exactly the known shards and the hot-bytes
counter still matches the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.engine.backdoor import catalog_hot_bytes
from tests.engine.stores import FRAME, payload
from tierstore import arrowio, tensors
from tierstore.engine.store import Store
from tierstore.errors import (
    ArchiveUnavailable,
    DataLoss,
    DatasetNotFound,
    HotTierFull,
    IntegrityError,
    InvalidArgument,
    InvalidName,
    InvalidRange,
    MalformedArrow,
    OversizeFrame,
    ResourceExhausted,
    ShardNotFound,
    TierstoreError,
    Unavailable,
    UnsupportedData,
)
from tierstore.types import DatasetSettings, Durability, ShardKind


@pytest.mark.parametrize(
    "arguments",
    [
        {"byte_range": (-1, 5)},
        {"byte_range": (0, -5)},
        {"byte_range": (5 * FRAME + 1, 1)},
        {"frame_range": (-1, 1)},
        {"frame_range": (6, 1)},
        {"byte_range": (0, 1), "frame_range": (0, 1)},
        {"byte_range": (0.5, 1)},
        {"byte_range": (0,)},
        {"frame_range": "0:1"},
    ],
    ids=repr,
)
def test_bad_ranges_raise_invalid_range(store: Store, arguments: dict[str, Any]) -> None:
    data = payload(5 * FRAME)
    store.put("plain", "r", data)
    with pytest.raises(InvalidRange):
        store.get("plain", "r", **arguments)
    assert store.get("plain", "r").to_bytes() == data


def test_get_into_checks_its_destination(store: Store) -> None:
    data = payload(3 * FRAME)
    store.put("enc", "x", data)
    out = bytearray(len(data) + 10)
    assert store.get_into("enc", "x", memoryview(out)) == len(data)
    assert out[: len(data)] == data
    matrix = np.zeros((3, FRAME), dtype=np.uint8)
    assert store.get_into("enc", "x", memoryview(matrix)) == len(data)
    assert matrix.tobytes() == data

    small = bytearray(b"\x11" * (len(data) - 1))
    with pytest.raises(InvalidArgument, match="holds only"):
        store.get_into("enc", "x", memoryview(small))
    assert small == b"\x11" * (len(data) - 1)  # nothing written
    with pytest.raises(InvalidArgument, match="read-only"):
        store.get_into("enc", "x", memoryview(bytes(len(data))))
    strided = np.zeros(2 * len(data), dtype=np.uint8)[::2]
    with pytest.raises(InvalidArgument, match="contiguous"):
        store.get_into("enc", "x", memoryview(strided))


# Bad input: a specific error, and the store keeps working with its data intact.


@pytest.fixture
def known(store: Store) -> dict[tuple[str, str], bytes]:
    """Shards that every bad-input test checks afterwards."""
    contents = {("plain", "k/1"): payload(3 * FRAME, 1), ("enc", "k/2"): payload(FRAME + 9, 2)}
    for (dataset, name), data in contents.items():
        store.put(dataset, name, data)
    return contents


def assert_intact(store: Store, known: dict[tuple[str, str], bytes]) -> None:
    for (dataset, name), data in known.items():
        assert store.get(dataset, name).to_bytes() == data
    store.put("plain", "after", b"still accepting writes")
    assert store.get("plain", "after").to_bytes() == b"still accepting writes"
    store.delete("plain", "after")
    names = {(i.name) for i in store.list("plain")[0]} | {i.name for i in store.list("enc")[0]}
    assert names == {name for _, name in known}
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


BAD_SHARD_NAMES: list[object] = [
    "",
    "..",
    "a/../b",
    "/abs",
    "a//b",
    "a/",
    "nul\x00",
    "line\nfeed",
    "esc\x1b",
    "bidi\u202e",
    "lone\ud800",
    "x" * 1025,
    "é" * 513,
    None,
    b"bytes",
    42,
    ("a",),
]
BAD_DATASET_NAMES: list[object] = ["", "Upper", ".dot", "a/b", "x" * 64, "sp ace", None, b"p", 7]


def shard_operations(store: Store) -> dict[str, Callable[[str, Any], object]]:
    return {
        "put": lambda ds, name: store.put(ds, name, b"x"),
        "put_frames": lambda ds, name: store.put_frames(ds, name, ShardKind.RAW, [b"x"]),
        "get": lambda ds, name: store.get(ds, name),
        "get_into": lambda ds, name: store.get_into(ds, name, memoryview(bytearray(8))),
        "stat": lambda ds, name: store.stat(ds, name),
        "delete": lambda ds, name: store.delete(ds, name),
        "evict": lambda ds, name: store.evict(ds, name),
        "read_table": lambda ds, name: store.read_table(ds, name),
    }


@pytest.mark.parametrize("name", BAD_SHARD_NAMES, ids=repr)
def test_bad_shard_names(store: Store, known: dict[tuple[str, str], bytes], name: object) -> None:
    for operation, call in shard_operations(store).items():
        with pytest.raises(InvalidName):
            call("plain", name)
            pytest.fail(f"{operation} accepted {name!r}")
    assert_intact(store, known)


@pytest.mark.parametrize("name", BAD_DATASET_NAMES, ids=repr)
def test_bad_dataset_names(store: Store, known: dict[tuple[str, str], bytes], name: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.create_dataset(name),
        lambda: store.get_dataset(name),
        lambda: store.delete_dataset(name, force=True),
        lambda: store.list(name),
    ]
    calls += [lambda call=call: call(name, "ok-name") for call in shard_operations(store).values()]
    for call in calls:
        with pytest.raises(InvalidName):
            call()
    assert_intact(store, known)


def test_unknown_dataset(store: Store, known: dict[tuple[str, str], bytes]) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.get_dataset("nope"),
        lambda: store.delete_dataset("nope"),
        lambda: store.list("nope"),
    ]
    calls += [lambda call=call: call("nope", "k/1") for call in shard_operations(store).values()]
    for call in calls:
        with pytest.raises(DatasetNotFound):
            call()
    assert_intact(store, known)


def test_unknown_shard(store: Store, known: dict[tuple[str, str], bytes]) -> None:
    for operation, call in shard_operations(store).items():
        if operation.startswith("put"):
            continue
        with pytest.raises(ShardNotFound):
            call("plain", "k/2")  # exists in enc, not in plain
    assert_intact(store, known)


def test_oversize_frames(store: Store, known: dict[tuple[str, str], bytes]) -> None:
    with pytest.raises(OversizeFrame):
        store.put_frames("plain", "big", ShardKind.RAW, [b"x" * (FRAME + 1)])
    with pytest.raises(OversizeFrame, match="frame 2"):
        store.put_frames("enc", "big", ShardKind.RAW, [b"x", b"y" * FRAME, b"z" * (FRAME + 1)])
    table = pa.table({"x": list(range(5000))})
    big_frames = arrowio.table_to_frames(table, 16 * FRAME)
    with pytest.raises(OversizeFrame):
        store.put_frames("plain", "big", ShardKind.ARROW, big_frames)
    one_wide_row = pa.table({"blob": [b"w" * (2 * FRAME)]})
    with pytest.raises(OversizeFrame):
        store.put("plain", "big", one_wide_row)
    with pytest.raises(ShardNotFound):
        store.stat("plain", "big")
    assert_intact(store, known)


def test_malformed_arrow(store: Store, known: dict[tuple[str, str], bytes]) -> None:
    frames = arrowio.table_to_frames(pa.table({"x": list(range(100))}), FRAME)
    schema_only = bytes(memoryview(frames[0]))
    for bad in (
        [b"garbage"],
        [b"\xff" * 64],
        [schema_only, b"not a record batch"],
        [bytes(memoryview(frames[1]))],  # a batch without its schema
        [schema_only, bytes(memoryview(frames[1]))[:-8]],  # a batch cut short
        [],
    ):
        with pytest.raises(MalformedArrow):
            store.put_frames("plain", "bad-arrow", ShardKind.ARROW, bad)
    with pytest.raises(UnsupportedData):  # a plain table declared as a tensor
        store.put_frames("plain", "bad-arrow", ShardKind.TENSOR, frames)
    with pytest.raises(ShardNotFound):
        store.stat("plain", "bad-arrow")
    assert_intact(store, known)


def tensor_with(metadata: dict[bytes, bytes], table: pa.Table | None = None) -> pa.Table:
    """A 3x4 float64 tensor table (or ``table``) with its tensor metadata changed."""
    tensor = tensors.tensor_to_table(np.arange(12.0).reshape(3, 4))
    table = tensor if table is None else table
    return table.replace_schema_metadata({**tensor.schema.metadata, **metadata})


UNREADABLE_TENSORS = {
    "shape of other size": tensor_with({b"tierstore.tensor.shape": b"[5, 4]"}),
    "shape not JSON": tensor_with({b"tierstore.tensor.shape": b"{"}),
    "shape not a list": tensor_with({b"tierstore.tensor.shape": b"12"}),
    "negative shape": tensor_with({b"tierstore.tensor.shape": b"[-3, -4]"}),
    "dtype of the other type": tensor_with({b"tierstore.tensor.dtype": b"int64"}),
    "unknown dtype": tensor_with({b"tierstore.tensor.dtype": b"str"}),
    "plain column": tensor_with({}, pa.table({"tensor": np.arange(12.0)})),
    "two tensor columns": tensor_with(
        {}, pa.table([np.arange(12.0), np.arange(12.0)], names=["tensor", "tensor"])
    ),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_TENSORS))
def test_frames_declared_a_tensor_that_no_read_returns_are_refused(
    store: Store, known: dict[tuple[str, str], bytes], case: str
) -> None:
    # They were stored as a tensor shard whose every read_tensor raised (KeyError
    # for two tensor columns).
    frames = arrowio.table_to_frames(UNREADABLE_TENSORS[case], FRAME)
    with pytest.raises(MalformedArrow, match="tensor"):
        store.put_frames("plain", "bad-tensor", ShardKind.TENSOR, frames)
    with pytest.raises(ShardNotFound):
        store.stat("plain", "bad-tensor")
    good = tensors.tensor_to_frames(np.arange(12.0).reshape(3, 4), FRAME)
    store.put_frames("plain", "good-tensor", ShardKind.TENSOR, good)
    assert np.array_equal(store.read_tensor("plain", "good-tensor"), np.arange(12.0).reshape(3, 4))
    store.delete("plain", "good-tensor")
    assert_intact(store, known)


@pytest.mark.parametrize(
    "value",
    [
        "text",
        42,
        None,
        {"a": 1},
        [b"a", b"b"],
        np.array(["a", None], dtype=object),
        memoryview(bytes(100))[::2],
    ],
    ids=["str", "int", "None", "dict", "list", "object-array", "strided"],
)
def test_unsupported_values(
    store: Store, known: dict[tuple[str, str], bytes], value: object
) -> None:
    with pytest.raises(UnsupportedData):
        store.put("plain", "odd", value)
    with pytest.raises(ShardNotFound):
        store.stat("plain", "odd")
    assert_intact(store, known)


@pytest.mark.parametrize(
    ("kind", "frames"),
    [
        (ShardKind.RAW, ["text"]),
        (ShardKind.RAW, None),
        (ShardKind.RAW, [memoryview(bytes(100))[::2]]),
        ("pickle", [b"x"]),
        (7, [b"x"]),
    ],
    ids=["str-frame", "None", "strided-frame", "unknown-kind", "int-kind"],
)
def test_unsupported_frames(
    store: Store, known: dict[tuple[str, str], bytes], kind: Any, frames: Any
) -> None:
    with pytest.raises(UnsupportedData):
        store.put_frames("plain", "odd", kind, frames)
    assert_intact(store, known)


def test_more_rows_than_a_signed_64_bit_count_holds_are_refused(
    store: Store, known: dict[tuple[str, str], bytes]
) -> None:
    # A record batch of no columns costs nothing per row: a few bytes can claim 2**62.
    empty_struct = pa.StructArray.from_buffers(pa.struct([]), 2**62, [None])
    frames = [
        bytes(memoryview(f))
        for f in arrowio.table_to_frames(pa.RecordBatch.from_struct_array(empty_struct), FRAME)
    ]
    assert store.put_frames("plain", "wide", ShardKind.ARROW, [frames[0], frames[1]]).rows == 2**62
    with pytest.raises(UnsupportedData, match=r"at most 2\*\*63 - 1"):
        store.put_frames("plain", "wider", ShardKind.ARROW, [frames[0]] + [frames[1]] * 2)
    with pytest.raises(ShardNotFound):
        store.stat("plain", "wider")
    store.delete("plain", "wide")
    assert_intact(store, known)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"hot_quota_bytes": "x"}, r"hot_quota_bytes must be an int from 0 to 2\*\*64-1"),
        ({"hot_quota_bytes": -1}, r"hot_quota_bytes must be an int from 0 to 2\*\*64-1"),
        ({"hot_quota_bytes": 1.5}, r"hot_quota_bytes must be an int from 0 to 2\*\*64-1"),
        # stored, it failed every listing of the node's datasets (INTERNAL)
        ({"hot_quota_bytes": 1 << 64}, r"hot_quota_bytes must be an int from 0 to 2\*\*64-1"),
        ({"durability": "sometimes"}, "durability must be one of 'write-back', 'write-through'"),
        ({"encrypted": "yes"}, "encrypted must be True or False"),
        ({"policy": 3}, "policy must be a policy name"),
    ],
    ids=[
        "quota-str",
        "quota-negative",
        "quota-float",
        "quota-past-uint64",
        "durability",
        "encrypted",
        "policy",
    ],
)
def test_bad_dataset_settings_are_refused_before_anything_is_written(
    store: Store, known: dict[tuple[str, str], bytes], settings: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        store.create_dataset("odd", DatasetSettings(**settings))
    if "hot_quota_bytes" in settings:
        with pytest.raises(InvalidArgument, match=match):
            store.update_dataset("plain", hot_quota_bytes=settings["hot_quota_bytes"])
    if "durability" in settings:
        with pytest.raises(InvalidArgument, match=match):
            store.update_dataset("plain", durability=settings["durability"])
    if "policy" in settings:  # was a raw TypeError
        with pytest.raises(InvalidArgument, match=match):
            store.update_dataset("plain", policy=settings["policy"])
    assert "odd" not in dict(store.list_datasets())
    assert_intact(store, known)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        # Each raised a raw AttributeError or TypeError, or (prefetch) took the str as
        # the list of its characters and prefetched shards "a", "b" and "c".
        (lambda store: store.list("plain", prefix=5), "prefix must be a str"),
        (lambda store: store.list("plain", start_after=5), "start_after must be a shard name"),
        (lambda store: store.list("plain", limit="5"), "limit must be a whole number"),
        (lambda store: store.put("plain", "q", b"x", quota_wait_s="1"), "quota_wait_s must be"),
        (lambda store: store.prefetch("plain", "abc"), "shards must be a list of shard names"),
        (lambda store: store.prefetch("plain", None), "shards must be a list of shard names"),
        # A raw TypeError ('int' object is not iterable); a str was taken as the names
        # of one-letter datasets, and its curve counted no reads.
        (lambda store: store.sizing_curve(5), "datasets must be a collection of dataset"),
        (lambda store: store.sizing_curve("plain"), "datasets must be a collection of"),
        (lambda store: store.sizing_curve([["plain"]]), "datasets must be a collection of"),
        # A raw AttributeError ('str' object has no attribute 'policy').
        (
            lambda store: store.create_dataset("zz", "x"),
            "settings must be a tierstore.types.DatasetSettings",
        ),
        (
            lambda store: store.create_dataset("zz", {"encrypted": False}),
            "settings must be a tierstore.types.DatasetSettings",
        ),
        # None was a raw TypeError; NaN returned at once, infinity waited for good.
        (lambda store: store.drain(None), "timeout must be a number of seconds"),
        (lambda store: store.drain("1"), "timeout must be a number of seconds"),
        (lambda store: store.drain(True), "timeout must be a number of seconds"),
        (lambda store: store.drain(-1.0), "timeout must be a number of seconds"),
        (lambda store: store.drain(float("nan")), "timeout must be a number of seconds"),
        (lambda store: store.drain(float("inf")), "timeout must be a number of seconds"),
    ],
    ids=[
        "prefix",
        "start_after",
        "limit",
        "quota_wait_s",
        "prefetch",
        "prefetch None",
        "sizing_curve int",
        "sizing_curve str",
        "sizing_curve list of lists",
        "create_dataset str",
        "create_dataset dict",
        "drain None",
        "drain str",
        "drain bool",
        "drain negative",
        "drain nan",
        "drain inf",
    ],
)
def test_arguments_of_the_wrong_type_are_invalid_arguments(
    store: Store, known: dict[tuple[str, str], bytes], call: Callable[[Store], object], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        call(store)
    assert "zz" not in dict(store.list_datasets())
    assert_intact(store, known)


def test_a_durability_given_by_name_is_the_enum_member() -> None:
    assert DatasetSettings(durability="write-through").durability is Durability.WRITE_THROUGH  # type: ignore[arg-type]


def test_every_bad_input_error_is_an_invalid_argument() -> None:
    for error in (InvalidName, InvalidRange, OversizeFrame, MalformedArrow, UnsupportedData):
        assert issubclass(error, InvalidArgument)
        assert error.status_code == "INVALID_ARGUMENT"
    assert issubclass(HotTierFull, ResourceExhausted) and issubclass(IntegrityError, DataLoss)
    assert issubclass(ArchiveUnavailable, Unavailable) and issubclass(Unavailable, TierstoreError)


def test_a_drain_of_no_time_looks_once(store: Store) -> None:
    # Refused for a while with the other timeouts the argument check caught; it was,
    # and is again, the way to ask whether the journal is empty without waiting.
    assert store.drain(10)
    assert store.drain(0) is True
    assert store.drain(0.0) is True
