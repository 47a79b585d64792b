"""ShardStreams: the places of the shard streams a node serves at once, and one
caller's share of them (the real-server tests are in test_stalled_calls.py)."""

from __future__ import annotations

import contextlib

import pytest

from tierstore.errors import InvalidArgument, ServerBusy
from tierstore.server.streamslots import ShardStreams


def test_a_caller_holds_its_share_and_the_rest_is_left_to_others() -> None:
    streams = ShardStreams(8)
    assert streams.per_caller == 6
    with contextlib.ExitStack() as held:
        for _ in range(6):
            held.enter_context(streams.slot("a shard read", "a"))
        with pytest.raises(ServerBusy, match="a holds 6 of the node's 8 shard streams"):
            held.enter_context(streams.slot("a shard read", "a"))
        for _ in range(2):
            held.enter_context(streams.slot("a shard put", "b"))
        with pytest.raises(ServerBusy, match=r"^a shard put: the node is serving 8 shard"):
            held.enter_context(streams.slot("a shard put", "c"))
    # All given back, the refused ones counting for nothing: every place is free again.
    with contextlib.ExitStack() as held:
        for _ in range(6):
            held.enter_context(streams.slot("a shard read", "b"))
        for _ in range(2):
            held.enter_context(streams.slot("a shard read", "a"))


def test_a_place_is_given_back_when_its_stream_fails() -> None:
    streams = ShardStreams(1)
    assert streams.per_caller == 1  # a node of one place: the caller's share is that place
    with pytest.raises(ValueError), streams.slot("a shard read", "a"):
        raise ValueError("the stream failed")
    with streams.slot("a shard read", "b"):
        pass


def test_a_node_serves_at_least_one_stream() -> None:
    with pytest.raises(InvalidArgument, match="at least 1"):
        ShardStreams(0)
    assert ShardStreams.for_workers(32).slots == 28
    assert ShardStreams.for_workers(32).per_caller == 21


def test_a_share_of_one_bounds_nothing_but_the_places_and_others_are_refused() -> None:
    # A node whose callers are one user (one token for every job) gives it every place.
    streams = ShardStreams(8, share=1)
    assert streams.per_caller == 8
    with contextlib.ExitStack() as held:
        for _ in range(8):
            held.enter_context(streams.slot("a shard read", "a"))
    for bad in (0, -0.5, 1.01, float("nan"), True, "0.5"):
        with pytest.raises(InvalidArgument, match="caller share must be a number"):
            ShardStreams(8, share=bad)  # type: ignore[arg-type]
