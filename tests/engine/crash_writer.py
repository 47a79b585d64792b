"""Child process of the crash tests (``tests/engine/test_crash.py``,
``test_crash_ops.py``); killed with SIGKILL.

Run as ``python tests/engine/crash_writer.py CONFIG.json``. It opens a
:class:`~tierstore.engine.store.Store` over the S3 archive named in the config,
creates the test's datasets if missing, then works on shards until it is killed
(or, past ``max_ops``, blocks on stdin until its parent goes away). What it does is
the config's ``mode`` (see :func:`choose`): ``write-back`` (the default) and
``write-through`` write, overwrite and delete shards in datasets of that
durability; ``cache`` also evicts, reads (whole and ranged: cache fills and
promotions) and prefetches; ``keys`` also rotates the master key file and the
store, and retires the oldest key. Every read's bytes are checked against what the
shard must hold (the config's ``expected``, then the writer's own puts): a
mismatch ends the writer before the kill, which fails the test.

Every operation is logged to the ack file twice: a ``B`` (begin) line before
the call and an ``A`` (ack) line after it returned. Both are flushed; the ack
is also fsynced. The parent reads that file after the kill: an operation with
an ``A`` line is acknowledged and must survive; one with only a ``B`` line was
in flight and may or may not have committed.

Shard contents are a pure function of (dataset, name, operation id), see
:func:`content`, so the parent can recompute what every shard must hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

#: The datasets the crash test writes to: name -> encrypted?
DATASETS = {"plain": False, "enc": True}
#: Shard names (a small pool, so that overwrites and deletes are frequent).
NAMES = tuple(f"dir{i % 3}/shard-{i:02d}.bin" for i in range(10))
#: Frame size of the store under test: most shards span several frames.
MAX_FRAME_BYTES = 64 * 1024
#: Operations that change a shard's bytes: put (P), delete (D), and delete the shard's
#: whole dataset and make it again (X). The others: evict (E), read (R), prefetch (F),
#: rotate the master key (K), retire the oldest key (T).
STATE_KINDS = ("P", "D", "X")


def _seed(dataset: str, name: str, op_id: int) -> int:
    digest = hashlib.blake2b(f"{dataset}\x00{name}\x00{op_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def content(dataset: str, name: str, op_id: int) -> bytes:
    """The bytes operation ``op_id`` writes to ``dataset/name`` (1 byte to about 5 frames)."""
    rng = random.Random(_seed(dataset, name, op_id))
    choice = rng.random()
    if choice < 0.2:
        size = rng.randint(1, 300)  # one small frame
    elif choice < 0.4:
        size = rng.randint(1, 4) * MAX_FRAME_BYTES + rng.choice((-1, 0, 1))  # frame edges
    else:
        size = rng.randint(MAX_FRAME_BYTES // 2, 5 * MAX_FRAME_BYTES)
    return rng.randbytes(size)


def choose(rng: random.Random, mode: str, live: bool) -> str:
    """The kind of the next operation on a shard (``live``: it exists) in ``mode``."""
    if mode in ("write-through", "cache") and rng.random() < 0.04:
        return "X"
    draw = rng.random()
    if not live:
        return "K" if mode == "keys" and draw < 0.15 else "P"
    if mode == "cache":  # mostly reads and evictions: promotions, cache fills
        kinds = ((0.15, "P"), (0.22, "D"), (0.5, "E"), (0.8, "R"), (1.0, "F"))
    elif mode == "keys":  # rotations and retirements among writes and cold reads
        kinds = ((0.12, "K"), (0.2, "T"), (0.45, "P"), (0.55, "D"), (0.75, "E"), (1.0, "R"))
    else:
        kinds = ((0.25, "D"), (1.0, "P"))
    return next(kind for bound, kind in kinds if draw < bound)


def retire_oldest(store: Any, keyring: Any, key_file: Path) -> Any:
    """Retire ``keyring``'s oldest key once the mover has resealed the archive, as
    `tierstore keys retire` does; returns the keyring in use after it."""
    from tierstore.errors import KeyRotationRefused

    store.drain(30.0)
    old = set(keyring.keys) - {keyring.current}
    if not old:
        return keyring
    oldest = min(old, key=lambda key_id: int(key_id[1:]))
    try:
        left = keyring.retired_file(
            key_file, oldest, lambda left: store.check_key_retirement(oldest, left)
        )
    except KeyRotationRefused:
        return keyring  # still needed (a rotation's reseal on the journal, say)
    store.use_retired_keys(oldest, left)
    return left


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    # Heavy imports after the config is read: a kill may land anywhere in start-up.
    from tierstore.config import EngineSettings
    from tierstore.crypto import LocalKeyring
    from tierstore.engine.store import Store
    from tierstore.tiers.s3 import S3Settings, S3Tier
    from tierstore.types import DatasetSettings, Durability

    mode = config.get("mode", "write-back")
    archive = S3Tier(S3Settings(**config["s3"]))
    key_file = Path(config["key_file"])
    keyring = LocalKeyring.from_file(key_file)
    settings = EngineSettings(
        data_dir=Path(config["data_dir"]),
        hot_capacity_bytes=config["hot_capacity_bytes"],
        max_frame_bytes=MAX_FRAME_BYTES,
        put_chunk_bytes=config.get("put_chunk_bytes", 64 << 20),
        promotion_chunk_bytes=config.get("promotion_chunk_bytes", 64 << 20),
        mover_retry_initial_s=0.05,
        mover_retry_max_s=0.5,
    )
    durability = Durability.WRITE_THROUGH if mode == "write-through" else Durability.WRITE_BACK
    rng = random.Random(config["seed"])
    op_id = config["first_op_id"]
    acks = open(config["ack_file"], "a", buffering=1)  # noqa: SIM115 - lives until the kill
    store = Store(settings, archive, keyring)
    existing = {name for name, _ in store.list_datasets()}
    for dataset, encrypted in DATASETS.items():
        if dataset not in existing:
            store.create_dataset(
                dataset, DatasetSettings(encrypted=encrypted, durability=durability)
            )
    # What each shard holds (the op id of its put), as the parent last found it.
    holds: dict[tuple[str, str], int] = {}
    for key, held in config.get("expected", {}).items():
        dataset, name = key.split("/", 1)
        holds[(dataset, name)] = held

    for _ in range(config["max_ops"]):
        dataset = rng.choice(sorted(DATASETS))
        name = rng.choice(NAMES)
        kind = choose(rng, mode, (dataset, name) in holds)
        where = "- -" if kind in "KT" else f"{dataset} {'-' if kind == 'X' else name}"
        acks.write(f"B {op_id} {kind} {where}\n")
        acks.flush()
        if kind == "P":
            store.put(dataset, name, content(dataset, name, op_id))
            holds[(dataset, name)] = op_id
        elif kind == "D":
            store.delete(dataset, name)
            del holds[(dataset, name)]
        elif kind == "X":
            store.delete_dataset(dataset, force=True)
            store.create_dataset(
                dataset, DatasetSettings(encrypted=DATASETS[dataset], durability=durability)
            )
            holds = {key: held for key, held in holds.items() if key[0] != dataset}
        elif kind == "E":
            store.evict(dataset, name)
        elif kind == "F":
            store.prefetch(dataset, [name])
        elif kind == "R":
            # A whole cold read fills the cache; a ranged one queues a promotion.
            want = content(dataset, name, holds[(dataset, name)])
            if rng.random() < 0.5:
                got = store.get(dataset, name).to_bytes()
            else:
                offset = rng.randrange(len(want))
                got = store.get(dataset, name, byte_range=(offset, 1)).to_bytes()
                want = want[offset : offset + 1]
            if got != want:
                raise AssertionError(f"{dataset}/{name} read back other bytes")
        elif kind == "K":  # as `tierstore keys rotate` does
            keyring = keyring.rotated_file(key_file, store.check_keyring)
            store.rotate_master_key(keyring)
        else:  # "T"
            keyring = retire_oldest(store, keyring, key_file)
        acks.write(f"A {op_id}\n")
        acks.flush()
        os.fsync(acks.fileno())
        op_id += 1
    # Out of work before the kill came: wait for it (or for the parent to go away).
    sys.stdin.read()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1])
