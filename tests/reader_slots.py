"""A process that holds read transactions of a hot tier, for tests of the reader table."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tierstore.tiers.lmdb import MAX_READERS

_HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=True, create=False, max_dbs=32,
                max_readers=int(sys.argv[2]))
held = [env.begin() for _ in range(int(sys.argv[3]))]
print("holding", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def holding_reader_slots(hot_dir: Path, count: int) -> Iterator[subprocess.Popen[str]]:
    """Another process holds ``count`` read transactions of the LMDB environment at
    ``hot_dir`` inside the block, and is killed (slots still held) at its end."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(hot_dir), str(MAX_READERS), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        yield holder
    finally:
        holder.kill()
        holder.wait()
