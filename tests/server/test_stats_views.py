"""What ``tierstore stats`` tells an operator about the tiers: why a shard is not hot."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierstore.tiers.seaweedfs import SeaweedServer

from .conftest import ServerProcess, poll, tierstore_command, unique
from .test_archive_down import node_behind_a_switch


def _stats(node: ServerProcess) -> dict[str, Any]:
    """What ``tierstore --json stats`` prints."""
    shown = subprocess.run(
        [tierstore_command(), "--json", "stats"],
        env=node.cli_env(),
        capture_output=True,
        check=True,
    )
    figures: dict[str, Any] = json.loads(shown.stdout)
    return figures


def test_a_pin_the_archive_cannot_promote_says_so_in_stats(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # A pinned shard left cold because the archive is unreachable: with no upload
    # pending, stats said nothing was wrong (the reason was in the log alone).
    node, proxy = node_behind_a_switch(tmp_path, seaweedfs, s3_bucket, spawn_server, "pinview")
    dataset = unique()

    def stats() -> dict[str, Any]:
        return _stats(node)

    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
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


def test_stats_show_each_datasets_backlog_and_how_long_the_oldest_waits(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # Only the node-wide backlog showed: which dataset's writes waited for the archive,
    # and for how long the oldest had, was nowhere.
    node, proxy = node_behind_a_switch(tmp_path, seaweedfs, s3_bucket, spawn_server, "backlogview")
    first, second = unique(), unique()
    proxy.down()  # the archive off: every write waits

    def stats() -> dict[str, Any]:
        return _stats(node)

    def gauge() -> float:
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        (line,) = [x for x in text.splitlines() if x.startswith("tierstore_journal_oldest_age")]
        return float(line.split()[-1])

    with node.connect(local_reads=False) as client:
        client.create_dataset(first, encrypted=False)
        client.create_dataset(second, encrypted=False)
        for name in ("a", "b", "c"):
            client.put(first, name, os.urandom(20_000))
        client.put(second, "z", os.urandom(50_000))
        figures = stats()
        for dataset, shards in ((first, 3), (second, 1)):
            usage = figures["datasets"][dataset]
            # Stored bytes, as the node-wide figure and hot_bytes count them.
            assert usage["backlog_shards"] == shards
            assert usage["backlog_bytes"] == usage["hot_bytes"] > usage["bytes"]
        assert figures["backlog_bytes"] == sum(
            figures["datasets"][d]["backlog_bytes"] for d in (first, second)
        )
        waited = poll(lambda: stats()["oldest_journal_age_s"] >= 1.0 and gauge(), 30, "a wait", 0.2)
        assert waited >= 1.0
        # An overwrite's pending upload is forgone: its bytes leave its dataset's backlog.
        client.put(second, "z", os.urandom(10_000))
        usage = stats()["datasets"][second]
        assert usage["backlog_shards"] == 1 and usage["backlog_bytes"] == usage["hot_bytes"]
        proxy.up()

        def drained() -> bool:
            figures = stats()
            per_dataset = [figures["datasets"][d] for d in (first, second)]
            return figures["journal_entries"] == 0 and all(
                (u["backlog_shards"], u["backlog_bytes"]) == (0, 0) for u in per_dataset
            )

        poll(drained, 120, "both datasets' backlogs to drain", 0.2)
        assert stats()["oldest_journal_age_s"] == 0.0
        assert gauge() == 0.0
