"""Crash safety beyond write-back puts: the writer process (``crash_writer.py``) is
killed with SIGKILL while it does other work, and the store it leaves is checked.

Each test runs ``ROUNDS`` writer lives (fewer than ``test_crash.py``: the
operations here are slower or rarer than puts, and each round also drains the
journal and, where it matters, rebuilds a catalog from the archive), each killed at
a random point: during start-up every third round, else some random number of
acknowledged operations in plus a few milliseconds. After each kill this process
reopens the store with its mover stopped and checks, as ``test_crash.py`` does, that
every acknowledged put and delete holds, that the one operation in flight shows its
old or its new state, that every listed shard reads whole and verified, that a shard
is in one tier at least, and that the hot tier holds exactly the hot records'
frames. Then it starts the mover, the journal must drain, and the archive must then
hold exactly the surviving generations.

Besides puts and deletes, the writer sometimes deletes a whole dataset and makes it
again (write-through and cache).

- **write-through**: both datasets are write-through. Right after each kill, before
  the node's own hot tier is reopened, a catalog rebuilt from the archive alone must
  hold every acknowledged put and none of the acknowledged deletes: write-through
  acknowledges only what the archive holds.
- **cache**: overwrites and deletes among evictions, whole and ranged cold reads
  (cache fills and promotions, staged a frame per transaction) and prefetches; the
  writer checks every read's bytes itself.
- **keys**: master-key rotations (the key file rotated, then the store) and
  retirements of the oldest key among puts, deletes, evictions and cold reads. The
  node reopens with the key file as the kill left it; once its start has resumed a
  rotation the kill cut short and the journal is drained, every key but the current
  one must be retirable, and a catalog rebuilt from the archive with the keys of the
  file alone must read every shard back.

Set ``TIERSTORE_CRASH_SEED`` to replay a run (the seed is printed).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import pytest

from tests.engine.crash_harness import (
    DRAIN_TIMEOUT_S,
    HOT_CAPACITY,
    Key,
    Op,
    State,
    check_drained,
    check_hot_tier,
    check_store,
    effects,
    engine_settings,
    parse_ack_file,
    reopened_store,
    run_writer,
)
from tests.engine.crash_writer import DATASETS, MAX_FRAME_BYTES, NAMES
from tierstore.crypto import LocalKeyring
from tierstore.engine.store import Store
from tierstore.errors import KeyRotationRefused
from tierstore.tiers.s3 import S3Settings, S3Tier

ROUNDS = 10
STARTUP_KILL_EVERY = 3


def check_rebuilt(
    tmp_path: Path,
    archive: S3Tier,
    keyring: LocalKeyring,
    expected: dict[Key, State],
    in_flight: Op | None,
    context: str,
) -> None:
    """A catalog rebuilt from the archive alone (in a data directory of its own, its
    mover stopped) holds ``expected``, or for ``in_flight`` its old or new state."""
    data_dir = tmp_path / f"rebuilt-{time.monotonic_ns()}"
    with Store(engine_settings(data_dir), archive, keyring, start_mover=False) as rebuilt:
        rebuilt.rebuild_from_archive()
        check_store(rebuilt, archive, expected, in_flight, f"{context}, rebuilt from the archive")


def check_old_keys_retirable(store: Store, keyring: LocalKeyring, context: str) -> None:
    """Once the start has resumed a rotation the kill cut short and the mover has
    resealed the archive, no key but the current one is needed any more."""
    old = sorted(set(keyring.keys) - {keyring.current})
    refusals: dict[str, str] = {}

    def retirable() -> bool:
        store.drain(DRAIN_TIMEOUT_S)  # the resumed rotation's reseals
        refusals.clear()
        for key_id in old:
            left = {name: key for name, key in keyring.keys.items() if name != key_id}
            try:
                store.check_key_retirement(key_id, LocalKeyring(left, keyring.current))
            except KeyRotationRefused as exc:
                refusals[key_id] = str(exc)
        return not refusals

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not retirable():
        assert time.monotonic() < deadline, f"{context}: old keys still needed: {refusals}"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["write-through", "cache", "keys"])
def test_sigkill_loses_nothing_acknowledged(
    mode: str, tmp_path: Path, s3_settings: S3Settings
) -> None:
    seed = int(os.environ.get("TIERSTORE_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed: TIERSTORE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    key_file = tmp_path / "master-key.json"
    LocalKeyring.generate_file(key_file)
    data_dir = tmp_path / "node"
    base_config: dict[str, object] = {
        "mode": mode,
        "s3": dataclasses.asdict(s3_settings),
        "key_file": str(key_file),
        "data_dir": str(data_dir),
        "hot_capacity_bytes": HOT_CAPACITY,
        # Puts and promotions of more than one frame are staged a frame per
        # transaction: kills land between their chunks too.
        "put_chunk_bytes": MAX_FRAME_BYTES,
        "promotion_chunk_bytes": MAX_FRAME_BYTES,
    }
    archive = S3Tier(s3_settings)
    expected: dict[Key, State] = {(ds, name): None for ds in DATASETS for name in NAMES}
    working_rounds = 0
    started = time.monotonic()
    try:
        for round_no in range(ROUNDS):
            config = dict(
                base_config,
                expected={f"{ds}/{name}": op for (ds, name), op in expected.items() if op},
            )
            ack_file, how = run_writer(
                round_no,
                rng,
                tmp_path,
                config,
                startup_kill_every=STARTUP_KILL_EVERY,
                most_acks=20,
                most_delay_s=0.05,
            )
            ops = parse_ack_file(ack_file)
            context = f"{mode}, seed {seed}, round {round_no} (killed {how})"
            for op in ops.acked:
                expected.update(effects(op))
            working_rounds += bool(ops.acked)
            if not data_dir.exists():
                assert not ops.acked and ops.in_flight is None, context
                continue
            keyring = LocalKeyring.from_file(key_file)
            if mode == "write-through":
                check_rebuilt(tmp_path, archive, keyring, expected, ops.in_flight, context)
            with reopened_store(data_dir, archive, keyring, start_mover=False) as store:
                failure = store.master_key_failure()
                assert failure is None, f"{context}: {failure}"
                expected = check_store(store, archive, expected, ops.in_flight, context)
                check_hot_tier(store, context)
                store.start_background()
                check_drained(store, archive, expected, context)
                if mode == "keys":
                    check_old_keys_retirable(store, keyring, context)
            if mode == "keys":
                check_rebuilt(tmp_path, archive, keyring, expected, None, context)
        print(
            f"{mode}: {ROUNDS} kills ({working_rounds} after some work) in "
            f"{time.monotonic() - started:.1f} s"
        )
        assert working_rounds >= ROUNDS // 2, f"only {working_rounds} kills after some work"
    finally:
        archive.close()
