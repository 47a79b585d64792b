"""A node restarted on an archive that is not its own — its bucket, prefix or endpoint
changed, or the embedded archive's directory deleted — refuses to start, saying so,
instead of serving with archived shards it cannot read and uploading its new ones to
the other archive. Given its archive again, it starts as it was."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tierstore.tiers.s3 import S3Settings

from .conftest import ServerProcess, archived_keys, poll, with_flag


def _refused(server: ServerProcess) -> str:
    """Start ``server``, which must exit with 1; what it printed."""
    try:
        server.start()
    except AssertionError as exc:
        assert "the server exited with 1" in str(exc), str(exc)
        return str(exc)
    server.stop()
    raise AssertionError("the node started on an archive that is not its own")


@pytest.mark.timeout(180)
def test_a_node_restarted_on_another_archive_is_refused(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir)
    with first.connect() as client:
        client.create_dataset("wt", encrypted=False, durability="write-through")
        client.put("wt", "a", b"archived before the switch")
    assert first.stop() == 0
    original = first.extra_args[first.extra_args.index("--prefix") + 1]
    moved = with_flag(first, "--prefix", original + "elsewhere/")
    args = moved.extra_args
    message = _refused(moved)
    assert "holds none of this node's 1 archived dataset(s)" in message, message
    assert "--prefix" in message

    def flag(name: str) -> str:
        return args[args.index(name) + 1]

    elsewhere = S3Settings(
        endpoint_url=flag("--s3-endpoint"),
        bucket=flag("--bucket"),
        prefix=flag("--prefix"),
        access_key_id=flag("--s3-access-key"),
        secret_access_key=flag("--s3-secret-key"),
    )
    assert archived_keys(elsewhere) == ()  # nothing of the node's was written there

    back = spawn_server(data_dir)  # its own archive again
    assert back.extra_args[back.extra_args.index("--prefix") + 1] == original
    with back.connect() as client:
        assert client.get("wt", "a").to_pybytes() == b"archived before the switch"


@pytest.mark.timeout(240)
def test_a_node_whose_embedded_archive_was_deleted_is_refused(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir, embedded=True)
    with first.connect() as client:
        client.create_dataset("wb", encrypted=False)  # write-back: archived by the mover
        client.put("wb", "a", b"archived, then the archive went")
        poll(lambda: client.stats()["journal_entries"] == 0, 60, "the upload")
    assert first.stop() == 0
    shutil.rmtree(data_dir / "archive")
    message = _refused(ServerProcess(data_dir))
    assert "holds none of this node's 1 archived dataset(s)" in message, message
