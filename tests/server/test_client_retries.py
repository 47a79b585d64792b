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

#: Shards of 16 MiB in 64 KiB frames: far more than the server can send ahead of a
#: reader that has stopped reading (4 to 5 MiB, measured), so the overwrite finds most
#: of the stream still to be read.
SHARD_BYTES = 16 << 20
FRAME_BYTES = 64 << 10


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


@pytest.mark.timeout(180)
def test_a_read_cut_short_by_an_overwrite_is_read_again_whole(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    node = spawn_server()
    writer = node.connect(local_reads=False)
    writer.frame_bytes = FRAME_BYTES
    writer.create_dataset("ds")
    old, new = b"o" * SHARD_BYTES, b"n" * SHARD_BYTES
    rows = SHARD_BYTES // 8
    old_table = pa.table({"x": np.zeros(rows, dtype=np.int64)})
    new_table = pa.table({"x": np.arange(rows, dtype=np.int64)})

    cases: list[tuple[str, object, object, Callable[[Client], object]]] = [
        ("get", old, new, lambda c: bytes(c.get("ds", "raw"))),
        ("range", old, new, lambda c: bytes(c.get("ds", "raw", offset=5, length=12 << 20))),
        ("table", old_table, new_table, lambda c: c.read_table("ds", "table")),
    ]
    for name, before, after, read in cases:
        shard = "table" if name == "table" else "raw"
        writer.put("ds", shard, before)
        reader = node.connect(local_reads=False)
        allocated = overwrite_on_first_allocation(reader, writer, "ds", shard, after)
        got = read(reader)
        expected = new[5 : 5 + (12 << 20)] if name == "range" else after
        assert got == expected, name
        assert len(allocated) > 1, f"{name}: the read was not made again"


@pytest.mark.timeout(240)
def test_a_client_reaches_its_node_again_once_it_restarted(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    node = spawn_server()
    admin = node.connect()
    admin.create_dataset("ds")
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
    # At most ~1.2 s until the channel has reconnected, and a read's retries last 1.5 s.
    assert took < 2.5, (
        f"the old client read again only {took:.1f} s after the node was back; "
        f"{len(failures)} reads failed before: {failures[-1:]}"
    )
