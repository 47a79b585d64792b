"""Rank and worker resolution (tierstore.torch.topology)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tierstore.errors import InvalidArgument
from tierstore.torch.order import Slot
from tierstore.torch.topology import current_slot, distributed_rank, given_rank, warn_if_idle


def test_rank_comes_from_the_environment_when_no_process_group() -> None:
    assert distributed_rank({}) == (0, 1)
    assert distributed_rank({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert current_slot({"RANK": "1", "WORLD_SIZE": "3"}) == Slot(1, 3, 0, 1)


@pytest.mark.parametrize(
    "env", [{"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}]
)
def test_bad_rank_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        distributed_rank(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "4"}, r"WORLD_SIZE=4 is set but RANK is not"),
        ({"RANK": "1"}, r"RANK=1 is set but WORLD_SIZE is not"),
        ({"RANK": "1", "WORLD_SIZE": ""}, r"RANK=1 is set but WORLD_SIZE is not"),
    ],
)
def test_one_rank_variable_without_the_other_is_refused(env: dict[str, str], message: str) -> None:
    # WORLD_SIZE alone read as rank 0 of N, silently: every process read rank 0's share.
    # RANK alone was refused as "RANK=1 and WORLD_SIZE=1", naming a WORLD_SIZE never set.
    with pytest.raises(InvalidArgument, match=message) as caught:
        distributed_rank(env)
    assert "rank= and world_size=" in str(caught.value)  # the way out when they are unset


@pytest.mark.parametrize(
    "env", [{"WORLD_SIZE": "1"}, {"RANK": "0"}, {"RANK": "0", "WORLD_SIZE": ""}]
)
def test_one_variable_that_can_only_mean_one_process_is_taken(env: dict[str, str]) -> None:
    # An environment that exports WORLD_SIZE=1 (or RANK=0) alone for a one-process run
    # read as it always had; refusing it broke such a run for nothing.
    assert distributed_rank(env) == (0, 1)


def test_idle_slots_are_warned_about_once_a_rank() -> None:
    with pytest.warns(UserWarning, match="2 of them get no shard"):
        warn_if_idle(2, Slot(0, 2, 0, 2))
    with pytest.warns(UserWarning, match="2 of them get no shard"):
        warn_if_idle(2, Slot(1, 2, 0, 2))  # another rank's first worker
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_idle(2, Slot(0, 2, 1, 2))  # its other workers say nothing


def test_a_given_rank_wins_over_the_environment() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "8"}  # a global rank under tensor parallelism
    assert current_slot(env, given=(1, 2)) == Slot(1, 2, 0, 1)
    assert current_slot(env, given=None) == Slot(3, 8, 0, 1)


@pytest.mark.parametrize(
    ("rank", "world", "message"),
    [
        (1, None, "together"),
        (None, 2, "together"),
        (2, 2, "do not name a rank"),
        (-1, 2, "do not name a rank"),
        (0, 0, "do not name a rank"),
        (True, 2, "must be an int"),
        (0, "2", "must be an int"),
    ],
)
def test_a_given_rank_is_checked(rank: object, world: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        given_rank(rank, world)  # type: ignore[arg-type]


def test_no_given_rank_is_none() -> None:
    assert given_rank(None, None) is None
    assert given_rank(0, 1) == (0, 1)


def test_a_given_rank_may_be_a_numpy_integer() -> None:
    # As every count of the plugin may (a rank read from an array of them, say).
    rank = given_rank(np.int64(1), np.int32(2))  # type: ignore[arg-type]
    assert rank == (1, 2) and all(type(n) is int for n in rank)
