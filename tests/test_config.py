"""Engine settings: a value that cannot work is refused, saying what and why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tierstore.config import EngineSettings, load_settings
from tierstore.errors import InvalidArgument


def test_a_hot_tier_smaller_than_a_frame_names_both_figures() -> None:
    # It said only "must hold at least one frame", with neither number.
    with pytest.raises(InvalidArgument, match="1000000 is less than max_frame_bytes, 4194304"):
        EngineSettings(hot_capacity_bytes=1_000_000)
    assert EngineSettings(hot_capacity_bytes=4 << 20).hot_capacity_bytes == 4 << 20


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('archive = "http://x"', "archive must be a table"),
        ("hot_capacity_bytes = [1]", "hot_capacity_bytes must be a whole number"),
        ("[archive]\nbucket = 5", "archive.bucket must be a string"),
        ("cold_read_parallelism = -1", "cold_read_parallelism must be at least 1"),
        ("mover_threads = 2.5", "mover_threads must be a whole number"),
        ("high_watermark = true", "high_watermark must be a number"),
        ("promotion_threads = true", "promotion_threads must be a whole number"),
        ("max_read_leases = 0", "max_read_leases must be at least 1"),
        ("backlog_cap_bytes = -1", "must not be negative"),
        ("mover_retry_initial_s = -1", "mover_retry_initial_s must be a positive"),
        ("hot_capacity_bytes = 99999999999999999999", "at most"),
        ("data_dir = 5", "data_dir must be a path"),
    ],
)
def test_a_settings_file_with_a_wrong_type_or_value_is_refused_by_name(
    tmp_path: Path, toml: str, says: str
) -> None:
    # Some crashed with a traceback (a list, a table given as a string, a bad bucket);
    # the rest were taken (true for a thread count as 1, a negative backlog cap).
    path = tmp_path / "node.toml"
    path.write_text(toml + "\n")
    with pytest.raises(InvalidArgument, match=says):
        load_settings(path, environ={})


def test_a_map_smaller_than_the_hot_tier_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tierstore.config"):
        EngineSettings(hot_capacity_bytes=64 << 20, map_size_bytes=24 << 20)
    assert "fills before eviction starts" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tierstore.config"):
        EngineSettings(hot_capacity_bytes=64 << 20)
    assert caplog.text == ""
