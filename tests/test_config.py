"""Engine settings: a value that cannot work is refused, saying what and why."""

from __future__ import annotations

import pytest

from tierstore.config import EngineSettings
from tierstore.errors import InvalidArgument


def test_a_hot_tier_smaller_than_a_frame_names_both_figures() -> None:
    # It said only "must hold at least one frame", with neither number.
    with pytest.raises(InvalidArgument, match="1000000 is less than max_frame_bytes, 4194304"):
        EngineSettings(hot_capacity_bytes=1_000_000)
    assert EngineSettings(hot_capacity_bytes=4 << 20).hot_capacity_bytes == 4 << 20
