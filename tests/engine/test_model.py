"""The store against a plain dict, under random sequences of operations (hypothesis).

The model maps ``(dataset, shard)`` to the bytes last put there. Each step is
one of: put (a new shard or an overwrite), whole read, byte-range read,
frame-range read, delete, evict (after the mover drained) and maybe a cold
read, a restart, and a drain that checks the archive holds exactly the live
generations. Frames are 4 KiB, so most shards span several frames, and puts of
more than two are staged a chunk per transaction; one dataset is encrypted; two
names are long enough for hashed catalog keys. After every step: the listing
matches the model, ``stat`` counts every read of the current generation, the
hot-bytes counter matches the hot shards in the catalog, LMDB holds exactly their
frames, and the backlog counter is the bytes of the uploads on the journal.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.engine.backdoor import (
    catalog_hot_bytes,
    frame_counts_in,
    hot_record_frame_counts_in,
)
from tests.engine.stores import FRAME, KEYRING, engine_settings
from tierstore.engine.records import archive_dataset_key, archive_frames_key, archive_manifest_key
from tierstore.engine.store import Store
from tierstore.errors import InvalidRange, ShardNotFound
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

DATASETS = {"plain": DatasetSettings(), "enc": DatasetSettings(encrypted=True)}
LONG = "l" * 450  # names over 440 bytes get hashed catalog keys
NAMES = ["a", "b", "dir/c", "dir/d/e", LONG + "/y", LONG + "/x"]

datasets = st.sampled_from(list(DATASETS))
names = st.sampled_from(NAMES)
# Sizes around frame boundaries are where off-by-one errors live.
sizes = st.one_of(
    st.integers(0, 4 * FRAME + 100),
    st.sampled_from([0, 1, FRAME - 1, FRAME, FRAME + 1, 2 * FRAME, 3 * FRAME - 1]),
)
offsets = st.integers(0, 4 * FRAME + 200)
lengths = st.integers(0, 3 * FRAME)


class StoreAgainstDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tierstore-model-"))
        self.archive = MemoryTier()
        self.model: dict[tuple[str, str], bytes] = {}
        self.reads: dict[tuple[str, str], int] = {}  # reads of the current generation
        self.store = self._open()
        for name, dataset_settings in DATASETS.items():
            self.store.create_dataset(name, dataset_settings)

    def _open(self) -> Store:
        return Store(
            engine_settings(
                self.root,
                hot_capacity_bytes=1 << 20,
                access_flush_interval_s=0.05,
                # Puts of more than two frames are staged, a chunk per transaction.
                put_chunk_bytes=2 * FRAME,
            ),
            self.archive,
            KEYRING,
        )

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def expect(self, dataset: str, name: str) -> bytes | None:
        return self.model.get((dataset, name))

    @rule(dataset=datasets, name=names, size=sizes, seed=st.integers(0, 2**16))
    def put(self, dataset: str, name: str, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        info = self.store.put(dataset, name, data)
        assert info.size == size and info.hot
        self.model[(dataset, name)] = data
        self.reads[(dataset, name)] = 0

    def count_read(self, dataset: str, name: str) -> None:
        self.reads[(dataset, name)] += 1

    @rule(dataset=datasets, name=names)
    def get_whole(self, dataset: str, name: str) -> None:
        expected = self.expect(dataset, name)
        if expected is None:
            with pytest.raises(ShardNotFound):
                self.store.get(dataset, name)
            return
        read = self.store.get(dataset, name)
        self.count_read(dataset, name)
        assert read.to_bytes() == expected
        assert read.source in ("hot", "archive")

    @rule(dataset=datasets, name=names, offset=offsets, length=lengths)
    def get_byte_range(self, dataset: str, name: str, offset: int, length: int) -> None:
        expected = self.expect(dataset, name)
        if expected is None:
            with pytest.raises(ShardNotFound):
                self.store.get(dataset, name, byte_range=(offset, length))
        elif offset > len(expected):
            with pytest.raises(InvalidRange):
                self.store.get(dataset, name, byte_range=(offset, length))
        else:
            read = self.store.get(dataset, name, byte_range=(offset, length))
            self.count_read(dataset, name)
            assert read.to_bytes() == expected[offset : offset + length]

    @rule(dataset=datasets, name=names, first=st.integers(0, 6), count=st.integers(0, 6))
    def get_frame_range(self, dataset: str, name: str, first: int, count: int) -> None:
        expected = self.expect(dataset, name)
        if expected is None:
            with pytest.raises(ShardNotFound):
                self.store.get(dataset, name, frame_range=(first, count))
            return
        frames = -(-len(expected) // FRAME)
        if first > frames:
            with pytest.raises(InvalidRange):
                self.store.get(dataset, name, frame_range=(first, count))
            return
        read = self.store.get(dataset, name, frame_range=(first, count))
        self.count_read(dataset, name)
        assert read.to_bytes() == expected[first * FRAME : (first + count) * FRAME]

    @rule(dataset=datasets, name=names)
    def delete(self, dataset: str, name: str) -> None:
        if self.expect(dataset, name) is None:
            with pytest.raises(ShardNotFound):
                self.store.delete(dataset, name)
            return
        self.store.delete(dataset, name)
        del self.model[(dataset, name)]

    @rule(dataset=datasets, name=names, then_read=st.booleans())
    def evict(self, dataset: str, name: str, then_read: bool) -> None:
        expected = self.expect(dataset, name)
        if expected is None:
            with pytest.raises(ShardNotFound):
                self.store.evict(dataset, name)
            return
        assert self.store.drain(10)
        assert self.store.stat(dataset, name).archived
        self.store.evict(dataset, name)
        if then_read:  # a cold read (unless a queued promotion won the race)
            assert self.store.get(dataset, name).to_bytes() == expected
            self.count_read(dataset, name)

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self._open()

    @precondition(lambda self: bool(self.model))
    @rule()
    def drain_and_check_archive(self) -> None:
        assert self.store.drain(10)
        expected = {archive_dataset_key(name) for name in DATASETS}
        for dataset, name in self.model:
            generation = self.store.stat(dataset, name).generation
            expected |= {
                archive_frames_key(dataset, generation),
                archive_manifest_key(dataset, generation),
            }
        assert set(self.archive.list(limit=10_000).keys) == expected

    @invariant()
    def listing_matches_the_model(self) -> None:
        for dataset in DATASETS:
            listed = [info.name for info in self.store.list(dataset)[0]]
            assert listed == sorted(name for ds, name in self.model if ds == dataset)

    @invariant()
    def stat_counts_every_read(self) -> None:
        for (dataset, name), data in self.model.items():
            info = self.store.stat(dataset, name)
            assert info.size == len(data)
            assert info.access_count == self.reads[(dataset, name)]

    @invariant()
    def hot_bytes_match_the_hot_shards(self) -> None:
        counter, actual = catalog_hot_bytes(self.store)
        assert counter == actual

    @invariant()
    def lmdb_holds_exactly_the_hot_shards_frames(self) -> None:
        # One snapshot: a promotion (of a shard a cold read found) may commit meanwhile.
        with self.store._env.read() as txn:
            assert not self.store._catalog.staged(txn)
            frames = frame_counts_in(self.store, txn)
            assert frames == hot_record_frame_counts_in(self.store, txn)

    @invariant()
    def the_backlog_is_the_pending_uploads(self) -> None:
        with self.store._env.read() as txn:
            backlog = self.store._catalog.counter(txn, "backlog_bytes")
            pending = self.store._catalog.journal_entries(txn, limit=1 << 20)
        assert backlog == sum(op.nbytes for _, op in pending if op.op == "upload")


StoreAgainstDict.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreAgainstDict = StoreAgainstDict.TestCase
