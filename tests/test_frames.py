"""Frame sealing (tierstore.frames): stored bytes carry their identity; any change is caught."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierstore.crypto import TAG_BYTES, FrameCipher, new_data_key, new_nonce_prefix
from tierstore.errors import IntegrityError
from tierstore.frames import CHECKSUM_BYTES, FrameSealer, shard_context

CONTEXT = shard_context("ds", "a/b", 7)
KEY = new_data_key()
PREFIX = new_nonce_prefix()


def sealer(
    encrypted: bool, context: bytes = CONTEXT, frame_count: int = 3, key: bytes = KEY
) -> FrameSealer:
    cipher = FrameCipher(key, PREFIX) if encrypted else None
    return FrameSealer(context, frame_count, cipher)


def opened(sealer: FrameSealer, index: int, stored: bytes) -> bytes:
    """Open through ``open_into`` (both kinds), checking the destination on failure."""
    out = bytearray(b"\xaa" * max(0, len(stored) - sealer.overhead))
    try:
        sealer.open_into(index, memoryview(stored), memoryview(out))
    except IntegrityError:
        assert out == bytes(len(out)), "a failed open must leave only zeros"
        raise
    return bytes(out)


both = pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])


def test_shard_context_names_one_generation() -> None:
    contexts = {
        shard_context("ds", "a", 1),
        shard_context("ds", "a", 2),
        shard_context("ds", "b", 1),
        shard_context("dt", "a", 1),
        shard_context("ds", "a/b", 1),
        shard_context("ds/a", "b", 1),
    }
    assert len(contexts) == 6


@both
def test_roundtrip_and_overhead(encrypted: bool) -> None:
    s = sealer(encrypted)
    assert s.overhead == (TAG_BYTES if encrypted else CHECKSUM_BYTES)
    for index, payload in enumerate([b"first", b"", b"last" * 1000]):
        stored = s.seal(index, payload)
        assert len(stored) == len(payload) + s.overhead
        assert opened(s, index, stored) == payload


def test_plaintext_payload_comes_first_and_opens_in_place() -> None:
    s = sealer(False)
    stored = s.seal(0, b"payload bytes")
    assert stored.startswith(b"payload bytes")
    backing = np.frombuffer(stored, dtype=np.uint8)
    view = s.open(0, memoryview(backing))
    assert bytes(view) == b"payload bytes"
    assert pa.py_buffer(view).address == backing.ctypes.data  # no copy


def test_encrypted_frames_hide_the_payload_and_refuse_open() -> None:
    s = sealer(True)
    stored = s.seal(0, b"secret secret secret")
    assert b"secret" not in stored
    with pytest.raises(TypeError, match="open_into"):
        s.open(0, memoryview(stored))


@both
def test_every_flipped_byte_is_caught(encrypted: bool) -> None:
    s = sealer(encrypted)
    stored = s.seal(1, bytes(range(40)))
    for position in range(len(stored)):
        changed = bytearray(stored)
        changed[position] ^= 0x01
        with pytest.raises(IntegrityError):
            opened(s, 1, bytes(changed))


@both
def test_frames_cannot_move(encrypted: bool) -> None:
    stored = sealer(encrypted).seal(0, b"frame zero payload")
    elsewhere = [
        (sealer(encrypted), 1),  # another index (a swap or reorder)
        (sealer(encrypted, shard_context("ds", "a/c", 7)), 0),  # another shard
        (sealer(encrypted, shard_context("other", "a/b", 7)), 0),  # another dataset
        (sealer(encrypted, shard_context("ds", "a/b", 8)), 0),  # another generation
    ]
    for target, index in elsewhere:
        with pytest.raises(IntegrityError):
            opened(target, index, stored)


@both
def test_a_cut_off_tail_is_caught(encrypted: bool) -> None:
    # Three frames sealed; the reader is told there are only two: frame 1 was not
    # sealed as the last one, so it fails. And the other way round.
    three = sealer(encrypted, frame_count=3)
    two = sealer(encrypted, frame_count=2)
    with pytest.raises(IntegrityError):
        opened(two, 1, three.seal(1, b"middle"))
    with pytest.raises(IntegrityError):
        opened(three, 1, two.seal(1, b"was last"))
    assert opened(three, 0, two.seal(0, b"first")) == b"first"  # only the last flag differs


@both
def test_index_outside_the_generation(encrypted: bool) -> None:
    s = sealer(encrypted, frame_count=2)
    with pytest.raises(IntegrityError, match="outside"):
        s.seal(2, b"x")
    stored = sealer(encrypted, frame_count=3).seal(2, b"x")
    with pytest.raises(IntegrityError):
        opened(s, 2, stored)
    with pytest.raises(IntegrityError):
        opened(s, -1, stored)


@both
def test_wrong_destination_size_is_zeroed(encrypted: bool) -> None:
    s = sealer(encrypted)
    stored = s.seal(0, b"0123456789")
    for size in (9, 11):
        out = bytearray(b"\xaa" * size)
        with pytest.raises(IntegrityError):
            s.open_into(0, memoryview(stored), memoryview(out))
        assert out == bytes(size)


@both
def test_a_frame_of_another_size_than_the_record_says_is_refused(encrypted: bool) -> None:
    # The identity binds a frame's place, not its size: only the record's sizes tell a
    # frame from one cut at the wrong bytes.
    stored = sealer(encrypted).seal(1, b"0123456789")
    for sizes in [(4, 10, 2), (4, 11, 2), (4, 9, 2)]:
        checked = FrameSealer(CONTEXT, 3, sealer(encrypted).cipher, sizes)
        if sizes[1] == 10:
            assert opened(checked, 1, stored) == b"0123456789"
            continue
        with pytest.raises(IntegrityError, match="record says"):
            checked.payload_size(1, stored)
        with pytest.raises(IntegrityError, match="record says"):
            opened(checked, 1, stored)
        if not encrypted:
            with pytest.raises(IntegrityError, match="record says"):
                checked.open(1, memoryview(stored))


@both
def test_stored_frame_shorter_than_its_trailer(encrypted: bool) -> None:
    s = sealer(encrypted)
    for size in range(s.overhead):
        with pytest.raises(IntegrityError):
            opened(s, 0, bytes(size))
    if not encrypted:
        with pytest.raises(IntegrityError, match="truncated"):
            s.open(0, memoryview(b"1234567"))


def test_wrong_data_key_fails() -> None:
    stored = sealer(True).seal(0, b"payload")
    with pytest.raises(IntegrityError):
        opened(sealer(True, key=new_data_key()), 0, stored)


@given(st.binary(max_size=2000), st.integers(1, 50), st.data(), st.booleans())
def test_any_payload_roundtrips(payload: bytes, count: int, data: st.DataObject, enc: bool) -> None:
    index = data.draw(st.integers(0, count - 1))
    s = sealer(enc, frame_count=count)
    assert opened(s, index, s.seal(index, payload)) == payload
