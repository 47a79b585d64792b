"""What the client retries, against a real ``tierstore serve``.

* A whole read (``get``, a byte range, ``read_table``) whose stream an overwrite cuts
  short — the old generation's frames gone from both tiers after its header was sent —
  is read again from the start and returns the whole new generation, not
  ``Unavailable: ... changed during the read``.
* A client made before its node restarted (on the same address) reaches it again at
  once: its channel keeps trying to reconnect at least every ~1.2 s, and a retried
  call outlasts that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from tierstore import errors
from tierstore.client.allocation import FrameAllocator, aligned_buffer
from tierstore.client.client import Client

from .conftest import ServerProcess, poll

#: Shards of 48 MiB in 256 KiB frames: far more than the server sends ahead of a reader
#: that has stopped reading (4 to 6 MiB measured, up to 12 MiB on a loaded machine), so
#: the overwrite finds most of the stream still to be read.
SHARD_BYTES = 48 << 20
FRAME_BYTES = 256 << 10
#: tries of each case: a try whose whole stream was sent before the overwrite reads the
#: whole old generation (right, but not what is tested), and is made again.
TRIES = 3


def overwrite_on_first_allocation(
    reader: Client, writer: Client, dataset: str, shard: str, data: object
) -> list[int]:
    """Make ``reader``'s next streamed read overwrite ``dataset/shard`` with ``data`` as
    it allocates its first buffer (the stream's header is in, its frames are not), and
    wait until the node's journal is empty: the old generation is then gone from the
    hot tier and the archive, so its stream cannot go on. Returns the sizes of the
    buffers allocated since (by every attempt)."""
    sizes: list[int] = []

    def allocate(size: int) -> pa.Buffer:
        if not sizes:
            writer.put(dataset, shard, data)
            poll(lambda: writer.stats()["journal_entries"] == 0, 60, "the journal to drain")
        sizes.append(size)
        return aligned_buffer(size)

    def allocator() -> FrameAllocator:
        return allocate

    reader._frame_allocator = allocator  # type: ignore[method-assign]
    return sizes


def node_with_writer(spawn_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, Client]:
    """A node of its own with dataset "ds", and a client that puts in FRAME_BYTES frames."""
    node = spawn_server()
    writer = node.connect(local_reads=False)
    writer.frame_bytes = FRAME_BYTES
    writer.create_dataset("ds", encrypted=False)
    return node, writer


@pytest.mark.timeout(180)
def test_a_read_cut_short_by_an_overwrite_is_read_again_whole(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    node, writer = node_with_writer(spawn_server)
    old, new = b"o" * SHARD_BYTES, b"n" * SHARD_BYTES
    rows = SHARD_BYTES // 8
    old_table = pa.table({"x": np.zeros(rows, dtype=np.int64)})
    new_table = pa.table({"x": np.arange(rows, dtype=np.int64)})

    length = 40 << 20
    window = slice(5, 5 + length)
    # (case, shard, stored first, stored over it, read, what it reads of each)
    cases: list[tuple[str, str, object, object, Callable[[Client], object], object, object]] = [
        ("get", "raw", old, new, lambda c: bytes(c.get("ds", "raw")), old, new),
        (
            "range",
            "raw",
            old,
            new,
            lambda c: bytes(c.get("ds", "raw", offset=window.start, length=length)),
            old[window],
            new[window],
        ),
        (
            "table",
            "table",
            old_table,
            new_table,
            lambda c: c.read_table("ds", "table"),
            old_table,
            new_table,
        ),
    ]
    for name, shard, before, after, read, read_before, read_after in cases:
        for _ in range(TRIES):
            writer.put("ds", shard, before)
            reader = node.connect(local_reads=False)
            allocated = overwrite_on_first_allocation(reader, writer, "ds", shard, after)
            got = read(reader)  # without the retry: Unavailable, "changed during the read"
            reader.close()
            if len(allocated) > 1:  # cut short, and read again
                assert got == read_after, name
                break
            assert got == read_before, name  # sent whole before the overwrite: the old one
        else:
            pytest.fail(f"{name}: no try was cut short by the overwrite in {TRIES}")


@pytest.mark.timeout(240)
def test_a_client_reaches_its_node_again_once_it_restarted(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    node = spawn_server()
    admin = node.connect()
    admin.create_dataset("ds", encrypted=False)
    admin.put("ds", "shard", b"x" * 10_000)
    client = node.connect(local_reads=False)
    assert len(client.get("ds", "shard")) == 10_000

    node.stop()
    with pytest.raises(errors.Unavailable):
        client.get("ds", "shard")  # its channel now reconnects with back-off
    # The outage itself (nothing to wait for): long enough for gRPC's default back-off to
    # space its reconnection attempts 4 s or more apart, after which a client made before
    # the restart kept failing for 3-8 s after the node was back.
    time.sleep(10)
    node.start(same_ports=True)
    ready = time.monotonic()
    failures: list[str] = []

    def read() -> bool:
        try:
            return len(client.get("ds", "shard")) == 10_000
        except errors.Unavailable as exc:
            failures.append(str(exc))
            return False

    poll(read, 60, "the old client to read again")
    took = time.monotonic() - ready
    # At most ~1.2 s until the channel has reconnected, and a read's retries last 1.5 s
    # (with room for a loaded machine; the old back-off took up to 8 s after 60 s down).
    assert took < 4.0, (
        f"the old client read again only {took:.1f} s after the node was back; "
        f"{len(failures)} reads failed before: {failures[-1:]}"
    )


def test_a_report_of_local_reads_does_not_wait_out_its_deadline_for_a_node_that_is_down(
    spawn_server: Callable[..., ServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    # The report that stat() sends first waited for the channel to connect (gRPC's
    # wait_for_ready) until its 5 s deadline ran out, then stat() retried for its own
    # 1.5 s: 6.5 s to learn that the node is down. It is now tried again only while it
    # cannot leave the client, as long as stat() itself is, and then dropped.
    node = spawn_server()
    with node.connect() as admin:
        admin.create_dataset("ds", encrypted=False)
        admin.put("ds", "shard", b"x" * 10_000)
    reader = node.connect()
    try:
        assert len(reader.get("ds", "shard")) == 10_000
        reader.report_local_reads()
        node.stop()
        assert len(reader.get("ds", "shard")) == 10_000  # in place: its report pending
        assert reader.read_counts.local == 2
        caplog.set_level("INFO", logger="tierstore.client.reports")
        with pytest.raises(errors.Unavailable, match="failed to connect"):
            reader.stat("ds", "shard")
        dropped = [r.getMessage() for r in caplog.records if "could not report" in r.getMessage()]
        assert len(dropped) == 1 and "failed to connect to all addresses" in dropped[0], dropped
    finally:
        reader.close()


def test_calls_that_change_something_reach_a_restarted_node_as_reads_do(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # A read retried the ~1.2 s a client's channel may take to reconnect; a put, a
    # delete or a create failed at once with "failed to connect to all addresses" (it
    # is not retried once it may have reached the node, but this one never left).
    node = spawn_server()
    with node.connect() as admin:
        admin.create_dataset("ds", encrypted=False)
        admin.put("ds", "gone", b"x")
    client = node.connect(local_reads=False)
    try:
        assert client.stat("ds", "gone").size == 1
        node.stop()
        with pytest.raises(errors.Unavailable, match="failed to connect") as down:
            client.put("ds", "shard", b"y" * 10_000)  # its channel now backs off
        assert not down.value.outcome_unknown
        node.start(same_ports=True)
        assert client.put("ds", "shard", b"y" * 10_000).size == 10_000
        client.delete("ds", "gone")
        client.create_dataset("made", encrypted=False)
        assert client.get("ds", "shard").to_pybytes() == b"y" * 10_000
        assert [info.name for info in client.list("ds")] == ["shard"]
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_iter_bytes_hands_on_one_generation_and_retries_nothing_once_it_has(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # iter_bytes hands each frame on as it arrives, so once one is out a stream cut
    # short cannot be read again from its start: it raises, and what was handed on is
    # a prefix of the old generation, never followed by the new one's bytes.
    node, writer = node_with_writer(spawn_server)
    old, new = b"o" * SHARD_BYTES, b"n" * SHARD_BYTES
    with node.connect(local_reads=False) as reader:
        with pytest.raises(errors.ShardNotFound):
            reader.iter_bytes("ds", "raw")  # raised by the call: nothing to iterate
        for _ in range(TRIES):
            writer.put("ds", "raw", old)
            pieces = reader.iter_bytes("ds", "raw")
            got = [next(pieces)]  # the first frame is in; most of the stream is not
            writer.put("ds", "raw", new)
            poll(lambda: writer.stats()["journal_entries"] == 0, 60, "the journal to drain")
            try:
                got.extend(pieces)
            except errors.Unavailable as exc:
                assert "changed during the read" in str(exc)
                handed = b"".join(got)
                assert len(handed) < SHARD_BYTES and handed == old[: len(handed)]
                break
            assert b"".join(got) == old  # sent whole before the overwrite: the old one
        else:
            pytest.fail(f"no try was cut short by the overwrite in {TRIES}")
        assert b"".join(reader.iter_bytes("ds", "raw")) == new
