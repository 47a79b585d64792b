"""How long a local reader keeps data keys (tierstore/client/keycache.py), on a fake clock.

A key lives as long as its dataset's local-read grant, and only for its shard's newest
generation; a dropped key's bytes are zeroed, and a cipher already handed to a read
keeps working.
"""

from __future__ import annotations

import os
import threading
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.server.conftest import poll
from tierstore.client import keycache
from tierstore.client.keycache import DataKeys
from tierstore.client.reports import ReadReporter
from tierstore.crypto import FrameCipher
from tierstore.engine.localreads import LocalReadCount

NONCE = b"\x01" * 8
ZERO = bytes(32)

#: For tests that see a dropped key zeroed through ``cipher.key``: the cache's buffer
#: only where the cipher library keeps a copy of its own.
zeroes_cipher_key = pytest.mark.skipif(
    not keycache._CIPHER_HAS_ITS_OWN_KEY,
    reason="this cryptography build reads the key buffer at every use, so the cipher "
    "holds a copy the cache cannot zero",
)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sealed_by(data_key: bytes, frame: bytes) -> bytes:
    """Frame 0 sealed as the server would, with ``data_key``."""
    return AESGCM(data_key).encrypt(NONCE + b"\x00\x00\x00\x00", frame, b"aad")


def opens(cipher: FrameCipher, sealed: bytes, frame: bytes) -> bool:
    out = bytearray(len(frame))
    cipher.decrypt_into(0, sealed, b"aad", memoryview(out))
    return bytes(out) == frame


@zeroes_cipher_key
def test_a_datasets_keys_are_dropped_and_zeroed_when_its_grant_runs_out() -> None:
    clock = Clock()
    keys = DataKeys(clock=clock)
    keys.grant("d", 110.0)
    keys.grant("e", 120.0)
    mine = [keys.put("d", f"s{i}", 1, os.urandom(32), NONCE) for i in range(3)]
    other = keys.put("e", "s0", 1, os.urandom(32), NONCE)

    clock.now = 109.999
    assert keys.expire() == 0
    assert len(keys) == 4 and all(cipher.key != ZERO for cipher in mine)

    clock.now = 110.0  # the deadline itself: the grant no longer holds
    assert keys.expire() == 3
    assert all(cipher.key == ZERO for cipher in mine), "an expired grant's key was not zeroed"
    assert keys.get("d", "s0", 1) is None
    assert keys.get("e", "s0", 1) is other and other.key != ZERO
    # Gone with its grant: a key granted afterwards is not kept until a renewal.
    late = keys.put("d", "s0", 1, os.urandom(32), NONCE)
    assert keys.get("d", "s0", 1) is None and late.key == ZERO

    clock.now = 500.0
    assert keys.expire() == 1
    assert other.key == ZERO and len(keys) == 0


@zeroes_cipher_key
def test_a_renewal_keeps_only_the_keys_used_under_it() -> None:
    # A renewal kept every key of the dataset: a deleted shard's key (never read
    # again) stayed for as long as its dataset was read, past the promised bound.
    clock = Clock()
    keys = DataKeys(clock=clock)
    keys.grant("d", 110.0)
    read = keys.put("d", "s", 1, os.urandom(32), NONCE)
    deleted = keys.put("d", "gone", 1, os.urandom(32), NONCE)
    clock.now = 110.5  # past the deadline, and the next read renews before any sweep
    keys.grant("d", 120.5)
    assert keys.get("d", "s", 1) is read  # used under the renewed grant: kept
    assert keys.expire() == 1
    assert deleted.key == ZERO and keys.get("d", "gone", 1) is None
    assert read.key != ZERO
    clock.now = 120.5
    assert keys.expire() == 1 and read.key == ZERO


def test_a_refused_grant_or_close_forgets_the_grant_too() -> None:
    keys = DataKeys(clock=Clock())
    keys.grant("d", 1e9)
    keys.grant("e", 1e9)
    keys.drop_dataset("d")
    assert keys.get("d", "s", 1) is None
    keys.put("d", "s", 1, os.urandom(32), NONCE)
    assert keys.get("d", "s", 1) is None, "a key was kept without a grant"
    keys.clear()
    keys.put("e", "s", 1, os.urandom(32), NONCE)
    assert len(keys) == 0


@zeroes_cipher_key
def test_a_key_without_a_live_grant_is_not_kept_but_its_cipher_works() -> None:
    clock = Clock()
    keys = DataKeys(clock=clock)
    data_key = os.urandom(32)
    cipher = keys.put("d", "s", 1, data_key, NONCE)  # never granted
    assert keys.get("d", "s", 1) is None and len(keys) == 0
    assert cipher.key == ZERO
    assert opens(cipher, sealed_by(data_key, b"frame"), b"frame")


@zeroes_cipher_key
def test_a_newer_generation_drops_the_older_ones() -> None:
    keys = DataKeys(clock=Clock())
    keys.grant("d", 1e9)
    first_key = os.urandom(32)
    first = keys.put("d", "s", 1, first_key, NONCE)
    neighbour = keys.put("d", "t", 1, os.urandom(32), NONCE)
    in_flight = keys.get("d", "s", 1)  # a read holds this cipher...
    assert in_flight is first

    second = keys.put("d", "s", 2, os.urandom(32), NONCE)
    assert first.key == ZERO, "the older generation's key was not zeroed"
    assert keys.get("d", "s", 1) is None
    assert keys.get("d", "s", 2) is second and second.key != ZERO
    assert keys.get("d", "t", 1) is neighbour and neighbour.key != ZERO
    assert len(keys) == 2
    # ...and still decrypts with it: the cipher has its own copy of the key.
    assert opens(in_flight, sealed_by(first_key, b"frame"), b"frame")

    # A grant of the older generation that arrives late is not kept next to the newer.
    late = keys.put("d", "s", 1, os.urandom(32), NONCE)
    assert late.key == ZERO
    assert keys.get("d", "s", 1) is None and keys.get("d", "s", 2) is second
    assert second.key != ZERO and len(keys) == 2


@zeroes_cipher_key
def test_expiry_while_another_thread_decrypts_never_fails_a_frame() -> None:
    clock = Clock()
    keys = DataKeys(clock=clock)
    keys.grant("d", 110.0)
    data_key = os.urandom(32)
    cipher = keys.put("d", "s", 1, data_key, NONCE)
    frame = os.urandom(4096)
    sealed = sealed_by(data_key, frame)
    started, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            for count in range(2000):
                assert opens(cipher, sealed, frame)
                if count == 10:
                    started.set()
        except BaseException as exc:  # reported to the test below
            failures.append(exc)
        finally:
            started.set()
            done.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(10)
    clock.now = 200.0
    assert keys.expire() == 1
    assert cipher.key == ZERO
    assert done.wait(30)
    reader.join()
    assert not failures


class LazyCipher:
    """A cipher that reads its key buffer at every use, as ``AESGCM`` does when built
    against an OpenSSL older than 3.2."""

    def __init__(self, key: bytes | bytearray, nonce_prefix: bytes) -> None:
        self.key = key
        self._nonce_prefix = nonce_prefix

    def _now(self) -> FrameCipher:
        return FrameCipher(bytes(self.key), self._nonce_prefix)

    def encrypt(self, index: int, plaintext: bytes, aad: bytes) -> bytes:
        return self._now().encrypt(index, plaintext, aad)

    def decrypt_into(self, index: int, sealed: bytes, aad: bytes, out: memoryview) -> None:
        self._now().decrypt_into(index, sealed, aad, out)


def lazy(key: bytes | bytearray, nonce_prefix: bytes) -> FrameCipher:
    return cast(FrameCipher, LazyCipher(key, nonce_prefix))


def test_the_probe_tells_a_cipher_that_reads_the_callers_buffer() -> None:
    assert keycache._cipher_has_its_own_key(lazy) is False


def test_a_cipher_that_reads_the_callers_buffer_gets_a_copy_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keycache, "_new_cipher", lazy)
    monkeypatch.setattr(keycache, "_CIPHER_HAS_ITS_OWN_KEY", False)
    keys = DataKeys(clock=Clock())
    keys.grant("d", 1e9)
    data_key = os.urandom(32)
    cipher = keys.put("d", "s", 1, data_key, NONCE)
    held = [entry.held for entry in cast(Any, keys)._keys.values()]
    keys.drop_dataset("d")
    assert held == [bytearray(32)], "the cache's own buffer was not zeroed"
    assert opens(cipher, sealed_by(data_key, b"frame"), b"frame")


def test_the_reporters_thread_calls_on_wake() -> None:
    sent: list[tuple[str, list[LocalReadCount]]] = []
    woken = threading.Event()
    reporter = ReadReporter(
        lambda dataset, counts, wait: sent.append((dataset, counts)),
        every_reads=1000,
        interval_s=0.02,
        on_wake=woken.set,
    )
    reporter.add("d", "s", 1)
    poll(woken.is_set, 10, "the reporter's thread to wake")
    poll(lambda: sent, 10, "the read's report")
    reporter.close()


def test_the_reporters_thread_runs_before_any_read_is_counted() -> None:
    # The local path starts it when it caches a data key: a read that then falls back to
    # the service counts nothing here, and the key must still go with its grant.
    woken = threading.Event()
    reporter = ReadReporter(lambda dataset, counts, wait: None, interval_s=0.02, on_wake=woken.set)
    reporter.start()
    first = reporter._thread
    reporter.start()  # running already: no second thread
    assert first is not None and reporter._thread is first
    poll(woken.is_set, 10, "the reporter's thread to wake with nothing to report")
    reporter.close()
    assert not first.is_alive()
