"""A server gives the memory of a burst of puts back to the OS once the puts stop
(glibc arenas keep freed memory otherwise: tierstore/engine/allocator.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ServerProcess, poll, unique

MiB = 1 << 20
PUTS = 6
PUT_BYTES = 32 * MiB


def anonymous_resident(pid: int) -> int:
    """Bytes of the process's anonymous memory in RAM (RssAnon)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/<pid>/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_an_idle_server_gives_back_the_memory_of_a_burst_of_puts(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = spawn_server()
    source = tmp_path / "shard.bin"
    source.write_bytes(os.urandom(PUT_BYTES))
    dataset = unique()
    with server.connect() as admin:
        admin.create_dataset(dataset, durability="write-back")
    before = anonymous_resident(server.pid)

    failures: list[BaseException] = []

    def put(index: int) -> None:
        try:
            with server.connect() as client:
                client.put(dataset, f"s{index}", source)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(PUTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    after = anonymous_resident(server.pid)
    grew = after - before
    assert grew >= 64 * MiB, f"the burst grew the server by {grew // MiB} MiB only"
    poll(
        lambda: anonymous_resident(server.pid) < before + grew // 2,
        15,
        f"the idle server to give back its burst's memory ({before // MiB} MiB before, "
        f"{after // MiB} MiB after)",
        interval_s=0.2,
    )
