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
import os
import random
import time
from pathlib import Path

from tests.engine.crash_harness import (
    HOT_CAPACITY,
    Key,
    State,
    check_drained,
    check_hot_tier,
    check_store,
    effects,
    list_all,
    new_state,
    parse_ack_file,
    reopened_store,
    run_writer,
)
from tests.engine.crash_writer import DATASETS, MAX_FRAME_BYTES, NAMES, content
from tierstore.crypto import LocalKeyring
from tierstore.engine.store import Store
from tierstore.tiers.s3 import S3Settings, S3Tier

ROUNDS = 40
#: Every STARTUP_KILL_EVERY-th round is killed at a random time after the start
#: (often inside start-up); the others some random number of acknowledged operations in.
STARTUP_KILL_EVERY = 4
#: Every LEAVE_JOURNAL_EVERY-th round this process does not drain the journal
#: after its checks, so the next writer resumes what its predecessor left.
LEAVE_JOURNAL_EVERY = 3


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
            ack_file, how = run_writer(
                round_no, rng, tmp_path, base_config, startup_kill_every=STARTUP_KILL_EVERY
            )
            ops = parse_ack_file(ack_file)
            context = f"seed {seed}, round {round_no} (killed {how})"
            for op in ops.acked:
                expected.update(effects(op))
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
                    _, _, dataset, name = ops.in_flight
                    after = new_state(ops.in_flight)
                    if found[(dataset, name)] == after != expected[(dataset, name)]:
                        in_flight_committed += 1
                    elif found[(dataset, name)] != after:
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
