"""A real ``tierstore serve`` on a data directory a newer release's format marks: the
start is refused in one line naming the format, and the directory is left as it was
(tierstore/engine/catalog.py, Catalog.mark_format)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engine.test_formats import NEWER, format_mark, set_format_mark
from tierstore.engine.records import FORMAT_VERSION

from .conftest import ServerProcess, serve_error_lines


@pytest.mark.timeout(240)
def test_a_node_refuses_a_hot_tier_of_a_newer_format(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir)
    with node.connect(local_reads=False) as client:
        client.create_dataset("kept", encrypted=False)
        client.put("kept", "s", b"written before")
    assert node.stop() == 0
    assert format_mark(data_dir) == str(FORMAT_VERSION).encode()

    set_format_mark(data_dir, str(NEWER).encode())  # as a newer release would leave it
    with pytest.raises(AssertionError, match="the server exited with 1") as refused:
        spawn_server(data_dir)
    lines = serve_error_lines(str(refused.value).split("stderr:\n", 1)[1])
    assert lines and lines[-1].startswith("error: NewerFormat: the hot tier at "), lines
    assert f"in format {NEWER}; this release reads format {FORMAT_VERSION}" in lines[-1]
    assert format_mark(data_dir) == str(NEWER).encode()

    set_format_mark(data_dir, str(FORMAT_VERSION).encode())
    again = spawn_server(data_dir)
    with again.connect(local_reads=False) as client:
        assert client.get("kept", "s") == b"written before"
