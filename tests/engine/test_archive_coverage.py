"""The archive always holds a generation of every shard that exists, and a write-through
put is acknowledged only once the archive holds its generation or a newer one.

"Held" means what a rebuild from the archive alone (the node's disk lost) finds. An
overwrite used to journal the old generation's deletion before the new one's upload, so
for the whole upload the archive held neither; two write-through puts of one shard could
have the overtaken one acknowledged while the archive held only the generation before
both; and a write-through put behind more than 10,000 journal entries did not find its
dataset's settings object, so a rebuild left out the dataset and the acknowledged shard.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, StoreFactory, payload
from tierstore.engine import mover as mover_module
from tierstore.engine import stallwatch
from tierstore.engine.records import archive_dataset_key, archive_frames_key, archive_manifest_key
from tierstore.engine.store import Store
from tierstore.errors import ArchiveUnavailable, NotArchivedYet
from tierstore.tiers.base import Tier
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability, ShardInfo

WRITE_THROUGH = DatasetSettings(durability=Durability.WRITE_THROUGH)


class GatedArchive(MemoryTier):
    """A MemoryTier whose puts of keys that ``gate`` picks, and deletes of keys that
    ``delete_gate`` picks, wait until :attr:`release` (a frozen archive: no answer).
    ``puts`` counts the puts of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Callable[[str], bool] = lambda key: False
        self.delete_gate: Callable[[str], bool] = lambda key: False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.puts: collections.Counter[str] = collections.Counter()

    def put(self, key: str, value: object) -> None:  # type: ignore[override]
        self.puts[key] += 1
        if self.gate(key):
            self.entered.set()
            assert self.release.wait(30), "the test never released the gated put"
        super().put(key, value)  # type: ignore[arg-type]

    def delete(self, key: str) -> None:
        if self.delete_gate(key):
            self.entered.set()
            assert self.release.wait(30), "the test never released the gated delete"
        super().delete(key)


def rebuilt_store(open_store: StoreFactory, archive: Tier) -> Store:
    """A fresh store whose catalog was rebuilt from ``archive`` alone."""
    fresh = open_store(archive, start_mover=False)
    fresh.rebuild_from_archive()
    return fresh


def rebuilt(open_store: StoreFactory, archive: Tier, dataset: str) -> dict[str, bytes]:
    """Every shard of ``dataset`` that a fresh store rebuilt from ``archive`` alone reads."""
    fresh = rebuilt_store(open_store, archive)
    page, _ = fresh.list(dataset)
    shards = {info.name: fresh.get(dataset, info.name).to_bytes() for info in page}
    fresh.close()
    return shards


def test_an_overwrite_being_uploaded_leaves_the_old_generation_in_the_archive(
    open_store: StoreFactory,
) -> None:
    archive = GatedArchive()
    store = open_store(archive, datasets={"wt": WRITE_THROUGH}, start_mover=False)
    old, new = payload(3 * FRAME, 1), payload(3 * FRAME, 2)
    first = store.put("wt", "s", old)
    assert first.archived
    archive.gate = lambda key: key.endswith(".frames")  # the next generation's upload waits
    putting = threading.Thread(target=store.put, args=("wt", "s", new))
    putting.start()
    try:
        assert archive.entered.wait(10)
        assert rebuilt(open_store, archive, "wt") == {"s": old}
    finally:
        archive.release.set()
        putting.join(30)
    assert rebuilt(open_store, archive, "wt") == {"s": new}
    assert store.mover.drain_once()  # the old generation's objects go, the new one archived
    assert rebuilt(open_store, archive, "wt") == {"s": new}
    current = store.stat("wt", "s").generation
    assert set(archive.list("wt/").keys) == {
        archive_dataset_key("wt"),
        archive_frames_key("wt", current),
        archive_manifest_key("wt", current),
    }


class Overtaken:
    """Two write-through puts of one shard, A and B: A commits, then B commits, then A
    archives (its own upload overtaken by B's generation); B archives only once
    :meth:`finish_b` is called. ``before_a_archives`` runs just before A archives."""

    def __init__(
        self,
        store: Store,
        monkeypatch: pytest.MonkeyPatch,
        before_a_archives: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.outcome: dict[str, object] = {}
        self._b_committed, self._a_returned = threading.Event(), threading.Event()
        run_in_order = store.mover.run_entry_in_order

        def in_turn(seq: int, dataset: str, shard: str) -> bool:
            if threading.current_thread().name == "A":
                assert self._b_committed.wait(10)
                before_a_archives()
            else:
                self._b_committed.set()
                assert self._a_returned.wait(10)
            return run_in_order(seq, dataset, shard)

        monkeypatch.setattr(store.mover, "run_entry_in_order", in_turn)
        self._b = threading.Thread(target=self._put, args=("B", B_DATA), name="B")

    def _put(self, who: str, data: bytes) -> None:
        try:
            self.outcome[who] = self.store.put("wt", "s", data)
        except Exception as error:
            self.outcome[who] = error

    def run_a(self) -> object:
        """Start A, then B once A has committed; A's result (or error) once it returns."""
        put_a = threading.Thread(target=self._put, args=("A", A_DATA), name="A")
        put_a.start()
        while self.store.mover.pending() == 0:  # A has committed and waits for B
            pass
        self._b.start()
        put_a.join(30)
        return self.outcome["A"]

    def finish_b(self) -> object:
        self._a_returned.set()
        self._b.join(30)
        return self.outcome["B"]


A_DATA, B_DATA = payload(3 * FRAME, 10), payload(3 * FRAME, 20)


def test_an_overtaken_write_through_put_returns_once_a_newer_generation_is_archived(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = MemoryTier()
    store = open_store(archive, datasets={"wt": WRITE_THROUGH}, start_mover=False)
    store.put("wt", "s", payload(3 * FRAME, 0))
    race = Overtaken(store, monkeypatch)
    try:
        a = race.run_a()
        assert isinstance(a, ShardInfo) and a.archived
        # The archive holds B's generation, newer than A's: nothing acknowledged rolls back.
        assert rebuilt(open_store, archive, "wt") == {"s": B_DATA}
    finally:
        race.finish_b()
    assert store.get("wt", "s").to_bytes() == B_DATA
    assert store.stat("wt", "s").archived
    assert not store.mover.data_loss


def test_an_overtaken_write_through_put_fails_when_the_newer_one_cannot_be_archived(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"wt": WRITE_THROUGH}, start_mover=False)
    store.put("wt", "s", payload(3 * FRAME, 0))
    race = Overtaken(
        store, monkeypatch, before_a_archives=lambda: setattr(archive, "failing", True)
    )
    try:
        a = race.run_a()
        assert isinstance(a, ArchiveUnavailable), a
        assert "newer puts of it overtook this one" in str(a)
    finally:
        b = race.finish_b()
    assert isinstance(b, ArchiveUnavailable)  # the archive is still down for B's own put
    archive.failing = False
    assert store.mover.drain_once()
    assert store.stat("wt", "s").archived
    assert rebuilt(open_store, archive.inner, "wt") == {"s": B_DATA}


def test_a_write_through_put_behind_a_long_backlog_archives_its_dataset_first(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan once stopped after the oldest 10,000 entries: a small window shows it.
    monkeypatch.setattr(mover_module, "_UPLOADS_SCANNED", 10)
    archive = MemoryTier()
    store = open_store(archive, datasets={"wb": DatasetSettings()}, start_mover=False)
    for index in range(20):
        store.put("wb", f"x{index}", b"backlog")
    store.create_dataset("wt", WRITE_THROUGH)
    assert store.put("wt", "kept", b"acknowledged").archived
    assert rebuilt(open_store, archive, "wt") == {"kept": b"acknowledged"}


def test_a_generation_uploaded_ahead_of_its_turn_may_be_overwritten_meanwhile(
    open_store: StoreFactory,
) -> None:
    # v1 archived; v2 and v3 overwrite it before the mover runs, so v2's upload is
    # skipped and v1's supersede entry uploads v3 first — and v3 is overwritten by v4
    # while its frames are read. The entry once went with v1's objects still there.
    stores: list[Store] = []
    generations: list[str] = []  # hex generations: v3's, then v4's

    class OverwriteDuringUpload(FaultyTier):
        overwritten = False

        def put(self, key: str, value: object) -> None:  # type: ignore[override]
            upload_of_v3 = key.endswith(".frames") and generations and generations[-1] in key
            if upload_of_v3 and not self.overwritten:
                self.overwritten = True
                generations.append(f"{stores[0].put('d', 's', payload(FRAME, 4)).generation:016x}")
            super().put(key, value)  # type: ignore[arg-type]

    archive = OverwriteDuringUpload(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings()}, start_mover=False)
    stores.append(store)
    store.put("d", "s", payload(FRAME, 1))
    assert store.mover.drain_once()
    store.put("d", "s", payload(FRAME, 2))
    generations.append(f"{store.put('d', 's', payload(FRAME, 3)).generation:016x}")
    assert store.mover.drain_once()
    assert archive.overwritten and len(generations) == 2
    current = store.stat("d", "s").generation
    assert set(archive.inner.list("d/").keys) == {
        archive_dataset_key("d"),
        archive_frames_key("d", current),
        archive_manifest_key("d", current),
    }
    assert rebuilt(open_store, archive.inner, "d") == {"s": payload(FRAME, 4)}
    assert not store.mover.data_loss


def test_a_write_through_delete_is_acknowledged_once_the_archive_has_done_it(
    open_store: StoreFactory,
) -> None:
    # A delete only queued its archive objects' deletion: a node lost before the mover
    # ran it came back from the archive with the deleted shard, and the deleted dataset.
    archive = FaultyTier(MemoryTier())
    datasets = {"wt": WRITE_THROUGH, "gone": WRITE_THROUGH}
    store = open_store(archive, datasets=datasets, start_mover=False)  # nothing runs later
    store.put("wt", "kept", b"stays")
    store.put("wt", "secret", b"delete me")
    store.put("gone", "s", b"the whole dataset goes")
    store.delete("wt", "secret")
    store.delete_dataset("gone", force=True)
    assert rebuilt(open_store, archive, "wt") == {"kept": b"stays"}
    assert "gone" not in [name for name, _ in rebuilt_store(open_store, archive).list_datasets()]


def test_a_write_through_delete_the_archive_refuses_is_unavailable_and_stays_journaled(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"wt": WRITE_THROUGH, "gone": WRITE_THROUGH})
    store.put("wt", "secret", b"delete me")
    store.put("gone", "s", b"x")
    archive.failing = True
    with pytest.raises(ArchiveUnavailable, match="a rebuild from the archive would bring"):
        store.delete("wt", "secret")
    with pytest.raises(ArchiveUnavailable, match="dataset 'gone' is deleted here"):
        store.delete_dataset("gone", force=True)
    assert store.list("wt")[0] == [] and "gone" not in dict(store.list_datasets())
    archive.failing = False
    assert store.drain(30)  # the mover does it once the archive is back
    assert rebuilt(open_store, archive, "wt") == {}
    assert dict(rebuilt_store(open_store, archive).list_datasets()).keys() == {"wt"}


WT_AND_WB = {"wt": WRITE_THROUGH, "wb": DatasetSettings()}


@contextlib.contextmanager
def upload_held_by_the_mover(store: Store, archive: GatedArchive) -> Iterator[None]:
    """While the block runs, the mover holds the journal in an upload of a write-back
    shard that the archive holds at its gate (released, and the mover joined, after)."""
    held = archive_frames_key("wb", store.put("wb", "held", payload(FRAME, 1)).generation)
    archive.gate = lambda key: key == held
    mover = threading.Thread(target=store.mover.drain_once)
    mover.start()
    try:
        assert archive.entered.wait(10)
        yield
    finally:
        archive.release.set()
        mover.join(30)


def test_a_write_through_put_does_not_wait_out_the_movers_attempt_on_a_frozen_archive(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mover holds the journal while its upload waits on a frozen archive (for
    # minutes: time-outs and retries). A write-through put waited for its turn behind
    # it, then made its own attempt: 15 minutes before it failed, while stats had said
    # for most of that time that the archive was failing.
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 0.5)
    monkeypatch.setattr(mover_module, "JOURNAL_TURN_GRACE_S", 1.0)
    archive = GatedArchive()
    store = open_store(archive, datasets=WT_AND_WB, start_mover=False)
    with upload_held_by_the_mover(store, archive):  # hangs on the archive
        started = time.monotonic()
        with pytest.raises(ArchiveUnavailable, match="committed locally") as refused:
            store.put("wt", "s", payload(FRAME, 2))
        assert time.monotonic() - started < 8, "the put waited out the mover's attempt"
        assert "the archive failed" in str(refused.value)
    assert store.mover.drain_once()  # the archive is back: the put's upload goes up
    assert store.stat("wt", "s").archived
    assert store.get("wt", "s").to_bytes() == payload(FRAME, 2)


def test_an_earlier_archive_failure_does_not_refuse_a_write_through_put_that_waits(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The archive failed once and is back; the mover's next upload is slow but going.
    # A write-through put waiting its turn was refused, on that stale error alone.
    monkeypatch.setattr(mover_module, "JOURNAL_TURN_GRACE_S", 0.5)
    archive = GatedArchive()
    store = open_store(archive, datasets=WT_AND_WB, start_mover=False)
    with upload_held_by_the_mover(store, archive):
        # (Set once the entries before it are done: each success clears it.)
        store.mover.last_error = "put wb/other@1: the archive was down (an hour ago)"
        threading.Timer(3.0, archive.release.set).start()  # within STALL_REPORT_S
        info = store.put("wt", "s", payload(FRAME, 2))  # waits its turn, then uploads
        assert info.archived


def frozen_write_through_call(
    store: Store, archive: GatedArchive, call: str
) -> Callable[[], object]:
    """Freeze ``archive`` (no answer) for the archive request of a write-through
    ``call`` ("put", "delete" or "delete_dataset") made next, with the journal empty;
    returns the call."""
    store.put("wt", "s", payload(FRAME, 1))
    store.put("gone", "s", payload(FRAME, 2))
    assert store.mover.pending() == 0  # the normal case: the call runs its own entry
    if call == "put":
        archive.gate = lambda key: key.endswith(".frames")
        return lambda: store.put("wt", "s", payload(FRAME, 3))
    if call == "delete":
        manifest = archive_manifest_key("wt", store.stat("wt", "s").generation)
        archive.delete_gate = lambda key: key == manifest
        return lambda: store.delete("wt", "s")
    archive.delete_gate = lambda key: key == archive_dataset_key("gone")
    return lambda: store.delete_dataset("gone", force=True)


@pytest.mark.parametrize("call", ["put", "delete", "delete_dataset"])
def test_a_write_through_call_running_its_own_entry_gives_up_once_the_archive_stalls(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    # With the journal empty (the normal case), a write-through put, delete or dataset
    # delete ran its own entry and waited out the frozen archive's time-outs and retries
    # (minutes): the client's deadline came first, and said the change may or may not
    # have been made, though it was committed here. Only a call waiting behind the
    # mover's entry gave up once the archive stalled.
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 0.5)
    monkeypatch.setattr(mover_module, "JOURNAL_TURN_GRACE_S", 1.0)
    archive = GatedArchive()
    datasets = {"wt": WRITE_THROUGH, "gone": WRITE_THROUGH}
    store = open_store(archive, datasets=datasets, start_mover=False)
    run_call = frozen_write_through_call(store, archive, call)
    answers = threading.Timer(10.0, archive.release.set)  # the archive's late answer
    answers.start()
    try:
        started = time.monotonic()
        with pytest.raises(NotArchivedYet):
            run_call()
        assert time.monotonic() - started < 6, "the call waited for the archive's answer"
        assert archive.entered.is_set()
        # Its attempt, still in flight, keeps the journal: the mover waits for it rather
        # than run the entry a second time at once, and it is not lost.
        assert store.mover.pending() >= 1
        mover = threading.Thread(target=store.mover.drain_once)
        mover.start()
        mover.join(0.5)
        assert mover.is_alive(), "the mover ran the journal beside the call's attempt"
    finally:
        answers.cancel()
        archive.release.set()
    mover.join(10)
    assert not mover.is_alive() and store.mover.pending() == 0
    assert store.mover.last_error is None
    if call == "put":
        record = store.stat("wt", "s")
        assert record.archived and store.get("wt", "s").to_bytes() == payload(FRAME, 3)
        assert archive.puts[archive_frames_key("wt", record.generation)] == 1  # once
        assert rebuilt(open_store, archive, "wt") == {"s": payload(FRAME, 3)}
    elif call == "delete":
        assert rebuilt(open_store, archive, "wt") == {}
    else:
        names = [name for name, _ in rebuilt_store(open_store, archive).list_datasets()]
        assert "gone" not in names and "wt" in names


def test_a_write_through_call_gives_up_at_once_when_its_store_closes(
    open_store: StoreFactory,
) -> None:
    # A node stopping with a write-through put on a frozen archive: the put's thread
    # waited on for the stall time and the grace, and the process, which joins the
    # service's threads as it exits, with it (240 s with 8 mover threads; the node's
    # supervisor allows 60).
    archive = GatedArchive()
    store = open_store(archive, datasets={"wt": WRITE_THROUGH}, start_mover=False)
    archive.gate = lambda key: key.endswith(".frames")
    with ThreadPoolExecutor(1) as pool:
        putting = pool.submit(store.put, "wt", "s", payload(FRAME, 3))
        try:
            assert archive.entered.wait(10)
            started = time.monotonic()
            store.close()
            ended = putting.exception(timeout=15)  # TimeoutError: it waited on after the close
            assert time.monotonic() - started < 15
            assert isinstance(ended, NotArchivedYet), ended
        finally:
            archive.release.set()


def test_a_write_through_put_waits_for_its_own_upload_while_the_archive_takes_it(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow is not stalled: a caller gives up on its own entry only once the archive has
    # taken no data of it for the stall time (30 s here), not after the grace alone.
    monkeypatch.setattr(mover_module, "JOURNAL_TURN_GRACE_S", 0.5)
    archive = GatedArchive()
    store = open_store(archive, datasets=WT_AND_WB, start_mover=False)
    archive.gate = lambda key: key.endswith(".frames")
    threading.Timer(2.0, archive.release.set).start()
    info = store.put("wt", "s", payload(FRAME, 2))
    assert info.archived and store.stat("wt", "s").archived
    assert archive.puts[archive_frames_key("wt", info.generation)] == 1
