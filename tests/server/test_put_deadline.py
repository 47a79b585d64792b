"""A put's wait for quota room ends before its caller's deadline."""

from __future__ import annotations

import pytest

from tierstore.server.shards import _wait_within


class Deadline:
    """The one ServicerContext method _wait_within reads."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    "remaining, wait",
    [(None, None), (30.0, 29.0), (1.5, 0.5), (0.2, 0.0), (0.0, 0.0)],
)
def test_the_wait_leaves_the_commit_a_second_of_the_deadline(
    remaining: float | None, wait: float | None
) -> None:
    assert _wait_within(Deadline(remaining)) == pytest.approx(wait)  # type: ignore[arg-type]
