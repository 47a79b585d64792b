"""The simulated archive links: a shared link splits its rate evenly among the transfers on
it, never idles while one is on it, and saves a burst while it idles; channels are
independent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore.sim.links import Channels, SharedLink


def finish_all(link: SharedLink | Channels) -> dict[int, float]:
    return dict(link.advance(float("inf")))


def test_a_lone_transfer_gets_the_whole_link() -> None:
    link = SharedLink(100.0)
    link.add(0, 100, 0.0)
    assert link.advance(0.5) == []
    assert link.done_at(0) == pytest.approx(1.0)
    assert link.advance(2.0) == [(0, pytest.approx(1.0))]
    assert len(link) == 0


def test_transfers_that_start_together_finish_together() -> None:
    link = SharedLink(100.0)
    link.add(0, 100, 0.0)
    link.add(1, 100, 0.0)
    assert finish_all(link) == {0: pytest.approx(2.0), 1: pytest.approx(2.0)}


def test_a_transfer_that_joins_slows_the_one_on_the_link() -> None:
    link = SharedLink(100.0)
    link.add(0, 100, 0.0)
    assert link.advance(0.5) == []  # 0 has 50 bytes left
    link.add(1, 100, 0.5)
    # Both move 50 bytes/s: 0 is done at 1.5; 1 then has 50 left, alone: done at 2.0.
    assert link.done_at(0) == pytest.approx(1.5)
    assert link.done_at(1) == pytest.approx(2.0)
    assert link.advance(1.6) == [(0, pytest.approx(1.5))]
    assert finish_all(link) == {1: pytest.approx(2.0)}


def test_an_idle_link_saves_up_to_its_burst() -> None:
    link = SharedLink(100.0, burst_bytes=5)
    link.add(0, 10, 1.0)  # idle since ever: the full 5-byte burst
    assert link.advance(1.06) == [(0, pytest.approx(1.05))]
    link.add(1, 10, 1.06)  # idle for 0.01 s: 1 byte saved
    assert finish_all(link) == {1: pytest.approx(1.15)}
    busy = SharedLink(100.0, burst_bytes=5)
    busy.add(0, 10, 0.0)
    busy.add(1, 10, 0.0)  # no burst for a transfer that joins a busy link
    # 0 has 5 bytes left, 1 has 10: 0 is done at 0.1, then 1 moves its last 5 alone.
    assert finish_all(busy) == {0: pytest.approx(0.1), 1: pytest.approx(0.15)}


def test_a_shared_link_refuses_a_transfer_in_its_past() -> None:
    link = SharedLink(100.0)
    link.advance(2.0)
    with pytest.raises(ValueError, match="before"):
        link.add(0, 10, 1.0)
    busy = SharedLink(100.0)
    busy.add(0, 100, 0.0)
    with pytest.raises(ValueError, match="advance"):  # 0's progress until 0.5 would be lost
        busy.add(1, 10, 0.5)


def test_a_transfer_takes_no_share_before_its_first_byte() -> None:
    link = SharedLink(100.0)
    link.add(0, 100, 0.0, latency=0.5)
    link.add(1, 100, 0.0)
    assert 0 in link and 1 in link
    # 1 moves alone until 0.5 (50 bytes), then both at 50 bytes/s: 1 is done at 1.5,
    # and 0 moves its last 50 alone by 2.0.
    assert link.done_at(0) == pytest.approx(2.0)
    assert finish_all(link) == {1: pytest.approx(1.5), 0: pytest.approx(2.0)}
    lone = SharedLink(100.0)
    lone.add(0, 100, 0.0, latency=0.5)
    assert lone.advance(1.0) == []
    assert finish_all(lone) == {0: pytest.approx(1.5)}
    channels = Channels(100.0)
    channels.add(0, 100, 0.0, latency=0.5)
    assert channels.done_at(0) == pytest.approx(1.5)


def test_next_done_stops_at_each_completion() -> None:
    link = SharedLink(100.0)
    link.add(0, 50, 0.0)
    link.add(1, 100, 0.0)
    assert link.next_done(0.5) == []  # 0 is done at 1.0
    assert link.next_done(5.0) == [(0, pytest.approx(1.0))]
    link.add(2, 50, 1.0)  # at the completion's time: 1 and 2 have 50 left each
    assert link.next_done(5.0) == [(1, pytest.approx(2.0)), (2, pytest.approx(2.0))]
    assert link.next_done(5.0) == []


def test_channels_are_independent() -> None:
    channels = Channels(100.0)
    channels.add(0, 100, 0.0)
    channels.add(1, 50, 0.2)
    assert channels.done_at(1) == pytest.approx(0.7)
    assert len(channels) == 2
    assert channels.advance(10.0) == [(1, pytest.approx(0.7)), (0, pytest.approx(1.0))]


transfers = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 400)), min_size=1, max_size=8
).map(sorted)
latencies = st.sampled_from([0.0, 0.5, 3.0])


def run(starts_and_sizes: list[tuple[int, int]], rate: float, latency: float) -> dict[int, float]:
    """Request each transfer at its time (advancing the link to it first); when each is done."""
    link = SharedLink(rate)
    done: dict[int, float] = {}
    for transfer, (start, size) in enumerate(starts_and_sizes):
        done.update(link.advance(float(start)))
        link.add(transfer, size, float(start), latency)
    done.update(finish_all(link))
    return done


@settings(max_examples=200, deadline=None)
@given(transfers, latencies)
def test_the_shared_link_never_idles_while_a_transfer_is_on_it(
    starts_and_sizes: list[tuple[int, int]], latency: float
) -> None:
    rate = 10.0
    done = run(starts_and_sizes, rate, latency)
    assert set(done) == set(range(len(starts_and_sizes)))
    # Any work-conserving link finishes its last transfer when one served in turn does.
    free_at = 0.0
    for start, size in starts_and_sizes:
        free_at = max(free_at, start + latency) + size / rate
    assert max(done.values()) == pytest.approx(free_at)
    for transfer, (start, size) in enumerate(starts_and_sizes):
        # No transfer beats the whole link; of two that start together, the smaller
        # one is done first (an even split).
        assert done[transfer] >= start + latency + size / rate - 1e-9
        for other, (other_start, other_size) in enumerate(starts_and_sizes):
            if other_start == start and other_size < size:
                assert done[other] <= done[transfer] + 1e-9


@settings(max_examples=200, deadline=None)
@given(transfers, latencies, st.integers(0, 100))
def test_done_at_foresees_completion_when_nothing_else_starts(
    starts_and_sizes: list[tuple[int, int]], latency: float, look_at: int
) -> None:
    link = SharedLink(10.0)
    for transfer, (start, size) in enumerate(starts_and_sizes):
        link.advance(float(start))
        link.add(transfer, size, float(start), latency)
    link.advance(max(float(starts_and_sizes[-1][0]), float(look_at)))
    on_link = [transfer for transfer in range(len(starts_and_sizes)) if transfer in link]
    foreseen = {transfer: link.done_at(transfer) for transfer in on_link}
    assert finish_all(link) == {t: pytest.approx(when) for t, when in foreseen.items()}


@settings(max_examples=100, deadline=None)
@given(transfers, latencies)
def test_stepping_through_completions_is_advancing(
    starts_and_sizes: list[tuple[int, int]], latency: float
) -> None:
    stepped = SharedLink(10.0)
    done: dict[int, float] = {}
    for transfer, (start, size) in enumerate(starts_and_sizes):
        while finished := stepped.next_done(float(start)):
            done.update(finished)
        stepped.add(transfer, size, float(start), latency)
    while finished := stepped.next_done(float("inf")):
        done.update(finished)
    assert done == pytest.approx(run(starts_and_sizes, 10.0, latency))
