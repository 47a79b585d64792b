"""Crash safety of write-back: a writer process is killed with SIGKILL, over and over.

Each round starts ``crash_writer.py`` (a real Store over the session's SeaweedFS
archive, two write-back datasets, one of them encrypted), lets it put,
overwrite and delete multi-frame shards, and kills it with SIGKILL at a random
point: during start-up, or some random number of acknowledged operations in
plus a random few milliseconds. Then this process reopens the store (its mover
stopped, so the journal is seen as the crash left it) and checks:

- every acknowledged operation holds: the shard reads back byte-identical to
  the last acknowledged put, and deleted shards are gone;
- the one operation in flight at the kill (begun, not acknowledged) shows
  either its old or its new state, nothing else;
- nothing partial is visible: every listed shard reads whole, verified, with
  the listed size, and every shard the catalog calls archived is in the archive;
- the hot tier holds exactly the hot shards' frames, and the hot-bytes counter
  their size: puts of more than one frame are staged a chunk per transaction, so
  kills land between a put's chunks too, and the open drops what they staged.

Then it starts the mover on the journal the kill left. In two rounds of three
the journal must drain and the archive must then hold exactly the surviving
generations (manifest + frames, manifests matching the catalog, nothing left
over); in the third the mover is stopped again at once, so the next writer
resumes what its predecessor left. One archived shard per round is evicted and
read back cold, so later rounds also overwrite and delete shards that live only
in the archive. At the end the journal must drain once more and every shard,
evicted, must read back byte-identical from the archive alone.

Set ``TIERSTORE_CRASH_SEED`` to replay a run (the seed is printed).
"""

from __future__ import annotations

import dataclasses
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
from tests.engine.crash_writer import DATASETS, MAX_FRAME_BYTES, NAMES, content
from tierstore.config import EngineSettings
from tierstore.crypto import LocalKeyring
from tierstore.engine.records import (
    ShardRecord,
    archive_dataset_key,
    archive_frames_key,
    archive_manifest_key,
)
from tierstore.engine.store import Store
from tierstore.errors import ShardNotFound
from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.types import ShardInfo

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 40
#: Every STARTUP_KILL_EVERY-th round is killed at a random time after the start
#: (often inside start-up); the others some random number of acks in.
STARTUP_KILL_EVERY = 4
HOT_CAPACITY = 256 << 20
ACK_DEADLINE_S = 30.0
DRAIN_TIMEOUT_S = 60.0
#: Every LEAVE_JOURNAL_EVERY-th round this process does not drain the journal
#: after its checks, so the next writer resumes what its predecessor left.
LEAVE_JOURNAL_EVERY = 3
POLL_S = 0.002

Key = tuple[str, str]  # (dataset, shard name)
State = int | None  # op id of the put whose bytes the shard holds; None: absent


@dataclass
class Ops:
    """What the writer logged in one round."""

    acked: list[tuple[int, str, str, str]] = field(default_factory=list)  # op, kind, ds, name
    in_flight: tuple[int, str, str, str] | None = None


def parse_ack_file(path: Path) -> Ops:
    """Complete lines only: a kill may cut the last line short."""
    ops = Ops()
    begun: tuple[int, str, str, str] | None = None
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
            ops.acked.append(begun)
            begun = None
    ops.in_flight = begun
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
    data_dir: Path, archive: S3Tier, keyring: LocalKeyring, *, start_mover: bool
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
    round_no: int, rng: random.Random, workdir: Path, base_config: dict[str, object]
) -> tuple[Path, str]:
    """One writer life: start, wait for a random point, SIGKILL. Returns (ack file, how)."""
    ack_file = workdir / f"acks-{round_no:03d}.log"
    config_file = workdir / f"config-{round_no:03d}.json"
    stderr_file = workdir / f"stderr-{round_no:03d}.log"
    config = dict(
        base_config,
        ack_file=str(ack_file),
        seed=rng.randrange(2**32),
        first_op_id=(round_no + 1) * 1_000_000,
        max_ops=500,
    )
    config_file.write_text(json.dumps(config))
    if round_no % STARTUP_KILL_EVERY == STARTUP_KILL_EVERY - 1:
        how = f"after {rng.uniform(0.0, 1.0):.3f} s"
        target_acks, delay = None, float(how.split()[1])
    else:
        target_acks, delay = rng.randint(1, 30), rng.uniform(0.0, 0.02)
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
    in_flight: tuple[int, str, str, str] | None,
    context: str,
) -> dict[Key, State]:
    """Check every shard against the model; returns the states found (resolving ``in_flight``).

    Raises AssertionError on anything but the acknowledged state, or for the one
    in-flight operation, its old or new state.
    """
    allowed: dict[Key, set[State]] = {key: {state} for key, state in expected.items()}
    if in_flight is not None:
        op_id, kind, dataset, name = in_flight
        allowed[(dataset, name)].add(op_id if kind == "P" else None)
    datasets = {name for name, _ in store.list_datasets()}
    archived_keys = archive_keys(archive)
    found: dict[Key, State] = {}
    for dataset, encrypted in DATASETS.items():
        if dataset not in datasets:
            # Killed before the writer created it: then nothing was ever begun in it.
            assert all(allowed[(dataset, name)] == {None} for name in NAMES), context
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
    """LMDB holds exactly the frames of the hot records (a staged put the kill cut short
    left none behind), and the hot-bytes counter is their stored size."""
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual, f"{context}: hot_bytes counter {counter}, hot records {actual}"
    with store._env.read() as txn:  # one snapshot
        staged = store._catalog.staged(txn)
        frames, hot = frame_counts_in(store, txn), hot_record_frame_counts_in(store, txn)
    assert not staged, f"{context}: staging markers left after the open: {staged}"
    assert frames == hot, (
        f"{context}: LMDB frames differ from the hot records' (leaked or missing frames)"
    )


def evict_and_read_cold(store: Store, dataset: str, name: str, op_id: int, context: str) -> None:
    freed = store.evict(dataset, name)
    assert freed > 0, f"{context}: evicting archived hot {dataset}/{name} freed nothing"
    data = store.get(dataset, name)
    assert data.source == "archive", f"{context}: {dataset}/{name} read from {data.source}"
    assert data.to_bytes() == content(dataset, name, op_id), f"{context}: cold read differs"


def test_sigkill_write_back_loses_nothing_acknowledged(
    tmp_path: Path, s3_settings: S3Settings
) -> None:
    seed = int(os.environ.get("TIERSTORE_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed: TIERSTORE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    key_file = tmp_path / "master-key.json"
    keyring = LocalKeyring.generate_file(key_file)
    data_dir = tmp_path / "node"
    base_config: dict[str, object] = {
        "s3": dataclasses.asdict(s3_settings),
        "key_file": str(key_file),
        "data_dir": str(data_dir),
        "hot_capacity_bytes": HOT_CAPACITY,
        # Puts of more than one frame's payload are staged a chunk per transaction:
        # kills land between a staged put's chunks too.
        "put_chunk_bytes": MAX_FRAME_BYTES,
    }
    archive = S3Tier(s3_settings)
    expected: dict[Key, State] = {(ds, name): None for ds in DATASETS for name in NAMES}
    resumed_rounds = 0  # rounds whose reopened store had journal entries left
    working_rounds = 0  # rounds killed after at least one acknowledged operation
    in_flight_committed = in_flight_lost = acked_total = 0
    started = time.monotonic()
    try:
        for round_no in range(ROUNDS):
            ack_file, how = run_writer(round_no, rng, tmp_path, base_config)
            ops = parse_ack_file(ack_file)
            context = f"seed {seed}, round {round_no} (killed {how})"
            for op_id, kind, dataset, name in ops.acked:
                expected[(dataset, name)] = op_id if kind == "P" else None
            acked_total += len(ops.acked)
            working_rounds += bool(ops.acked)
            if not data_dir.exists():
                assert not ops.acked and ops.in_flight is None, context
                continue
            # The mover stays stopped until the checks are done: they see the
            # store exactly as the kill left it.
            with reopened_store(data_dir, archive, keyring, start_mover=False) as store:
                if store.stats().journal_entries > 0:
                    resumed_rounds += 1
                found = check_store(store, archive, expected, ops.in_flight, context)
                check_hot_tier(store, context)
                if ops.in_flight is not None:
                    op_id, kind, dataset, name = ops.in_flight
                    new_state = op_id if kind == "P" else None
                    if found[(dataset, name)] == new_state != expected[(dataset, name)]:
                        in_flight_committed += 1
                    elif found[(dataset, name)] != new_state:
                        in_flight_lost += 1
                expected = found
                store.mover.start()  # resume the journal the kill left
                if round_no % LEAVE_JOURNAL_EVERY != LEAVE_JOURNAL_EVERY - 1:
                    check_drained(store, archive, expected, context)
                # Move one archived shard to the archive only: later rounds then
                # overwrite and delete cold shards too.
                datasets = {name for name, _ in store.list_datasets()}
                cold_candidates = sorted(
                    (ds, info.name)
                    for ds in DATASETS
                    if ds in datasets
                    for info in list_all(store, ds).values()
                    if info.archived and info.hot
                )
                if cold_candidates:
                    dataset, name = rng.choice(cold_candidates)
                    state = expected[(dataset, name)]
                    assert state is not None
                    evict_and_read_cold(store, dataset, name, state, context)

        print(
            f"{ROUNDS} kills ({working_rounds} after some work) in "
            f"{time.monotonic() - started:.1f} s: {acked_total} acked ops, "
            f"journal left on reopen in {resumed_rounds} rounds, in-flight op committed "
            f"{in_flight_committed} / not committed {in_flight_lost} times"
        )
        assert working_rounds >= 20, f"only {working_rounds} kills landed after some work"
        assert resumed_rounds > 0, "no kill left upload-journal entries: the resume is untested"

        # The journal drains, and the archive alone holds every surviving shard.
        context = f"seed {seed}, after the last kill"
        with reopened_store(data_dir, archive, keyring, start_mover=True) as store:
            expected = check_store(store, archive, expected, None, context)
            survivors = {key: op for key, op in expected.items() if op is not None}
            assert survivors, "every shard ended up deleted; nothing left to check"
            check_drained(store, archive, expected, context)
            for dataset, name in survivors:
                store.evict(dataset, name)
            assert store.stats().hot_bytes == 0, f"{context}: {store.stats()}"
            for (dataset, name), op_id in survivors.items():
                data = store.get(dataset, name)
                assert data.source == "archive", f"{context}: {dataset}/{name} {data.source}"
                assert data.to_bytes() == content(dataset, name, op_id), (
                    f"{context}: cold read of {dataset}/{name} differs"
                )
    finally:
        archive.close()
