"""Nothing a node acknowledged is lost when it is killed outright, mid-stream.

The engine's crash test (tests/engine/test_crash.py) kills a process that calls the
engine. This one kills the real ``tierstore serve`` with SIGKILL while a client
streams puts to it over gRPC: puts of one frame and of several (the service spools
a put's frames before its commit), fresh shards, overwrites and deletes, in a
plaintext and an encrypted write-back dataset. After each restart every acknowledged
shard reads back byte-identical and every acknowledged delete stays deleted (the call
in flight at the kill may have landed or not), no other shard is listed, and at the
end the journal drains: every shard is archived. In write-through datasets, the hot
tier is lost too at each kill: the archive alone has what was acknowledged.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tierstore import errors

from .conftest import ServerProcess, poll

ROUNDS = 4
DATASETS = ("plain", "secret")
NAMES = tuple(f"s{i}" for i in range(12))  # few enough that overwrites are common
MAX_PUT_BYTES = 9 * 1024 * 1024  # up to three 4 MiB frames
DELETES = 0.15  # the share of calls that delete a shard


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@dataclass
class Ledger:
    """What the client was told: the digest each shard was last acknowledged with,
    and the put that was under way when the node died (its outcome unknown)."""

    acknowledged: dict[tuple[str, str], str | None] = field(default_factory=dict)  # None: deleted
    in_flight: tuple[tuple[str, str], str | None] | None = None
    acks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self, key: tuple[str, str]) -> set[str | None]:
        """The digests ``key`` may read back as (None: absent)."""
        allowed: set[str | None] = {self.acknowledged.get(key)}
        if self.in_flight is not None and self.in_flight[0] == key:
            allowed.add(self.in_flight[1])
        return allowed


def put_until_the_node_dies(node: ServerProcess, ledger: Ledger, rng: random.Random) -> None:
    """Put shards of random sizes and names, and now and then delete one, until a call
    fails (the node was killed)."""
    with node.connect() as client:
        while True:
            key = (rng.choice(DATASETS), rng.choice(NAMES))
            blob = None if rng.random() < DELETES else rng.randbytes(rng.randrange(MAX_PUT_BYTES))
            outcome = None if blob is None else digest(blob)
            with ledger.lock:
                ledger.in_flight = (key, outcome)
            try:
                if blob is None:
                    with contextlib.suppress(errors.ShardNotFound):
                        client.delete(*key)
                else:
                    client.put(*key, blob)
            except errors.TierstoreError:
                return  # the call in flight has an unknown outcome: it stays in flight
            with ledger.lock:
                ledger.acknowledged[key] = outcome
                ledger.in_flight = None
                ledger.acks += 1


def kill_mid_stream(node: ServerProcess, ledger: Ledger, rng: random.Random) -> None:
    """SIGKILL ``node`` at a random point of a client's stream of calls: a few
    acknowledged ones in, then part of the way into the next."""
    writer = threading.Thread(target=put_until_the_node_dies, args=(node, ledger, rng))
    writer.start()
    target = ledger.acks + rng.randrange(2, 8)
    poll(lambda: ledger.acks >= target or not writer.is_alive(), 120, "calls to be acknowledged")
    assert writer.is_alive(), f"the writer stopped on its own:\n{node}"
    time.sleep(rng.uniform(0, 0.3))
    node.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    node.process.wait()  # type: ignore[union-attr]
    writer.join(60)
    assert not writer.is_alive()


def check_every_acknowledged_shard(node: ServerProcess, ledger: Ledger) -> None:
    """Every shard reads back (or is absent) as the ledger allows, and no shard it never
    put is listed; then the ledger takes the call in flight as landed or not."""
    with node.connect() as client:
        for dataset in DATASETS:
            listed = {info.name for info in client.list(dataset)}
            for name in NAMES:
                key = (dataset, name)
                allowed = ledger.allowed(key)
                if name in listed:
                    got: str | None = digest(client.get(dataset, name).to_pybytes())
                else:
                    got = None
                assert got in allowed, f"{dataset}/{name} is not what the acknowledged calls left"
            assert listed <= set(NAMES)
    if ledger.in_flight is not None:
        key, landed = ledger.in_flight
        with node.connect() as client:
            names = {info.name for info in client.list(key[0])}
            now = digest(client.get(*key).to_pybytes()) if key[1] in names else None
            if now == landed:
                ledger.acknowledged[key] = landed
        ledger.in_flight = None


def node_with_datasets(node: ServerProcess, durability: str) -> ServerProcess:
    """``node``, once it holds the test's datasets (plaintext and encrypted) of ``durability``."""
    with node.connect() as admin:
        admin.create_dataset("plain", encrypted=False, durability=durability)
        admin.create_dataset("secret", encrypted=True, durability=durability)
    return node


@pytest.mark.timeout(400)
def test_a_node_killed_mid_stream_loses_no_acknowledged_put_or_delete(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Write-back: acknowledged once committed here, before the archive has it.
    rng = random.Random(20261205)
    data_dir = tmp_path / "node"
    node = node_with_datasets(spawn_server(data_dir), "write-back")
    ledger = Ledger()
    for round_number in range(ROUNDS):
        kill_mid_stream(node, ledger, random.Random(rng.random()))
        node = spawn_server(data_dir)
        check_every_acknowledged_shard(node, ledger)
        assert ledger.acknowledged, f"round {round_number}: nothing was acknowledged"

    with node.connect() as client:
        for (dataset, name), outcome in ledger.acknowledged.items():
            if outcome is None:
                continue
            poll(
                lambda: client.stat(dataset, name).archived,  # noqa: B023
                60,
                f"{dataset}/{name} to reach the archive",
                interval_s=0.1,
            )


@pytest.mark.timeout(400)
def test_what_write_through_acknowledged_outlives_the_node_and_its_hot_tier(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Write-through acknowledges once the archive holds the put (or has deleted the
    # shard): killed mid-stream and with its hot tier lost before the journal could
    # catch up, the node rebuilt from the archive alone has every acknowledged shard
    # at its acknowledged bytes, and no acknowledged delete comes back.
    rng = random.Random(51202026)
    data_dir = tmp_path / "node"
    node = node_with_datasets(spawn_server(data_dir), "write-through")
    ledger = Ledger()
    for round_number in range(ROUNDS):
        kill_mid_stream(node, ledger, random.Random(rng.random()))
        shutil.rmtree(data_dir / "hot")  # the NVMe device is gone; keys, tokens, TLS remain
        node = spawn_server(data_dir, "--rebuild-from-archive")
        check_every_acknowledged_shard(node, ledger)
        assert ledger.acknowledged, f"round {round_number}: nothing was acknowledged"
