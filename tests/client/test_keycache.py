"""Data keys held by a local reader (tierstore/client/keycache.py)."""

from __future__ import annotations

import math
import os

from tierstore.client.keycache import DataKeys

NONCE = b"\x01" * 8


def granted(*datasets: str, max_keys: int = 4096) -> DataKeys:
    """A cache whose ``datasets`` hold grants that never run out."""
    keys = DataKeys(max_keys)
    for dataset in datasets:
        keys.grant(dataset, math.inf)
    return keys


def test_a_key_is_kept_per_generation() -> None:
    keys = granted("d")
    cipher = keys.put("d", "s", 7, os.urandom(32), NONCE)
    assert keys.get("d", "s", 7) is cipher
    assert keys.get("d", "s", 8) is None
    assert keys.get("d", "t", 7) is None


def test_keys_past_the_bound_are_dropped_oldest_first_and_zeroed() -> None:
    keys = granted("d", max_keys=2)
    first = keys.put("d", "a", 1, os.urandom(32), NONCE)
    keys.put("d", "b", 1, os.urandom(32), NONCE)
    keys.get("d", "a", 1)  # a is used again: b is now the oldest
    keys.put("d", "c", 1, os.urandom(32), NONCE)
    assert keys.get("d", "b", 1) is None
    assert keys.get("d", "a", 1) is first
    assert len(keys) == 2
    keys.put("d", "d", 1, os.urandom(32), NONCE)  # c is the oldest now
    assert keys.get("d", "c", 1) is None
    assert first.key != bytes(32)
    kept = keys.put("d", "e", 1, os.urandom(32), NONCE)  # and now a
    assert keys.get("d", "a", 1) is None
    assert first.key == bytes(32), "a dropped key was not zeroed"
    assert kept.key != bytes(32)


def test_dropping_a_dataset_zeroes_its_keys_only() -> None:
    keys = granted("mine", "other")
    mine = [keys.put("mine", f"s{i}", 1, os.urandom(32), NONCE) for i in range(3)]
    other = keys.put("other", "s0", 1, os.urandom(32), NONCE)
    keys.drop_dataset("mine")
    assert all(cipher.key == bytes(32) for cipher in mine)
    assert keys.get("mine", "s0", 1) is None
    assert keys.get("other", "s0", 1) is other and other.key != bytes(32)
    keys.clear()
    assert other.key == bytes(32) and len(keys) == 0


def test_a_zeroed_key_does_not_disturb_a_read_in_flight() -> None:
    """The cipher took its own copy: dropping the key while another thread decrypts with
    it must not turn good frames into tag failures."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data_key = os.urandom(32)
    keys = granted("d")
    cipher = keys.put("d", "s", 1, data_key, NONCE)
    sealed = AESGCM(data_key).encrypt(NONCE + b"\x00\x00\x00\x00", b"frame", b"aad")
    keys.clear()
    out = bytearray(5)
    cipher.decrypt_into(0, sealed, b"aad", memoryview(out))
    assert bytes(out) == b"frame"
