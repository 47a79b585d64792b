"""When the archive or the disk fails: specific errors, nothing acknowledged lost.

The failing archives are real S3Tier clients pointed at 127.0.0.1: a port that
refuses connections, and a stub server that answers every request with HTTP 500.
The full disk is an LMDB map of 512 KiB.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.engine.backdoor import catalog_hot_bytes
from tests.engine.stores import DATASETS, FRAME, KEYRING, StoreFactory, payload, wait_until
from tests.engine.test_store import (
    both_generations_archived,
    damage_archived_frames,
    generation_objects,
)
from tests.s3_stubs import (
    FreezingProxy,
    ScriptedServer,
    fast_settings,
    s3_error,
    unreachable_endpoint,
)
from tests.tiers.test_lmdb import killed_reader
from tierstore.engine import stallwatch
from tierstore.engine.store import hot_tier_dir
from tierstore.errors import (
    ArchiveUnavailable,
    DatasetNotFound,
    HotTierFull,
    QuotaExceeded,
    ShardNotFound,
)
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.types import DatasetSettings

# The archive fails.


@contextmanager
def failing_archive(kind: str) -> Iterator[S3Tier]:
    """An S3Tier whose endpoint refuses connections or answers every request with HTTP 500."""
    if kind == "refused":
        with unreachable_endpoint() as url:
            tier = S3Tier(fast_settings(url, max_attempts=2))
            yield tier
            tier.close()
        return
    server = ScriptedServer(lambda n, request: s3_error(500, "InternalError"))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=2))
    try:
        yield tier
    finally:
        tier.close()
        server.close()


@pytest.mark.parametrize("kind", ["refused", "http-500"])
def test_archive_down_is_unavailable_never_missing_and_loses_nothing(
    open_store: StoreFactory, archive: MemoryTier, kind: str
) -> None:
    store = open_store(archive, datasets=DATASETS)
    cold = payload(3 * FRAME, 1)
    store.put("enc", "cold", cold)
    assert store.drain(10)
    store.evict("enc", "cold")
    with failing_archive(kind) as down:
        store = open_store.reopen(store, down, KEYRING)
        for name, data in (("wt", b"through" * 1000), ("wt-enc", b"secret" * 999)):
            with pytest.raises(ArchiveUnavailable, match="committed locally"):
                store.put(name, "w", data)
            info = store.stat(name, "w")
            assert info.hot and not info.archived
            read = store.get(name, "w")
            assert read.to_bytes() == data and read.source == "hot"
        with pytest.raises(ArchiveUnavailable):
            store.get("enc", "cold")
        with pytest.raises(ArchiveUnavailable):
            store.get("enc", "cold", byte_range=(FRAME, 10))
        store.put("plain", "back", b"write-back is acknowledged locally")
        wait_until(lambda: store.stats().mover_error is not None, "the mover to see the outage")
        assert not store.drain(0.2)
        assert store.stats().journal_entries >= 3
        store.close()
    store = open_store.reopen(store, archive, KEYRING)
    assert store.drain(10)
    for dataset, name in (("wt", "w"), ("wt-enc", "w"), ("plain", "back"), ("enc", "cold")):
        info = store.stat(dataset, name)
        assert info.archived
        expected = store.get(dataset, name).to_bytes()
        if info.hot:
            store.evict(dataset, name)
        assert store.get(dataset, name).to_bytes() == expected
    assert store.get("enc", "cold").to_bytes() == cold
    assert store.stats().mover_error is None


def test_a_frozen_archive_shows_as_failing_before_its_retries_end(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An archive that takes connections and never answers (a stopped process) showed
    # nothing for minutes: each request waits out its read time-out, then retries.
    # Stats and /metrics then said so, but the log not until a request failed.
    caplog.set_level(logging.INFO, logger=stallwatch.__name__)
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 0.5)
    release = threading.Event()

    def frozen(_n: int, _request: object) -> tuple[int, dict[str, str], bytes]:
        release.wait(60)
        return s3_error(500, "InternalError")

    server = ScriptedServer(frozen)
    tier = S3Tier(dataclasses.replace(fast_settings(server.endpoint_url, 5), read_timeout_s=60))
    try:
        store = open_store(tier, datasets={"plain": DatasetSettings()})
        store.put("plain", "s", b"acknowledged before the archive froze")
        wait_until(lambda: store.stats().mover_error is not None, "the mover to report the freeze")
        stalled = store.stats().mover_error or ""
        assert "taken no data" in stalled and "still being tried" in stalled
        wait_until(lambda: "taken no data" in caplog.text, "the stall to be logged")
        assert not release.is_set()  # seen while the first request still waited
        warned = [r for r in caplog.records if "taken no data" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    finally:
        release.set()
        tier.close()
        server.close()


_CLOSE_DURING_A_COLD_READ = """
import dataclasses, json, sys, threading
from pathlib import Path
from tests.engine.stores import FRAME, KEYRING, engine_settings, payload
from tierstore.engine.store import Store
from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.types import DatasetSettings

settings = S3Settings(**json.loads(sys.argv[1]))
store = Store(engine_settings(Path(sys.argv[2])), S3Tier(settings), KEYRING)
store.create_dataset("plain", DatasetSettings())
store.put("plain", "s", payload(6 * FRAME))
assert store.drain(30)
store.evict("plain", "s")
print("evicted", flush=True)
sys.stdin.readline()  # the archive is frozen
outcome = []

def read():
    try:
        store.get("plain", "s")
        outcome.append("read")
    except Exception as exc:
        outcome.append(type(exc).__name__)

reader = threading.Thread(target=read)
reader.start()
sys.stdin.readline()  # its requests are held
store.close()
print("closed", flush=True)
reader.join()
print("the read:", *outcome, flush=True)
"""


def test_a_store_closes_and_its_process_exits_while_a_cold_read_waits_on_a_frozen_archive(
    s3_settings: S3Settings, tmp_path: Path
) -> None:
    # The ranged GETs of a cold read ran on a ThreadPoolExecutor, which close() waited
    # for and the interpreter joins at exit: a node stopped while its archive took
    # connections and never answered (a stopped process) lingered for the GETs'
    # time-outs and retries, minutes, long past its stop's 35 s, and was killed.
    proxy = FreezingProxy(int(s3_settings.endpoint_url.rsplit(":", 1)[1]))
    settings = dataclasses.replace(
        s3_settings, endpoint_url=proxy.endpoint_url, read_timeout_s=600, max_attempts=2
    )
    fields = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CLOSE_DURING_A_COLD_READ, json.dumps(fields), str(tmp_path / "s")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "evicted\n"
        proxy.freeze()
        child.stdin.write("frozen\n")
        child.stdin.flush()
        wait_until(lambda: proxy.held > 0, "the cold read's requests to reach the archive")
        child.stdin.write("held\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=120)  # the GETs wait 600 s each
        assert child.returncode == 0, err[-3000:]
        assert out.splitlines() == ["closed", "the read: StoreClosed"]
    finally:
        child.kill()
        child.wait()
        proxy.close()


def test_a_put_that_could_never_fit_is_named_before_it_is_collected(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(
        archive,
        datasets={"plain": DatasetSettings(), "capped": DatasetSettings(hot_quota_bytes=10_000)},
        map_size_bytes=512 << 10,
    )
    store.check_put_size("plain", "s", 300 << 10)  # could fit, once the tier is emptied
    with pytest.raises(HotTierFull, match="can ever hold"):
        store.check_put_size("plain", "s", 512 << 10)
    store.check_put_size("capped", "s", 10_000)
    with pytest.raises(QuotaExceeded, match="capped's whole hot-tier quota"):
        store.check_put_size("capped", "s", 10_001)
    with pytest.raises(DatasetNotFound):
        store.check_put_size("nope", "s", 1)


def test_hot_tier_full(open_store: StoreFactory, archive: MemoryTier) -> None:
    # The mover waits until the map is full: a put that finds it full evicts archived
    # shards, so with the mover running it would fill only with what it cannot evict.
    store = open_store(
        archive,
        datasets={"plain": DatasetSettings()},
        map_size_bytes=512 << 10,
        start_mover=False,
    )
    contents: dict[str, bytes] = {}
    for index in range(200):
        data = payload(4 * FRAME - 100, index)
        try:
            store.put("plain", f"s{index}", data)
        except HotTierFull:
            break
        contents[f"s{index}"] = data
    else:
        pytest.fail("a 512 KiB hot tier never filled up")
    assert len(contents) >= 4
    with pytest.raises(ShardNotFound):
        store.stat("plain", f"s{len(contents)}")  # the failed put left nothing behind
    for name, data in contents.items():
        assert store.get("plain", name).to_bytes() == data
    store.mover.start()
    assert store.drain(10)
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual == sum(len(d) + 8 * -(-len(d) // FRAME) for d in contents.values())
    deleted = sorted(contents)[::2]
    for name in deleted:
        store.delete("plain", name)
        del contents[name]
    assert store.drain(10)
    for index in range(len(deleted) // 2):
        data = payload(4 * FRAME - 100, 1000 + index)
        store.put("plain", f"again{index}", data)
        contents[f"again{index}"] = data
    for name, data in contents.items():
        assert store.get("plain", name).to_bytes() == data


def test_a_dead_readers_snapshot_never_fails_a_put(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A local reader killed while it held a snapshot keeps the pages freed after it
    # from reuse until its slot is freed (at most every 5 s, by a write). Overwrites in
    # between filled the map, and the put that found it full failed HotTierFull though
    # freeing the slot just then made room: the put now runs once more.
    store = open_store(
        archive, datasets={"plain": DatasetSettings()}, map_size_bytes=1 << 20, start_mover=False
    )
    store.put("plain", "s", payload(100 << 10, 0))
    killed_reader(hot_tier_dir(store.settings.data_dir))
    for round_ in range(1, 40):  # 4 MB through a 1 MiB map, well within 5 s
        store.put("plain", "s", payload(100 << 10, round_))
    assert store.get("plain", "s").to_bytes() == payload(100 << 10, 39)


def test_a_crash_after_an_older_generation_came_back_does_not_delete_it(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A rebuild's outdated entry made the older generation the shard's again (its newer
    # one damaged in the archive); a node killed before the entry left the journal ran
    # it again at restart, now as a plain supersede of the older generation: it deleted
    # the shard's only copy from the archive.
    store = open_store(archive, datasets=DATASETS)
    older, newer, older_objects = both_generations_archived(
        store, archive, "plain", payload(FRAME, 1), payload(FRAME, 2)
    )
    damage_archived_frames(archive, "plain", newer.generation)
    fresh = open_store(archive, start_mover=False)
    assert fresh.rebuild_from_archive() == 1
    with fresh._env.read() as txn:
        [(_, outdated)] = fresh._catalog.journal_entries(txn)
    assert outdated.op == "outdated" and outdated.generation == older.generation
    fresh.mover._apply(outdated)  # done, and the node killed before the entry went

    fresh = open_store.reopen(fresh, archive)

    assert fresh.drain(10), fresh.mover.last_error
    assert fresh.stat("plain", "s").generation == older.generation
    assert generation_objects(archive, "plain", older.generation) == older_objects
    fresh.evict("plain", "s")
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 1)


def test_a_rebuild_falls_back_to_the_newest_whole_generation(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # Three generations in the archive, the newest damaged: the oldest became the
    # shard's again, and the whole generation between them was deleted for it.
    store = open_store(archive, datasets=DATASETS)
    _, second, first_objects = both_generations_archived(
        store, archive, "plain", payload(FRAME, 1), payload(FRAME, 2)
    )
    second_objects = generation_objects(archive, "plain", second.generation)
    third = store.put("plain", "s", payload(FRAME, 3))
    assert store.drain(10)
    for key, value in {**first_objects, **second_objects}.items():
        archive.put(key, value)  # both deletions lost
    damage_archived_frames(archive, "plain", third.generation)

    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == 1
    assert fresh.drain(10), fresh.mover.last_error

    assert fresh.stat("plain", "s").generation == second.generation
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 2)
    assert generation_objects(archive, "plain", second.generation) == second_objects
    assert all(archive.get(key) is None for key in first_objects)
