"""A client used in a parent process keeps working in forked children (DataLoader workers).

DESIGN.md section 5: a channel inherited through ``fork()`` must never be used, and a
fresh channel in a child failed now and then on this machine type, so the fork is
repeated many times: each round forks 4 workers (the ``fork`` start method) that read
concurrently through the parent's client object, while the parent keeps using it too.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os

import pytest

from tierstore.client.client import Client

from .conftest import ServerProcess

ROUNDS = 6
WORKERS = 4
SHARDS = 8

#: The client the workers inherit through fork (never pickled: that would hide the bug).
_INHERITED: Client | None = None
_DATASET = ""


def _digests(worker: int) -> tuple[int, dict[str, str]]:
    assert _INHERITED is not None
    out = {}
    for i in range(SHARDS):
        name = f"s{(i + worker) % SHARDS}"  # every worker in its own order
        data = _INHERITED.get(_DATASET, name)
        out[name] = hashlib.sha256(memoryview(data)).hexdigest()
    table = _INHERITED.read_table(_DATASET, "table")
    out["table"] = hashlib.sha256(table.column("x").to_numpy().tobytes()).hexdigest()
    return os.getpid(), out


@pytest.mark.timeout(120)
def test_client_survives_many_forks(server: ServerProcess, any_dataset: str) -> None:
    global _INHERITED, _DATASET
    import pyarrow as pa

    client = server.connect()
    blobs = {f"s{i}": os.urandom(300_000 + i) for i in range(SHARDS)}
    for name, blob in blobs.items():
        client.put(any_dataset, name, blob)
    client.put(any_dataset, "table", pa.table({"x": list(range(10_000))}))
    expected = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    expected["table"] = hashlib.sha256(
        pa.array(range(10_000), pa.int64()).to_numpy().tobytes()
    ).hexdigest()
    _INHERITED, _DATASET = client, any_dataset
    # The parent has an open channel (and grpc threads) before every fork.
    assert _digests(0)[1] == expected
    context = multiprocessing.get_context("fork")
    children: set[int] = set()
    try:
        for round_ in range(ROUNDS):
            with context.Pool(WORKERS) as pool:
                pending = pool.map_async(_digests, range(WORKERS))
                # The parent reads while its children do.
                assert client.get(any_dataset, "s0").to_pybytes() == blobs["s0"]
                results = pending.get(timeout=60)
            for pid, digests in results:
                assert pid != os.getpid()
                assert digests == expected, f"round {round_}: a worker read other bytes"
                children.add(pid)
            assert _digests(0)[1] == expected  # and after they are gone
    finally:
        _INHERITED = None
    assert len(children) >= ROUNDS  # fresh processes every round
    client.close()
