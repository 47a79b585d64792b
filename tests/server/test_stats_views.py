"""What ``tierstore stats`` tells an operator about the tiers: why a shard is not hot."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tierstore.tiers.seaweedfs import SeaweedServer

from .conftest import ServerProcess, poll, tierstore_command, unique
from .test_archive_down import SwitchableProxy


def test_a_pin_the_archive_cannot_promote_says_so_in_stats(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # A pinned shard left cold because the archive is unreachable: with no upload
    # pending, stats said nothing was wrong (the reason was in the log alone).
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"{unique('pinview')}/")
    target = urlsplit(s3.endpoint_url)
    proxy = SwitchableProxy((target.hostname or "127.0.0.1", target.port or 80))
    proxy.up()
    node = spawn_server(
        tmp_path / "node",
        *("--s3-endpoint", proxy.url, "--bucket", s3.bucket, "--prefix", s3.prefix),
        *("--s3-access-key", s3.access_key_id, "--s3-secret-key", s3.secret_access_key),
        embedded=True,  # (no archive flags of the fixture's own)
    )
    dataset = unique()

    def stats() -> dict[str, object]:
        shown = subprocess.run(
            [tierstore_command(), "--json", "stats"],
            env=node.cli_env(),
            capture_output=True,
            check=True,
        )
        figures: dict[str, object] = json.loads(shown.stdout)
        return figures

    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, durability="write-through")
        client.put(dataset, "s", os.urandom(30_000))
        client.evict(dataset, "s")
        proxy.down()
        client.pin(dataset, "s")
        failing = poll(lambda: stats()["archive_error"], 60, "stats to say why")
        assert f"{dataset}/s" in str(failing)
        assert stats()["journal_entries"] == 0  # no upload failed: the pin's promotion did
        assert not client.stat(dataset, "s").hot
        proxy.up()
        poll(lambda: client.stat(dataset, "s").hot, 120, "the pinned shard to turn hot")
        poll(lambda: stats()["archive_error"] is None, 60, "stats to clear the reason")
