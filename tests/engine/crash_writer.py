"""Child process of the crash test (``tests/engine/test_crash.py``); killed with SIGKILL.

Run as ``python tests/engine/crash_writer.py CONFIG.json``. It opens a
:class:`~tierstore.engine.store.Store` over the S3 archive named in the config,
creates the test's datasets if missing, then writes, overwrites and deletes
shards in ``write-back`` mode until it is killed (or, past ``max_ops``, blocks
on stdin until its parent goes away).

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

#: The datasets the crash test writes to: name -> encrypted?
DATASETS = {"plain": False, "enc": True}
#: Shard names (a small pool, so that overwrites and deletes are frequent).
NAMES = tuple(f"dir{i % 3}/shard-{i:02d}.bin" for i in range(10))
#: Frame size of the store under test: most shards span several frames.
MAX_FRAME_BYTES = 64 * 1024


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


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    # Heavy imports after the config is read: a kill may land anywhere in start-up.
    from tierstore.config import EngineSettings
    from tierstore.crypto import LocalKeyring
    from tierstore.engine.store import Store
    from tierstore.tiers.s3 import S3Settings, S3Tier
    from tierstore.types import DatasetSettings, Durability

    archive = S3Tier(S3Settings(**config["s3"]))
    keyring = LocalKeyring.from_file(Path(config["key_file"]))
    settings = EngineSettings(
        data_dir=Path(config["data_dir"]),
        hot_capacity_bytes=config["hot_capacity_bytes"],
        max_frame_bytes=MAX_FRAME_BYTES,
        put_chunk_bytes=config.get("put_chunk_bytes", 64 << 20),
        mover_retry_initial_s=0.05,
        mover_retry_max_s=0.5,
    )
    rng = random.Random(config["seed"])
    op_id = config["first_op_id"]
    acks = open(config["ack_file"], "a", buffering=1)  # noqa: SIM115 - lives until the kill
    store = Store(settings, archive, keyring)
    existing = {name for name, _ in store.list_datasets()}
    for dataset, encrypted in DATASETS.items():
        if dataset not in existing:
            store.create_dataset(
                dataset, DatasetSettings(encrypted=encrypted, durability=Durability.WRITE_BACK)
            )
    live: dict[str, set[str]] = {}
    for dataset in DATASETS:
        page, _ = store.list(dataset, limit=len(NAMES) + 1)
        live[dataset] = {info.name for info in page}

    for _ in range(config["max_ops"]):
        dataset = rng.choice(sorted(DATASETS))
        name = rng.choice(NAMES)
        kind = "D" if name in live[dataset] and rng.random() < 0.25 else "P"
        acks.write(f"B {op_id} {kind} {dataset} {name}\n")
        acks.flush()
        if kind == "P":
            store.put(dataset, name, content(dataset, name, op_id))
            live[dataset].add(name)
        else:
            store.delete(dataset, name)
            live[dataset].discard(name)
        acks.write(f"A {op_id}\n")
        acks.flush()
        os.fsync(acks.fileno())
        op_id += 1
    # Out of work before the kill came: wait for it (or for the parent to go away).
    sys.stdin.read()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1])
