"""Fixtures for the DataLoader tests: the real server of tests/server/conftest.py, and a
small sample dataset on it.

The server fixtures are imported, not copied: ``server`` (the session's ``tierstore serve``
with its embedded archive), ``admin`` (a client holding its admin token) and
``spawn_server`` (servers of a test's own, to stop, tamper with and restart).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.server.conftest import ServerProcess, admin, server, spawn_server  # noqa: F401
from tierstore.client.client import Client

#: A DataLoader worker that stops producing is a black box: every process forked from
#: this one (DataLoader workers included) inherits this handler, which writes the Python
#: stack of each of its threads to file descriptor 2 (the test's captured stderr) when
#: :func:`loader_batches` sends the signal to the workers of a loader that timed out.
STACKS_SIGNAL = signal.SIGUSR1
faulthandler.register(STACKS_SIGNAL, file=2, all_threads=True)


def loader_batches(loader: Iterable[Any]) -> list[Any]:
    """Every batch of ``loader``; if a DataLoader's ``timeout`` runs out, its workers'
    stacks are written to stderr before the error is raised, so a hang shows where."""
    iterator = iter(loader)
    try:
        return list(iterator)
    except RuntimeError as error:
        if "DataLoader timed out" in str(error):
            for worker in getattr(iterator, "_workers", []):
                if worker.is_alive() and worker.pid is not None:
                    os.kill(worker.pid, STACKS_SIGNAL)
        raise


#: Small frames, so every shard is several record batches (the multi-frame paths run).
FRAME_BYTES = 2048
#: Rows of each shard of the sample dataset (uneven on purpose; one shard is empty).
SHARD_ROWS = (40, 57, 0, 33, 61, 48)


def sample_table(shard: int, rows: int) -> pa.Table:
    """Rows whose ``id`` is unique across shards and whose other columns derive from it."""
    ids = np.arange(rows, dtype=np.int64) + shard * 1000
    x = (ids[:, None, None] * 10 + np.arange(6).reshape(1, 2, 3)).astype(np.float32)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 6)
    tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), [2, 3]), storage)
    return pa.table(
        {
            "id": ids,
            "x": tensor,
            "label": (ids % 7).astype(np.int32),
            "flag": pa.array(ids % 2 == 0),
        }
    )


@dataclass(frozen=True)
class Samples:
    """A dataset on a server, and how to reach it."""

    dataset: str
    shards: tuple[str, ...]
    rows: dict[str, int]
    address: str
    token: str
    ca: str

    @property
    def connection(self) -> dict[str, str]:
        return {"address": self.address, "token": self.token, "ca": self.ca}

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def write_samples(
    running: ServerProcess, client: Client, rows: tuple[int, ...] = SHARD_ROWS
) -> Samples:
    """A fresh dataset of ``len(rows)`` Arrow shards ``part-000``... of those row counts."""
    dataset = f"torch-{uuid.uuid4().hex[:12]}"
    client.create_dataset(dataset, encrypted=False)
    client.frame_bytes = FRAME_BYTES
    names = []
    for index, count in enumerate(rows):
        name = f"part-{index:03d}"
        client.put(dataset, name, sample_table(index, count))
        names.append(name)
    return Samples(
        dataset,
        tuple(names),
        dict(zip(names, rows, strict=True)),
        running.address,
        running.token,
        str(running.ca_path),
    )


@pytest.fixture(scope="session")
def samples(server: ServerProcess, admin: Client) -> Samples:  # noqa: F811
    """The sample dataset on the session server (read-only for the tests)."""
    return write_samples(server, admin)


@pytest.fixture
def restart_in_place() -> Iterator[object]:
    """``restart_in_place(server)``: start a stopped server again on its old ports, so
    clients made before the restart reach it again."""

    def restart(running: ServerProcess) -> None:
        running.start(same_ports=True)

    yield restart
