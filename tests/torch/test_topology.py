"""Rank and worker resolution (tierstore.torch.topology)."""

from __future__ import annotations

import pytest

from tierstore.errors import InvalidArgument
from tierstore.torch.order import Slot
from tierstore.torch.topology import current_slot, distributed_rank, warn_if_idle


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


def test_idle_slots_are_warned_about() -> None:
    with pytest.warns(UserWarning, match="2 of them get no shard"):
        warn_if_idle(2, Slot(0, 2, 0, 2))
