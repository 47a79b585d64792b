"""Frames a put can send once only (a record-batch reader's): an attempt made again after
one took a frame is refused, not sent short of what was read."""

from __future__ import annotations

import pytest

from tierstore.client.putvalue import OnePassFrames
from tierstore.errors import Unavailable


def test_frames_are_sent_once_and_a_second_attempt_after_any_was_taken_is_refused() -> None:
    frames = OnePassFrames(memoryview(bytes([k])) for k in range(3))
    frames.check_unread("the put")  # none taken: an attempt may be made (again)
    first = iter(frames)
    assert bytes(next(first)) == b"\x00"
    with pytest.raises(Unavailable, match="cannot be read again: nothing was stored"):
        frames.check_unread("the put of ds/s")
    assert [bytes(f) for f in first] == [b"\x01", b"\x02"]
