"""Data keys of local reads end with their grant, end to end (tierstore/client/keycache.py
as the read path in tierstore/client/local.py uses it).

A real ``tierstore serve`` process grants local reads and data keys; the tests look at
the key a client caches (a backdoor into its cache) and check that it is zeroed once
the grant runs out — without the client reading that dataset again — and once a newer
generation of the shard has been read.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

import pytest

from tests.client.test_local_reads import reader_client, short_grants
from tests.server.conftest import ServerProcess, poll, unique
from tierstore.client import keycache
from tierstore.client.client import Client
from tierstore.types import Grant, Role

pytestmark = pytest.mark.skipif(
    not keycache._CIPHER_HAS_ITS_OWN_KEY,
    reason="this cryptography build reads the key buffer at every use, so the cipher "
    "holds a copy the cache cannot zero",
)

#: The grant lifetime of ``short_grants`` servers, in seconds.
TTL_S = 1.0


def cached_key(client: Client, dataset: str, shard: str, generation: int) -> bytearray:
    """The buffer of the key the client caches for a generation (the one it zeroes)."""
    cipher = cast(Any, client)._local._keys.get(dataset, shard, generation)
    assert cipher is not None, f"no key cached for {dataset}/{shard} generation {generation}"
    return cast(bytearray, cipher.key)


def cached_count(client: Client) -> int:
    return len(cast(Any, client)._local._keys)


def zeroed(key: bytearray) -> bool:
    return not any(key)


def test_keys_are_zeroed_when_the_grant_runs_out_without_another_read(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = short_grants(spawn_server)
    admin = server.connect(local_reads=False)
    dataset = unique()
    admin.create_dataset(dataset, encrypted=True)
    generation = admin.put(dataset, "a", os.urandom(20_000)).generation
    token_id, token = admin.create_token("key-holder", [Grant(dataset, Role.READER)])
    with reader_client(server, token) as client:
        client.get(dataset, "a")
        counts = client.read_counts
        assert counts.local == 1
        key = cached_key(client, dataset, "a", generation)
        assert not zeroed(key)

        admin.revoke_token(token_id)
        admin.delete(dataset, "a")
        admin.delete_dataset(dataset)
        # The reader does nothing more: its reporter's thread sweeps the expired grant.
        poll(lambda: zeroed(key), 15, "the expired grant's key to be zeroed")
        assert cached_count(client) == 0
        assert client.read_counts == counts
    admin.close()


def test_a_local_read_of_any_dataset_drops_the_keys_of_expired_grants(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = short_grants(spawn_server)
    admin = server.connect(local_reads=False)
    secret, plain = unique("secret"), unique("plain")
    admin.create_dataset(secret, encrypted=True)
    admin.create_dataset(plain, encrypted=False)
    generation = admin.put(secret, "a", os.urandom(20_000)).generation
    admin.put(plain, "b", b"b" * 5000)
    grants = [Grant(secret, Role.READER), Grant(plain, Role.READER)]
    _, token = admin.create_token("two-sets", grants)
    # The reporter's thread stays asleep: only reads sweep.
    options = {"report_interval_s": 3600.0, "report_every_reads": 10_000}
    with reader_client(server, token, **options) as client:
        client.get(secret, "a")
        granted_by = time.monotonic()  # the grant was asked for before this
        key = cached_key(client, secret, "a", generation)
        assert not zeroed(key)

        poll(lambda: time.monotonic() > granted_by + TTL_S, 10, "the grant to run out")
        assert not zeroed(key), "swept without a read or the reporter's thread"
        assert client.get(plain, "b").to_pybytes() == b"b" * 5000
        assert client.read_counts.local == 2
        assert zeroed(key), "a local read did not drop the expired grant's key"
        assert cached_count(client) == 0
    admin.close()


def test_reading_a_newer_generation_drops_the_older_ones_key(
    server: ServerProcess, admin: Client
) -> None:
    dataset = unique()
    admin.create_dataset(dataset, encrypted=True)
    first, second = os.urandom(20_000), os.urandom(30_000)
    old = admin.put(dataset, "a", first).generation
    with reader_client(server) as client:
        assert client.get(dataset, "a").to_pybytes() == first
        older = cached_key(client, dataset, "a", old)
        assert not zeroed(older)

        new = admin.put(dataset, "a", second).generation
        assert client.get(dataset, "a").to_pybytes() == second
        assert client.read_counts.local == 2
        assert zeroed(older), "the older generation's key was not zeroed"
        assert not zeroed(cached_key(client, dataset, "a", new))
        assert cached_count(client) == 1


def a_client_holding_a_key(server: ServerProcess, admin: Client) -> tuple[Client, bytearray]:
    """A fresh reader client that read an encrypted shard in place, and the key it caches."""
    dataset = unique()
    admin.create_dataset(dataset, encrypted=True)
    generation = admin.put(dataset, "a", os.urandom(20_000)).generation
    client = reader_client(server)
    assert client.get(dataset, "a").to_pybytes()
    assert client.read_counts.local == 1
    return client, cached_key(client, dataset, "a", generation)


def test_a_client_dropped_without_close_is_freed_at_once_and_zeroes_its_keys(
    server: ServerProcess, admin: Client
) -> None:
    client, key = a_client_holding_a_key(server, admin)
    reporter = cast(Any, client)._local.reporter._thread
    assert reporter is not None and reporter.is_alive()
    freed = weakref.ref(client)
    # With the cycle collector off, only reference counting can free the client: a
    # cycle through it (its local path calling back into it) would keep it, its
    # channel and its keys until some later collection.
    gc.disable()
    try:
        del client
        assert freed() is None, "the dropped client is still alive (a reference cycle?)"
        assert zeroed(key), "the dropped client's key was not zeroed"
    finally:
        gc.enable()
    poll(lambda: not reporter.is_alive(), 15, "the dropped client's reporter thread to end")


def test_a_client_collected_in_a_cycle_zeroes_its_keys_without_taking_a_lock(
    server: ServerProcess, admin: Client
) -> None:
    # The garbage collector runs on whichever thread allocates, which may hold one of
    # the cache's locks: a finalizer that cleared the cache under its lock deadlocked
    # there (seen on the reporter's own thread), and the collector stayed stuck for
    # the whole process.
    client, key = a_client_holding_a_key(server, admin)
    lock = cast(Any, client)._local._keys._lock
    cycle: list[object] = [client]
    cycle.append(cycle)  # as a kept traceback would hold it
    freed = weakref.ref(client)
    del client, cycle
    collector = threading.Thread(target=gc.collect, daemon=True)
    with lock:  # as the thread the collector runs on might hold it
        collector.start()
        collector.join(10)
        assert not collector.is_alive(), "collecting the client waited for a lock"
    assert freed() is None
    assert zeroed(key), "the collected client's key was not zeroed"
