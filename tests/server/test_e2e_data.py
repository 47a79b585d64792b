"""What the client library puts and reads back through the real server, plaintext and encrypted.

Bytes and buffers, files (by path and as file objects), numpy arrays, Arrow tables and
record batches, torch tensors: each goes in with ``Client.put`` and comes back equal
through ``get``, ``read_table`` or ``read_tensor``.
"""

from __future__ import annotations

import array
import gzip
import io
import mmap
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tierstore import errors
from tierstore.client.client import Client
from tierstore.types import ShardKind

from .conftest import ServerProcess, poll

MiB = 1 << 20


def _written_mmap(data: bytes) -> mmap.mmap:
    """An anonymous mapping ``data`` was written into (its position at its end)."""
    mapping = mmap.mmap(-1, len(data))
    mapping.write(data)
    return mapping


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"x",
        bytearray(b"a bytearray"),
        memoryview(b"0123456789abcdef")[3:11],
        np.arange(1000, dtype=np.uint8).data,  # any buffer
        array.array("i", range(100)),  # was UnsupportedData
        _written_mmap(b"mapped " * 100),  # has read(): was stored from its position, empty
    ],
    ids=["empty", "one-byte", "bytearray", "memoryview-slice", "buffer", "array", "mmap"],
)
def test_bytes_and_buffers(admin: Client, any_dataset: str, value: object) -> None:
    expected = bytes(value)  # type: ignore[call-overload]
    info = admin.put(any_dataset, "b", value)
    assert (info.kind, info.size) == (ShardKind.RAW, len(expected))
    got = admin.get(any_dataset, "b")
    assert isinstance(got, pa.Buffer)
    assert got.to_pybytes() == expected
    assert got.address % 64 == 0  # 64-byte aligned, ready for Arrow and numpy


def test_large_multi_frame_bytes(admin: Client, any_dataset: str) -> None:
    data = os.urandom(9 * MiB + 1)  # three 4 MiB frames and a 1-byte one
    info = admin.put(any_dataset, "big", data)
    assert len(info.frame_sizes) == 3 and info.frame_sizes[-1] == MiB + 1
    assert admin.get(any_dataset, "big").to_pybytes() == data
    assert (
        admin.get(any_dataset, "big", offset=4 * MiB - 3, length=6).to_pybytes()
        == data[4 * MiB - 3 : 4 * MiB + 3]
    )


def test_a_download_writes_the_shard_to_a_file(
    admin: Client, any_dataset: str, tmp_path: Path
) -> None:
    """``download`` streams verified frames into the file (memory does not grow with
    the shard); whole, ranged and empty; a failed one leaves the file as it was."""
    data = os.urandom(9 * MiB + 1)
    admin.put(any_dataset, "big", data)
    admin.put(any_dataset, "empty", b"")
    target = tmp_path / "big.bin"
    # A user's own file of the name a partial download once had is no partial of ours.
    (tmp_path / "big.bin.part").write_bytes(b"the user's own")
    assert admin.download(any_dataset, "big", target) == len(data)
    assert target.read_bytes() == data
    assert admin.download(any_dataset, "big", target, offset=4 * MiB - 3, length=6) == 6
    assert target.read_bytes() == data[4 * MiB - 3 : 4 * MiB + 3]
    assert admin.download(any_dataset, "empty", tmp_path / "empty.bin") == 0
    assert (tmp_path / "empty.bin").read_bytes() == b""
    with pytest.raises(errors.ShardNotFound):
        admin.download(any_dataset, "no-such-shard", target)
    assert target.read_bytes() == data[4 * MiB - 3 : 4 * MiB + 3]  # as it was
    # No partial file is left behind, and the user's was neither written nor removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "big.bin.part", "empty.bin"]
    assert (tmp_path / "big.bin.part").read_bytes() == b"the user's own"
    assert admin.download(any_dataset, "big", "/dev/null") == len(data)  # not a file: as is
    # A directory is refused before the shard is fetched (it was fetched whole into
    # memory first); a file in no directory is named as given, not by a partial file.
    with pytest.raises(IsADirectoryError, match="name a file"):
        admin.download(any_dataset, "big", tmp_path)
    with pytest.raises(FileNotFoundError) as nowhere:
        admin.download(any_dataset, "big", tmp_path / "no-such-dir" / "x")
    assert nowhere.value.filename == str(tmp_path / "no-such-dir" / "x")


#: Downloads shard ``big`` of dataset argv[4] into directory argv[5] as the client at
#: argv[1..3] (address, token, CA); prints whether it failed for want of space, and
#: what the directory holds then.
_DOWNLOAD = """
import errno, os, sys
import tierstore
client = tierstore.connect(sys.argv[1], token=sys.argv[2], ca=sys.argv[3], local_reads=False)
try:
    client.download(sys.argv[4], "big", os.path.join(sys.argv[5], "out.bin"))
except OSError as exc:
    print(exc.errno == errno.ENOSPC, sorted(os.listdir(sys.argv[5])))
"""


def test_a_download_to_a_full_disk_raises_and_leaves_no_partial_file(
    server: ServerProcess, admin: Client, dataset: str, tmp_path: Path
) -> None:
    # The file was sized by truncate, sparse, and written through a map: with no disk
    # for a page, the kernel killed the process (SIGBUS), and a partial file the size
    # of the shard stayed. On a small filesystem of its own (mounted in a mount
    # namespace of the child's: root only).
    small = tmp_path / "small"
    small.mkdir()
    mount = f"mount -t tmpfs -o size=8m tmpfs {shlex.quote(str(small))}"
    probe = shutil.which("unshare") and subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount], capture_output=True
    )
    if not probe or probe.returncode:
        pytest.skip("mounting a small filesystem needs root (unshare --mount, mount)")
    admin.put(dataset, "big", os.urandom(32 * MiB))
    client = [server.address, server.token, str(server.ca_path)]
    download = shlex.join([sys.executable, "-c", _DOWNLOAD, *client, dataset, str(small)])
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"{mount} && {download}"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split("\n")[0] == "True []"


#: Downloads shard ``big`` of dataset argv[4] to the file argv[5] as the client at
#: argv[1..3] (address, token, CA), reading in place; prints the most bytes Arrow's
#: pool has held, and how many reads were served in place.
_DOWNLOAD_IN_PLACE = """
import sys
import pyarrow as pa
import tierstore
with tierstore.connect(sys.argv[1], token=sys.argv[2], ca=sys.argv[3]) as client:
    client.download(sys.argv[4], "big", sys.argv[5])
    print(pa.default_memory_pool().max_memory(), client.read_counts.local)
"""


def test_a_download_read_in_place_does_not_hold_the_shard_in_memory(
    server: ServerProcess, admin: Client, any_dataset: str, tmp_path: Path
) -> None:
    # Read in place (a node on this host, the default), the whole range went into one
    # buffer of Arrow's pool first, then to the file: a shard's size in memory, where
    # the streamed download holds a frame or two.
    data = os.urandom(48 * MiB + 5)
    admin.put(any_dataset, "big", data)
    client = [server.address, server.token, str(server.ca_path)]
    target = tmp_path / "big.bin"
    done = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_IN_PLACE, *client, any_dataset, str(target)],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    most_held, in_place = map(int, done.stdout.split())
    assert in_place == 1
    assert most_held < 8 * MiB, most_held
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]  # no partial file left


def test_files_by_path_and_object(admin: Client, any_dataset: str, tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 7)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    admin.put(any_dataset, "by-path", path)
    admin.put(any_dataset, "by-str", str(path))
    with path.open("rb") as file:
        admin.put(any_dataset, "by-file", file)
    admin.put(any_dataset, "by-bytesio", io.BytesIO(b"in memory"))
    admin.put(any_dataset, "empty-file", tmp_path / "empty")
    for name in ("by-path", "by-str", "by-file"):
        assert admin.get(any_dataset, name).to_pybytes() == data, name
    assert admin.get(any_dataset, "by-bytesio").to_pybytes() == b"in memory"
    assert admin.get(any_dataset, "empty-file").size == 0
    with pytest.raises(errors.InvalidArgument):
        admin.put(any_dataset, "missing", tmp_path / "no-such-file")


def test_a_file_object_is_stored_from_where_it_stands(
    admin: Client, any_dataset: str, tmp_path: Path
) -> None:
    # A regular file was stored from byte 0 whatever its position (a BytesIO from its
    # position): a header the caller had read past was stored with the payload.
    data = os.urandom(5 * MiB + 7)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    for skip in (8, 4 * MiB + 1, len(data)):
        with path.open("rb") as file:
            file.read(skip)  # buffered: the descriptor itself stands further on
            admin.put(any_dataset, f"from-{skip}", file)
            assert file.tell() == len(data)  # as read() leaves it
        with io.BytesIO(data) as memory:
            memory.seek(skip)
            admin.put(any_dataset, f"memory-from-{skip}", memory)
        for name in (f"from-{skip}", f"memory-from-{skip}"):
            assert admin.get(any_dataset, name).to_pybytes() == data[skip:], name
    # A compressed file's descriptor holds other bytes than it reads: its tell() past
    # the compressed file's end stored nothing (and from 0, the compressed bytes).
    with gzip.open(tmp_path / "blob.gz", "wb") as packed:
        packed.write(data)
    with gzip.open(tmp_path / "blob.gz", "rb") as unpacked:
        unpacked.read(1000)
        admin.put(any_dataset, "gzip", unpacked)
    assert admin.get(any_dataset, "gzip").to_pybytes() == data[1000:]
    # A tar member's reader is buffered over the archive's bytes: no descriptor of its own.
    with tarfile.open(tmp_path / "shards.tar", "w") as tar:
        tar.add(path, arcname="blob.bin")
    with tarfile.open(tmp_path / "shards.tar") as tar:
        member = tar.extractfile("blob.bin")
        assert member is not None
        member.read(5)
        admin.put(any_dataset, "tar-member", member)
    assert admin.get(any_dataset, "tar-member").to_pybytes() == data[5:]
    with tempfile.NamedTemporaryFile(dir=tmp_path) as named:  # a wrapper, read by frames
        named.write(data)
        named.seek(3)
        admin.put(any_dataset, "named", named)
    assert admin.get(any_dataset, "named").to_pybytes() == data[3:]


def test_a_pipe_is_stored_as_it_comes(admin: Client, any_dataset: str, tmp_path: Path) -> None:
    # A pipe (or a device, or a compressed file's reader) was read whole into memory
    # before a byte was sent: a 300 MB FIFO took the client up by 328 MiB.
    data = os.urandom(9 * MiB + 5)
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as writer:
            for start in range(0, len(data), 1_000_003):  # writes that split the frames
                writer.write(data[start : start + 1_000_003])

    with ThreadPoolExecutor(1) as pool, os.fdopen(read_end, "rb") as reader:
        writing = pool.submit(write)
        info = admin.put(any_dataset, "piped", reader)
        writing.result(timeout=30)
    assert info.size == len(data)
    assert admin.get(any_dataset, "piped").to_pybytes() == data
    assert (
        admin.get(any_dataset, "piped", offset=4 * MiB + 1, length=5).to_pybytes()
        == (data[4 * MiB + 1 : 4 * MiB + 6])
    )
    read_end, write_end = os.pipe()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as empty:
        assert admin.put(any_dataset, "piped-empty", empty).size == 0
    assert admin.get(any_dataset, "piped-empty").size == 0


def test_a_file_object_that_cannot_be_read_is_invalid_argument(
    admin: Client, any_dataset: str, tmp_path: Path
) -> None:
    # Each escaped as a bare error of its own: UnicodeDecodeError (text mode),
    # io.UnsupportedOperation (opened for writing only), ValueError (closed).
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)))
    with path.open(encoding="utf-8") as text, pytest.raises(errors.InvalidArgument, match="'rb'"):
        admin.put(any_dataset, "text", text)
    with path.open("ab") as appending, pytest.raises(errors.InvalidArgument, match="cannot read"):
        admin.put(any_dataset, "appending", appending)
    with path.open("rb") as file:
        pass
    for closed in (file, io.BytesIO(b"x"), _written_mmap(b"x")):
        closed.close()
        with pytest.raises(errors.InvalidArgument, match="cannot read"):
            admin.put(any_dataset, "closed", closed)
    assert admin.list(any_dataset) == []  # nothing was stored


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array([[1, -2], [3, -4]], dtype=np.int64),
        np.zeros((0, 5), dtype=np.float16),
        np.random.default_rng(7).standard_normal((1500, 1024)),  # 12 MiB of float64: 3+ frames
        np.array([True, False, True]),
    ],
    ids=["f32-3d", "i64", "empty", "f64-multi-frame", "bool"],
)
def test_numpy_arrays(admin: Client, any_dataset: str, array: np.ndarray) -> None:
    info = admin.put(any_dataset, "t", array)
    assert info.kind is ShardKind.TENSOR
    got = admin.read_tensor(any_dataset, "t")
    assert isinstance(got, np.ndarray)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_arrow_tables_and_record_batches(admin: Client, any_dataset: str) -> None:
    table = pa.table(
        {
            "id": pa.array(range(50_000), pa.int64()),
            "label": pa.array([f"row-{i}" for i in range(50_000)]),
            "score": pa.array(np.linspace(0, 1, 50_000), pa.float32()),
        }
    )
    assert admin.put(any_dataset, "table", table).kind is ShardKind.ARROW
    assert admin.read_table(any_dataset, "table").equals(table)
    # The row count recorded at put time reaches the client; raw bytes have none.
    assert admin.stat(any_dataset, "table").rows == 50_000
    assert {info.name: info.rows for info in admin.list(any_dataset, "table")} == {"table": 50_000}
    picked = admin.read_table(any_dataset, "table", columns=["score", "id"])
    assert picked.column_names == ["score", "id"]
    assert picked.equals(table.select(["score", "id"]))
    with pytest.raises(errors.InvalidArgument):
        admin.read_table(any_dataset, "table", columns=["no-such-column"])

    batch = pa.record_batch({"x": [1, 2, 3], "y": ["a", None, "c"]})
    admin.put(any_dataset, "batch", batch)
    assert admin.read_table(any_dataset, "batch").equals(pa.Table.from_batches([batch]))

    admin.put(any_dataset, "raw", b"not arrow")
    assert admin.stat(any_dataset, "raw").rows is None
    with pytest.raises(errors.WrongShardKind):
        admin.read_table(any_dataset, "raw")
    with pytest.raises(errors.WrongShardKind):
        admin.read_tensor(any_dataset, "table")


def metric_sum(server: ServerProcess, start: str) -> float:
    """The sum of the node's /metrics samples whose line starts with ``start``."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(start))


def test_a_table_read_of_raw_bytes_stops_at_the_header(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    # WrongShardKind came only once the whole raw shard had been streamed (read and
    # dropped, to end the call): 64 MiB sent for one error.
    size = 64 * 1024 * 1024
    admin.put(dataset, "raw", os.urandom(size))
    served, reads = "tierstore_served_bytes_total", "tierstore_requests_total{code="
    before = metric_sum(server, served), metric_sum(server, reads)
    with server.connect(local_reads=False) as reader:
        with pytest.raises(errors.WrongShardKind):
            reader.read_table(dataset, "raw")
        assert reader.stat(dataset, "raw").size == size  # the connection still serves
    # Once the node has ended both calls (each is counted as it ends), what it sent:
    poll(lambda: metric_sum(server, reads) >= before[1] + 2, 30, "both calls to end")
    assert metric_sum(server, served) - before[0] < size / 2


def test_torch_tensors(admin: Client, any_dataset: str) -> None:
    torch = pytest.importorskip("torch")
    tensors = {
        "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "bf16": torch.linspace(-1, 1, 64, dtype=torch.bfloat16).reshape(8, 8),
        "i8": torch.tensor([[-1, 2], [3, -4]], dtype=torch.int8),
    }
    for name, tensor in tensors.items():
        assert admin.put(any_dataset, name, tensor).kind is ShardKind.TENSOR
        got = admin.read_tensor(any_dataset, name)
        assert isinstance(got, torch.Tensor), name
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got, tensor), name


#: Reads a tensor shard (argv: address, ca, dataset, shard, local reads "1"/"0") with
#: the token in TIERSTORE_TOKEN, and prints its sum.
READ_TENSOR = """
import os, sys
import tierstore
address, ca, dataset, shard, local = sys.argv[1:]
with tierstore.connect(address, token=os.environ["TIERSTORE_TOKEN"], ca=ca,
                       local_reads=local == "1") as client:
    print(float(client.read_tensor(dataset, shard).sum(dtype="float64")))
"""


def test_a_multi_frame_tensor_is_read_without_holding_it_twice(
    server: ServerProcess, admin: Client, any_dataset: str
) -> None:
    # Its frames were all received, and held while one copy of the whole tensor was
    # made from them: the reader's peak grew by twice the tensor or more (268-310 MB for
    # 128 MiB; a 300 MiB tensor took 585 MiB). Each frame's values are now copied into
    # place as it arrives, and the frame let go of. (Read locally, an encrypted shard's
    # frames are decrypted at once, on two threads, first: not this test's path.)
    from tests.server.test_e2e_cli import PEAK_RSS

    local_reads = False
    sizes = {"medium": 16 * MiB, "large": 208 * MiB}
    peaks = {}
    for name, size in sizes.items():
        tensor = np.arange(size // 4, dtype=np.float32)
        admin.put(any_dataset, name, tensor.reshape(-1, 1024))  # 4 MiB frames
        command = [sys.executable, "-c", READ_TENSOR, server.address, str(server.ca_path)]
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *command, any_dataset, name, str(int(local_reads))],
            env={**os.environ, "TIERSTORE_TOKEN": server.token},
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert float(done.stdout) == float(tensor.sum(dtype=np.float64))
        peaks[name] = int(done.stderr.split()[-1]) << 10
    grown = peaks["large"] - peaks["medium"]
    # Under 1.75 times the extra bytes: holding the frames and the tensor at once grew
    # by about twice them (2.0-2.3 times). gRPC's own buffers take the rest: 1.0-1.13
    # times with the test run alone, 1.53 in two whole-suite runs (the server busier,
    # more in flight), which failed the 1.5 this test had.
    assert grown < 1.75 * (sizes["large"] - sizes["medium"]), (peaks, grown)
