"""Envelope encryption (tierstore.crypto): key wrapping, key files, per-frame AES-GCM."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierstore.config import ArchiveSettings, EngineSettings
from tierstore.crypto import (
    KEY_BYTES,
    NONCE_PREFIX_BYTES,
    TAG_BYTES,
    FrameCipher,
    LocalKeyring,
    MasterKeyProvider,
    new_data_key,
    new_nonce_prefix,
    zero,
)
from tierstore.errors import (
    DataLoss,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    UnknownKeyId,
)
from tierstore.types import WrappedKey

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
CONTEXT = b"ds\x00shard\x00\x00\x00\x00\x00\x00\x00\x00\x01"


def keyring(**keys: bytes) -> LocalKeyring:
    current = sorted(keys)[-1]
    return LocalKeyring(keys=keys, current=current)


# Key wrapping.


def test_wrap_unwrap_roundtrip_and_key_id() -> None:
    ring = keyring(k1=KEY_A)
    data_key = new_data_key()
    wrapped = ring.wrap(data_key, CONTEXT)
    assert wrapped.key_id == "k1"
    assert data_key not in wrapped.blob
    assert ring.unwrap(wrapped, CONTEXT) == data_key


def test_wrapping_is_randomised() -> None:
    ring = keyring(k1=KEY_A)
    data_key = new_data_key()
    assert ring.wrap(data_key, CONTEXT).blob != ring.wrap(data_key, CONTEXT).blob


def test_local_keyring_is_a_master_key_provider() -> None:
    provider: MasterKeyProvider = keyring(k1=KEY_A)
    assert provider.current_key_id == "k1"


def test_unwrap_with_another_context_fails() -> None:
    ring = keyring(k1=KEY_A)
    wrapped = ring.wrap(new_data_key(), CONTEXT)
    with pytest.raises(IntegrityError):
        ring.unwrap(wrapped, CONTEXT + b"x")


def test_wrong_master_key_under_the_same_id_is_data_loss() -> None:
    wrapped = keyring(k1=KEY_A).wrap(new_data_key(), CONTEXT)
    with pytest.raises(IntegrityError, match="wrong master key") as caught:
        keyring(k1=KEY_B).unwrap(wrapped, CONTEXT)
    assert isinstance(caught.value, DataLoss)


def test_unknown_key_id_is_a_failed_precondition() -> None:
    wrapped = keyring(k1=KEY_A).wrap(new_data_key(), CONTEXT)
    with pytest.raises(UnknownKeyId, match="'k1'") as caught:
        keyring(k2=KEY_B).unwrap(wrapped, CONTEXT)
    assert isinstance(caught.value, FailedPrecondition)


def test_renaming_the_key_id_of_a_wrapped_key_fails() -> None:
    # The key id is bound into the wrap: relabelling a blob does not unwrap it.
    ring = LocalKeyring(keys={"k1": KEY_A, "k2": KEY_A}, current="k1")
    wrapped = ring.wrap(new_data_key(), CONTEXT)
    with pytest.raises(IntegrityError):
        ring.unwrap(WrappedKey("k2", wrapped.blob), CONTEXT)


@pytest.mark.parametrize("position", [0, 11, 12, 30, -1])
def test_tampered_wrapped_key_fails(position: int) -> None:
    ring = keyring(k1=KEY_A)
    wrapped = ring.wrap(new_data_key(), CONTEXT)
    blob = bytearray(wrapped.blob)
    blob[position] ^= 0x01
    with pytest.raises(IntegrityError):
        ring.unwrap(WrappedKey("k1", bytes(blob)), CONTEXT)


def test_truncated_wrapped_key_fails() -> None:
    ring = keyring(k1=KEY_A)
    wrapped = ring.wrap(new_data_key(), CONTEXT)
    for size in (0, 5, 12, len(wrapped.blob) - 1):
        with pytest.raises(IntegrityError):
            ring.unwrap(WrappedKey("k1", wrapped.blob[:size]), CONTEXT)


def test_rotation_keyring_unwraps_old_and_wraps_new() -> None:
    old = keyring(k1=KEY_A)
    both = LocalKeyring(keys={"k1": KEY_A, "k2": KEY_B}, current="k2")
    data_key = new_data_key()
    rewrapped = both.wrap(both.unwrap(old.wrap(data_key, CONTEXT), CONTEXT), CONTEXT)
    assert rewrapped.key_id == "k2"
    assert LocalKeyring(keys={"k2": KEY_B}, current="k2").unwrap(rewrapped, CONTEXT) == data_key


# Keyring construction and key files.


def test_keyring_validates_keys() -> None:
    with pytest.raises(InvalidArgument, match="not in the keyring"):
        LocalKeyring(keys={"k1": KEY_A}, current="k2")
    with pytest.raises(InvalidArgument, match="31 bytes"):
        LocalKeyring(keys={"k1": KEY_A[:31]}, current="k1")


def test_from_base64_derives_a_stable_key_id() -> None:
    text = base64.b64encode(KEY_A).decode()
    first, second = LocalKeyring.from_base64(text), LocalKeyring.from_base64(" " + text + "\n")
    assert first.current == second.current and first.current.startswith("fp-")
    assert LocalKeyring.from_base64(base64.b64encode(KEY_B).decode()).current != first.current
    assert LocalKeyring.from_base64(text, key_id="mine").current == "mine"
    assert first.keys[first.current] == KEY_A


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"short").decode(), ""])
def test_from_base64_rejects_bad_keys(text: str) -> None:
    with pytest.raises(InvalidArgument):
        LocalKeyring.from_base64(text)


def test_generate_file_then_load_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = LocalKeyring.generate_file(path, key_id="main")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = LocalKeyring.from_file(path)
    assert loaded.current == "main" and loaded.keys == ring.keys
    assert len(loaded.keys["main"]) == KEY_BYTES
    with pytest.raises(FileExistsError):
        LocalKeyring.generate_file(path)  # never overwrites a key file


def test_a_new_key_file_is_fsynced_with_its_directory_and_never_replaces_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: set[int] = set()  # inodes
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "master.keys"
    ring = LocalKeyring.generate_file(path)
    # Before, the first key was written without an fsync: a crash soon after the first
    # start could lose the only key of every encrypted shard written meanwhile.
    assert {path.stat().st_ino, tmp_path.stat().st_ino} <= synced
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        LocalKeyring.generate_file(path)
    assert path.read_bytes() == before and LocalKeyring.from_file(path).keys == ring.keys
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.keys"]  # no temporary file


def test_from_file_with_two_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    document = {
        "current": "k2",
        "keys": {"k1": base64.b64encode(KEY_A).decode(), "k2": base64.b64encode(KEY_B).decode()},
    }
    path.write_text(json.dumps(document))
    ring = LocalKeyring.from_file(path)
    assert ring.current_key_id == "k2"
    assert ring.keys == {"k1": KEY_A, "k2": KEY_B}


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        "{}",
        '{"current": "k1"}',
        '{"current": "k1", "keys": {"k1": 5}}',
        '{"current": "k1", "keys": {"k1": "@@@"}}',
        '{"current": "k2", "keys": {"k1": "' + base64.b64encode(KEY_A).decode() + '"}}',
        '{"current": "k1", "keys": {"k1": "' + base64.b64encode(KEY_A[:31]).decode() + '"}}',
        '{"current": "k1", "keys": []}',
        '{"keys": {"k1": "' + base64.b64encode(KEY_A).decode() + '"}}',
    ],
)
def test_from_file_rejects_bad_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument) as refused:
        LocalKeyring.from_file(path)
    # Every refusal names the file (a bad key, a short one or a current id the file
    # lacks once did not), and none is a bare Python message about indices.
    assert str(refused.value).startswith(f"cannot load key file {path}: "), refused.value
    assert "indices" not in str(refused.value)


KEY_TEXT = base64.b64encode(KEY_A).decode()


@pytest.mark.parametrize(
    "content",
    [
        # The key written where its id goes: as the current id, or id and key swapped.
        '{"current": "' + KEY_TEXT + '", "keys": {"k1": "' + KEY_TEXT + '"}}',
        '{"current": "k1", "keys": {"' + KEY_TEXT + '": "k1"}}',
        '{"current": "' + KEY_TEXT + '", "keys": {"' + KEY_TEXT + '": "k1"}}',
    ],
)
def test_a_key_in_the_place_of_an_id_is_never_shown(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument) as refused:
        LocalKeyring.from_file(path)
    assert str(refused.value).startswith(f"cannot load key file {path}: "), refused.value
    assert KEY_TEXT[:12] not in str(refused.value)


def test_a_key_used_as_its_own_id_is_refused(tmp_path: Path) -> None:
    # It loaded, and every catalog record and archive manifest then named the master
    # key in the clear as the id of the key that wrapped its data key.
    path = tmp_path / "keys.json"
    path.write_text(
        '{"current": "' + KEY_TEXT + '", "keys": {"' + KEY_TEXT + '": "' + KEY_TEXT + '"}}'
    )
    with pytest.raises(InvalidArgument, match="a key id may not be a key") as refused:
        LocalKeyring.from_file(path)
    assert KEY_TEXT[:12] not in str(refused.value)
    with pytest.raises(InvalidArgument, match="a key id may not be a key"):
        LocalKeyring.from_base64(KEY_TEXT, key_id=KEY_TEXT)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o602], ids=oct)
def test_a_key_file_others_may_read_is_used_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    path = tmp_path / "master.keys"
    ring = LocalKeyring.generate_file(path)
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="tierstore.crypto"):
        assert LocalKeyring.from_file(path).keys == ring.keys
    (record,) = caplog.records
    assert str(path) in record.getMessage() and f"mode {mode:o}" in record.getMessage()
    for quiet in (0o600, 0o640, 0o440):  # group read: a Secret mounted for fsGroup
        caplog.clear()
        os.chmod(path, quiet)
        with caplog.at_level(logging.WARNING, logger="tierstore.crypto"):
            LocalKeyring.from_file(path)
        assert caplog.records == [], oct(quiet)


def test_from_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot load"):
        LocalKeyring.from_file(tmp_path / "absent.json")


# Frame encryption.


def cipher(key: bytes = KEY_A, prefix: bytes = b"\x01" * NONCE_PREFIX_BYTES) -> FrameCipher:
    return FrameCipher(key, prefix)


def test_frame_roundtrip_into_a_buffer() -> None:
    sealed = cipher().encrypt(3, b"hello frame", b"aad")
    assert len(sealed) == len(b"hello frame") + TAG_BYTES
    assert b"hello frame" not in sealed
    out = bytearray(len(sealed) - TAG_BYTES)
    cipher().decrypt_into(3, sealed, b"aad", memoryview(out))
    assert out == b"hello frame"


def test_decrypt_into_accepts_signed_byte_views() -> None:
    sealed = cipher().encrypt(0, b"\x80\x81\x82", b"")
    out = np.zeros(3, dtype=np.int8)
    cipher().decrypt_into(0, sealed, b"", memoryview(out))
    assert out.tobytes() == b"\x80\x81\x82"


@pytest.mark.parametrize(
    "change",
    ["flip-ciphertext", "flip-tag", "other-index", "other-aad", "other-key", "other-prefix"],
)
def test_failed_frame_leaves_only_zeros(change: str) -> None:
    plaintext = os.urandom(1000)
    sealed = bytearray(cipher().encrypt(5, plaintext, b"aad"))
    index, aad, opener = 5, b"aad", cipher()
    if change == "flip-ciphertext":
        sealed[10] ^= 0x04
    elif change == "flip-tag":
        sealed[-1] ^= 0x04
    elif change == "other-index":
        index = 6
    elif change == "other-aad":
        aad = b"aae"
    elif change == "other-key":
        opener = cipher(key=KEY_B)
    else:
        opener = cipher(prefix=b"\x02" * NONCE_PREFIX_BYTES)
    out = bytearray(b"\xaa" * len(plaintext))
    with pytest.raises(IntegrityError, match="authentication tag"):
        opener.decrypt_into(index, bytes(sealed), aad, memoryview(out))
    assert out == bytes(len(plaintext))


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_sized_destination_is_zeroed(delta: int) -> None:
    sealed = cipher().encrypt(0, b"x" * 64, b"")
    out = bytearray(b"\xaa" * (64 + delta))
    with pytest.raises(IntegrityError):
        cipher().decrypt_into(0, sealed, b"", memoryview(out))
    assert out == bytes(64 + delta)


def test_truncated_ciphertext_is_zeroed() -> None:
    sealed = cipher().encrypt(0, b"x" * 64, b"")
    out = bytearray(b"\xaa" * 8)
    with pytest.raises(IntegrityError):
        cipher().decrypt_into(0, sealed[:8], b"", memoryview(out))
    assert out == bytes(8)


@pytest.mark.parametrize("size", [0, 7, 9, 16])
def test_nonce_prefix_must_be_eight_bytes(size: int) -> None:
    with pytest.raises(InvalidArgument):
        FrameCipher(KEY_A, b"\x00" * size)


def test_fresh_keys_and_prefixes_are_random() -> None:
    assert len(new_data_key()) == KEY_BYTES and new_data_key() != new_data_key()
    assert len(new_nonce_prefix()) == NONCE_PREFIX_BYTES
    assert len({new_nonce_prefix() for _ in range(64)}) == 64


def test_zero_clears_any_writable_buffer() -> None:
    flat = bytearray(b"\xff" * 10)
    zero(memoryview(flat))
    assert flat == bytes(10)
    array = np.full((3, 4), 7, dtype=np.float32)
    zero(memoryview(array))
    assert not array.any()


@given(st.binary(max_size=3000), st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_any_frame_roundtrips(plaintext: bytes, aad: bytes, index: int) -> None:
    sealed = cipher().encrypt(index, plaintext, aad)
    out = bytearray(len(plaintext))
    cipher().decrypt_into(index, sealed, aad, memoryview(out))
    assert out == plaintext


def test_repr_shows_key_ids_never_keys() -> None:
    # A keyring (or the settings that hold the archive's secret) printed by a failing
    # test, a debugger or a log line must not print the secret itself.
    key = bytes(range(32))
    shown = repr(LocalKeyring(keys={"k1": key, "k2": bytes(32)}, current="k2"))
    assert "'k1'" in shown and "'k2'" in shown
    assert repr(key)[2:-1] not in shown and "\\x00\\x01" not in shown
    secret = "SUPERSECRET-S3-KEY"
    settings = EngineSettings(archive=ArchiveSettings(secret_access_key=secret))
    assert secret not in repr(settings)
    assert "access_key_id='tierstore'" in repr(settings)
