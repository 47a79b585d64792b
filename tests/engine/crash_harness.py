"""The crash tests' side of a writer process killed with SIGKILL (``crash_writer.py``):
starting and killing it, reading its ack file, and checking the store it left.

Shared by ``test_crash.py`` (write-back puts, overwrites and deletes) and
``test_crash_ops.py`` (write-through, promotion and eviction, key rotation).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.engine.backdoor import catalog_hot_bytes, frame_counts_in, hot_record_frame_counts_in
from tests.engine.crash_writer import DATASETS, MAX_FRAME_BYTES, NAMES, STATE_KINDS, content
from tierstore.config import EngineSettings
from tierstore.crypto import MasterKeyProvider
from tierstore.engine.records import (
    ShardRecord,
    archive_dataset_key,
    archive_frames_key,
    archive_manifest_key,
)
from tierstore.engine.store import Store
from tierstore.errors import ShardNotFound
from tierstore.tiers.s3 import S3Tier
from tierstore.types import ShardInfo

__all__ = [
    "DRAIN_TIMEOUT_S",
    "HOT_CAPACITY",
    "Key",
    "Op",
    "Ops",
    "State",
    "check_drained",
    "check_hot_tier",
    "check_store",
    "effects",
    "engine_settings",
    "list_all",
    "new_state",
    "parse_ack_file",
    "reopened_store",
    "run_writer",
]

WRITER = Path(__file__).with_name("crash_writer.py")
HOT_CAPACITY = 256 << 20
#: how long the writer may take to reach the acks a kill waits for: a failure's bound,
#: not a pace (the keys mode's retirements each wait up to 30 s for the mover)
ACK_DEADLINE_S = 120.0
DRAIN_TIMEOUT_S = 60.0
POLL_S = 0.002

Key = tuple[str, str]  # (dataset, shard name)
State = int | None  # op id of the put whose bytes the shard holds; None: absent
Op = tuple[int, str, str, str]  # op id, kind, dataset, shard name


@dataclass
class Ops:
    """What the writer logged in one round."""

    acked: list[Op] = field(default_factory=list)
    in_flight: Op | None = None


def new_state(op: Op) -> State:
    """The state operation ``op`` leaves its shard in (a put's id; a delete: None)."""
    op_id, kind, _, _ = op
    return op_id if kind == "P" else None


def effects(op: Op) -> dict[Key, State]:
    """The state operation ``op`` leaves each shard it changes in: its own (a put, a
    delete), or every shard of its dataset (deleted and made again: none left)."""
    _, kind, dataset, name = op
    if kind == "X":
        return {(dataset, each): None for each in NAMES}
    return {(dataset, name): new_state(op)}


def parse_ack_file(path: Path) -> Ops:
    """Complete lines only: a kill may cut the last line short. Only puts and deletes
    (:data:`STATE_KINDS`) are returned: reads, evictions and key operations change no
    shard's bytes."""
    ops = Ops()
    begun: Op | None = None
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        fields = line.split()
        if fields[0] == "B":
            assert begun is None, f"operation {begun} was begun but neither acked nor last"
            begun = (int(fields[1]), fields[2], fields[3], fields[4])
        else:
            assert begun is not None and int(fields[1]) == begun[0], f"stray ack {line!r}"
            if begun[1] in STATE_KINDS:
                ops.acked.append(begun)
            begun = None
    ops.in_flight = begun if begun is not None and begun[1] in STATE_KINDS else None
    return ops


def ack_count(path: Path) -> int:
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line.startswith(b"A "))


def engine_settings(data_dir: Path) -> EngineSettings:
    return EngineSettings(
        data_dir=data_dir, hot_capacity_bytes=HOT_CAPACITY, max_frame_bytes=MAX_FRAME_BYTES
    )


@contextmanager
def reopened_store(
    data_dir: Path, archive: S3Tier, keyring: MasterKeyProvider | None, *, start_mover: bool
) -> Iterator[Store]:
    store = Store(engine_settings(data_dir), archive, keyring, start_mover=start_mover)
    try:
        yield store
    finally:
        store.close()


def list_all(store: Store, dataset: str) -> dict[str, ShardInfo]:
    out: dict[str, ShardInfo] = {}
    start_after: str | None = None
    while True:
        page, start_after = store.list(dataset, start_after=start_after, limit=7)
        out.update((info.name, info) for info in page)
        if start_after is None:
            return out


def archive_keys(archive: S3Tier) -> set[str]:
    keys: set[str] = set()
    start_after: str | None = None
    while True:
        page = archive.list(start_after=start_after)
        keys.update(page.keys)
        start_after = page.next_start_after
        if start_after is None:
            return keys


def run_writer(
    round_no: int,
    rng: random.Random,
    workdir: Path,
    config: dict[str, object],
    *,
    startup_kill_every: int,
    most_acks: int = 30,
    most_delay_s: float = 0.02,
) -> tuple[Path, str]:
    """One writer life: start, wait for a random point, SIGKILL. Every
    ``startup_kill_every``-th round is killed at a random time up to 1 s after the
    start (often inside start-up); the others 1 to ``most_acks`` acknowledged
    operations in, plus up to ``most_delay_s``. Returns (ack file, how)."""
    ack_file = workdir / f"acks-{round_no:03d}.log"
    config_file = workdir / f"config-{round_no:03d}.json"
    stderr_file = workdir / f"stderr-{round_no:03d}.log"
    config = dict(
        config,
        ack_file=str(ack_file),
        seed=rng.randrange(2**32),
        first_op_id=(round_no + 1) * 1_000_000,
        max_ops=500,
    )
    config_file.write_text(json.dumps(config))
    if round_no % startup_kill_every == startup_kill_every - 1:
        how = f"after {rng.uniform(0.0, 1.0):.3f} s"
        target_acks, delay = None, float(how.split()[1])
    else:
        target_acks, delay = rng.randint(1, most_acks), rng.uniform(0.0, most_delay_s)
        how = f"{delay * 1000:.1f} ms after ack {target_acks}"
    with stderr_file.open("wb") as stderr:
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, str(WRITER), str(config_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            if target_acks is not None:
                deadline = started + ACK_DEADLINE_S
                while ack_count(ack_file) < target_acks:
                    assert child.poll() is None, "writer died before the kill"
                    assert time.monotonic() < deadline, f"writer did not reach {target_acks} acks"
                    time.sleep(POLL_S)
                kill_at = time.monotonic() + delay
            else:
                kill_at = started + delay
            while time.monotonic() < kill_at:
                assert child.poll() is None, "writer died before the kill"
                time.sleep(min(POLL_S, max(0.0, kill_at - time.monotonic())))
            assert child.poll() is None, "writer died before the kill"
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        except AssertionError as exc:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            raise AssertionError(
                f"round {round_no}: {exc} (exit status {child.returncode}); "
                f"writer stderr:\n{stderr_file.read_text()[-4000:]}"
            ) from exc
        finally:
            assert child.stdin is not None
            child.stdin.close()
    return ack_file, how


def check_store(
    store: Store,
    archive: S3Tier,
    expected: dict[Key, State],
    in_flight: Op | None,
    context: str,
) -> dict[Key, State]:
    """Check every shard against the model; returns the states found (resolving ``in_flight``).

    Raises AssertionError on anything but the acknowledged state, or for the one
    in-flight operation, its old or new state.
    """
    allowed: dict[Key, set[State]] = {key: {state} for key, state in expected.items()}
    if in_flight is not None:
        for key, state in effects(in_flight).items():
            allowed[key].add(state)
    datasets = {name for name, _ in store.list_datasets()}
    archived_keys = archive_keys(archive)
    found: dict[Key, State] = {}
    for dataset, encrypted in DATASETS.items():
        if dataset not in datasets:
            # Killed before the writer created it (nothing was ever begun in it), or
            # between deleting it and making it again.
            assert all(None in allowed[(dataset, name)] for name in NAMES), context
            found.update(((dataset, name), None) for name in NAMES)
            continue
        listed = list_all(store, dataset)
        assert set(listed) <= set(NAMES), f"{context}: unknown shards {set(listed) - set(NAMES)}"
        for name in NAMES:
            key = (dataset, name)
            info = listed.get(name)
            if info is None:
                try:
                    store.stat(dataset, name)
                except ShardNotFound:
                    pass
                else:
                    raise AssertionError(f"{context}: {key} not listed but stat() finds it")
                state: State = None
            else:
                data = store.get(dataset, name).to_bytes()
                matches = [
                    op
                    for op in allowed[key]
                    if op is not None and data == content(dataset, name, op)
                ]
                assert matches, (
                    f"{context}: {key} holds {len(data)} bytes matching none of the allowed "
                    f"states {allowed[key]} (generation {info.generation})"
                )
                state = matches[0]
                assert info.size == len(data), f"{context}: {key} listed size {info.size}"
                assert info.encrypted is encrypted, f"{context}: {key} encryption flag"
                assert sum(info.frame_sizes) == len(data)
                assert all(0 < size <= MAX_FRAME_BYTES for size in info.frame_sizes)
                assert info.hot or info.archived, f"{context}: {key} is in neither tier"
                if info.archived:
                    for archive_key in (
                        archive_manifest_key(dataset, info.generation),
                        archive_frames_key(dataset, info.generation),
                    ):
                        assert archive_key in archived_keys, (
                            f"{context}: {key} is marked archived but {archive_key} is missing"
                        )
            assert state in allowed[key], (
                f"{context}: {key} is {'absent' if state is None else f'op {state}'}, "
                f"allowed {allowed[key]}"
            )
            found[key] = state
    return found


def check_drained(
    store: Store, archive: S3Tier, expected: dict[Key, State], context: str
) -> dict[Key, ShardInfo]:
    """Drain the journal; then the archive must hold exactly the surviving generations.

    Returns the catalog's view of every surviving shard.
    """
    assert store.drain(DRAIN_TIMEOUT_S), f"{context}: journal did not drain: {store.stats()}"
    stats = store.stats()
    assert stats.journal_entries == 0 and stats.backlog_bytes == 0, f"{context}: {stats}"
    assert stats.mover_error is None and not stats.data_loss, f"{context}: {stats}"
    infos = {key: store.stat(*key) for key, state in expected.items() if state is not None}
    not_archived = [key for key, info in infos.items() if not info.archived]
    assert not not_archived, f"{context}: drained, yet not archived: {not_archived}"
    want = {archive_dataset_key(name) for name, _ in store.list_datasets()}
    for (dataset, _), info in infos.items():
        want.add(archive_manifest_key(dataset, info.generation))
        want.add(archive_frames_key(dataset, info.generation))
    have = archive_keys(archive)
    assert have == want, (
        f"{context}: archive objects differ from the surviving generations: "
        f"missing {sorted(want - have)}, left over {sorted(have - want)}"
    )
    for (dataset, name), info in infos.items():
        blob = archive.get(archive_manifest_key(dataset, info.generation))
        assert blob is not None
        manifest = ShardRecord.decode(blob)
        assert (manifest.dataset, manifest.name, manifest.generation) == (
            dataset,
            name,
            info.generation,
        ), f"{context}: manifest of {dataset}/{name}"
        assert manifest.frame_sizes == info.frame_sizes, f"{context}: manifest of {dataset}/{name}"
        assert (manifest.envelope is not None) is DATASETS[dataset]
    return infos


def check_hot_tier(store: Store, context: str) -> None:
    """LMDB holds exactly the frames of the hot records (a staged put or promotion the
    kill cut short left none behind), and the hot-bytes counter is their size."""
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual, f"{context}: hot_bytes counter {counter}, hot records {actual}"
    with store._env.read() as txn:  # one snapshot
        staged = store._catalog.staged(txn)
        frames, hot = frame_counts_in(store, txn), hot_record_frame_counts_in(store, txn)
    assert not staged, f"{context}: staging markers left after the open: {staged}"
    assert frames == hot, (
        f"{context}: LMDB frames differ from the hot records' (leaked or missing frames)"
    )
