"""The churn test: a hot tier kept full by insert/evict cycles stays bounded and fast.

DESIGN.md §5: LMDB never defragments, so large values need contiguous free
pages; this test proves that ``data.mdb`` stays within 1.25x the configured hot
capacity and that write throughput does not decay (last cycle >= 0.7x the
first) over 5x the capacity of inserts. Shared by ``bench_engine.py`` and
``engine_report.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from engine_cases import FRAME_BYTES, GiB, MiB, check_not_tmpfs, random_payload, timed

from tierstore.config import EngineSettings
from tierstore.engine.store import Store
from tierstore.frames import CHECKSUM_BYTES
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability

__all__ = ["CHURN_ARCHIVE", "ChurnCycle", "ChurnResult", "run_churn"]

CHURN_SHARD_BYTES = 16 * MiB


@dataclass(frozen=True, slots=True)
class ChurnCycle:
    """One insert/evict cycle: ``nbytes`` of new shards into a full hot tier."""

    nbytes: int
    seconds: float
    lmdb_file_bytes: int
    hot_bytes: int

    @property
    def gib_s(self) -> float:
        return self.nbytes / self.seconds / GiB


@dataclass(frozen=True, slots=True)
class ChurnResult:
    """Outcome of :func:`run_churn`."""

    capacity: int
    fill_bytes: int
    cycles: tuple[ChurnCycle, ...]
    max_file_bytes: int
    error: str | None = None
    file_target: float = 1.25
    throughput_target: float = 0.7

    @property
    def file_ratio(self) -> float:
        """Largest LMDB data file seen over the configured hot capacity."""
        return self.max_file_bytes / self.capacity

    @property
    def throughput_ratio(self) -> float:
        """Write throughput of the last cycle over the first."""
        if len(self.cycles) < 2:
            return 0.0
        return self.cycles[-1].gib_s / self.cycles[0].gib_s

    @property
    def file_passed(self) -> bool:
        return self.error is None and self.file_ratio <= self.file_target

    @property
    def throughput_passed(self) -> bool:
        return self.error is None and self.throughput_ratio >= self.throughput_target


CHURN_ARCHIVE = (
    "write-through puts to an in-process MemoryTier archive (so every shard is archived "
    "when its put returns and eviction can always free room); shards evicted in a cycle "
    "are deleted after it (untimed) to keep the archive's memory bounded"
)


def run_churn(
    capacity: int,
    parent: Path | None = None,
    cycles: int = 5,
    shard_bytes: int = CHURN_SHARD_BYTES,
    progress: Callable[[str], None] | None = None,
) -> ChurnResult:
    """Fill a hot tier of ``capacity`` bytes to its high watermark, then insert/evict.

    Each of ``cycles`` cycles inserts ``capacity`` bytes of new shards
    (eviction by the watermarks makes room); the run records each cycle's
    write throughput and the largest ``data.mdb`` seen after any put. See
    :data:`CHURN_ARCHIVE` for the archive set-up. The store lives in a
    temporary directory under ``parent``, removed on return.
    """
    workdir = Path(tempfile.mkdtemp(prefix="tierstore-churn-", dir=parent))
    check_not_tmpfs(workdir)
    payload = random_payload(shard_bytes, seed=99)
    settings = EngineSettings(
        data_dir=workdir / "store", hot_capacity_bytes=capacity, max_frame_bytes=FRAME_BYTES
    )
    archive = MemoryTier()
    store = Store(settings, archive)
    max_file = 0
    results: list[ChurnCycle] = []
    error: str | None = None
    serial = 0
    try:
        store.create_dataset("churn", DatasetSettings(durability=Durability.WRITE_THROUGH))

        def insert() -> None:
            nonlocal serial, max_file
            store.put("churn", f"s{serial:06d}", payload)
            serial += 1
            max_file = max(max_file, store.stats().lmdb_file_bytes)

        def insert_many(count: int) -> None:
            for _ in range(count):
                insert()

        stored = shard_bytes + (shard_bytes // FRAME_BYTES) * CHECKSUM_BYTES
        while store.stats().hot_bytes + stored <= capacity * settings.high_watermark:
            insert()
        fill = store.stats().hot_bytes
        per_cycle = max(1, capacity // shard_bytes)
        for cycle in range(cycles):
            seconds = timed(partial(insert_many, per_cycle))
            stats = store.stats()
            results.append(
                ChurnCycle(per_cycle * shard_bytes, seconds, stats.lmdb_file_bytes, stats.hot_bytes)
            )
            if progress is not None:
                progress(
                    f"churn cycle {cycle + 1}/{cycles}: {results[-1].gib_s:.3f} GiB/s, "
                    f"data.mdb {stats.lmdb_file_bytes / MiB:.0f} MiB"
                )
            names, _ = store.list("churn", limit=100_000)
            for info in names:
                if not info.hot:
                    store.delete("churn", info.name)
            store.drain(120)
    except Exception as exc:  # a full map is a finding to report, not a crash
        error = f"{type(exc).__name__}: {exc}"
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return ChurnResult(capacity, fill, tuple(results), max_file, error)
