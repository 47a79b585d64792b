"""Refused calls are audited once per kind and window, with how many were not."""

from __future__ import annotations

import pytest

from tierstore.server.refusallog import RefusalLog, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_one_kind_is_one_line_a_window_saying_how_many_it_stood_for() -> None:
    clock = Clock()
    refusals = RefusalLog(window_s=10.0, clock=clock)
    flood = ("ipv4:10.0.0.9", "no-token", "")
    assert refusals.admit(flood) == 0  # the first is audited
    assert [refusals.admit(flood) for _ in range(1999)] == [None] * 1999
    other = ("ipv4:10.0.0.9", "revoked", "0123456789ab")  # another kind: its own line
    assert refusals.admit(other) == 0
    clock.now += 10.0
    assert refusals.admit(flood) == 1999  # the next window's line counts the rest
    assert refusals.admit(flood) is None
    clock.now += 10.0
    assert refusals.admit(flood) == 1


def test_the_kinds_remembered_are_bounded_and_a_forgotten_kinds_count_is_said() -> None:
    unsaid: list[tuple[tuple[str, ...], int]] = []
    refusals = RefusalLog(max_kinds=3, clock=Clock(), forgotten=lambda k, n: unsaid.append((k, n)))
    assert refusals.admit(("ipv4:10.0.0.9", "revoked", "0123456789ab")) == 0
    assert refusals.admit(("ipv4:10.0.0.9", "revoked", "0123456789ab")) is None
    for host in range(5):
        assert refusals.admit((f"ipv4:10.0.0.{host}", "no-token", "")) == 0
    assert len(refusals._kinds) == 3
    assert unsaid == [(("ipv4:10.0.0.9", "revoked", "0123456789ab"), 1)]  # not lost
    assert refusals.admit(("ipv4:10.0.0.0", "no-token", "")) == 0  # forgotten: afresh
    assert refusals.admit(("ipv4:10.0.0.4", "no-token", "")) is None  # remembered


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:54321", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:443", "ipv6:[::1]"),
        ("unix:/run/tierstore.sock", "unix:/run/tierstore.sock"),
        ("", ""),
    ],
)
def test_a_peer_is_known_by_its_host_not_its_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host
