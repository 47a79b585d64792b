"""An admin steering the tiers of a node of its own (a small hot tier): what pin,
unpin, evict, prefetch and stats say, and what they leave behind.

The real ``tierstore serve`` (``spawn_server``: the session SeaweedFS as its archive)
and the ``tierstore`` command run in this process (as tests/server/test_e2e_cli.py
runs it).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierstore import errors
from tierstore.client.client import Client

from .conftest import ServerProcess, poll, unique
from .test_e2e_cli import run

#: the hot tier of these nodes: two of the largest frames a put sends (4 MiB)
HOT_CAPACITY = 8 << 20


@pytest.fixture
def node(tmp_path: Path, spawn_server: Callable[..., ServerProcess]) -> ServerProcess:
    return spawn_server(tmp_path / "node", "--hot-capacity", str(HOT_CAPACITY))


def shrunk_node(
    tmp_path: Path,
    spawn_server: Callable[..., ServerProcess],
    dataset: str,
    big: str = "big",
    **create: str,
) -> ServerProcess:
    """A node of HOT_CAPACITY whose write-through ``dataset`` holds the cold shard
    ``big``, larger than its hot tier: put while the node had four times the capacity (a
    put larger than the hot tier is refused), then started again with less."""
    larger = spawn_server(tmp_path / "node", "--hot-capacity", str(4 * HOT_CAPACITY))
    with larger.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through", **create)
        client.put(dataset, big, os.urandom(HOT_CAPACITY + (1 << 20)))
        client.evict(dataset, big)
    larger.stop()
    return spawn_server(tmp_path / "node", "--hot-capacity", str(HOT_CAPACITY))


def test_a_put_larger_than_the_hot_tier_is_refused_and_evicts_nothing(
    node: ServerProcess,
) -> None:
    # It evicted every archived shard to make room it could never have, went in past
    # the hot tier's capacity, and was evicted itself once archived: the cache wiped.
    dataset = unique()
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
        for name in ("a", "b", "c"):
            client.put(dataset, name, os.urandom(HOT_CAPACITY // 4))
        with pytest.raises(errors.HotTierFull, match=r"could never be stored") as refused:
            client.put(dataset, "big", os.urandom(HOT_CAPACITY))
        assert f"{dataset}/big" in str(refused.value)
        with pytest.raises(errors.ShardNotFound):
            client.stat(dataset, "big")
        assert all(client.stat(dataset, name).hot for name in ("a", "b", "c"))


def test_a_pin_or_prefetch_of_a_shard_larger_than_the_hot_tier_is_refused(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # The pin was accepted, and said to be "queued for promotion, tried again while
    # there is no room": each try was skipped, once a minute for as long as the pin
    # held. The prefetch was reported "queued 1 shard", and skipped. Neither shard
    # ever turned hot.
    dataset = unique()
    node = shrunk_node(tmp_path, spawn_server, dataset)
    env = node.cli_env()
    with node.connect(local_reads=False) as client:
        client.put(dataset, "small", b"s" * 1000)
        client.evict(dataset, "small")
        assert not client.stat(dataset, "big").hot

        refused = run(env, "prefetch", dataset, "small", "big", "nosuch")
        assert refused.returncode == 1, refused.stderr.decode()
        assert json.loads(refused.stdout) == {"queued": 0, "not_found": ["nosuch"]}
        said = refused.stderr.decode()
        assert "HotTierFull" in said and f"{dataset}/big" in said, said
        assert "could never be made hot" in said and "nothing was queued" in said, said
        with pytest.raises(errors.HotTierFull, match="nothing was queued"):
            client.prefetch(dataset, ["big"])
        assert not client.stat(dataset, "small").hot  # nothing queued indeed

        refused = run(env, "pin", dataset, "small", "big")
        assert refused.returncode == 1, refused.stderr.decode()
        assert json.loads(refused.stdout) == {
            "pinned": ["small"],
            "not_pinned": ["big"],
            "bytes_queued": 1000 + 8,
            "in_doubt": None,
        }
        said = refused.stderr.decode()
        assert "HotTierFull" in said and "big" in said and "could never" in said, said
        assert not client.stat(dataset, "big").pinned  # nothing promised
        assert client.stat(dataset, "small").pinned
        with pytest.raises(errors.HotTierFull):
            client.pin(dataset, "big", ttl_s=60)
        assert not client.stat(dataset, "big").pinned
        poll(lambda: client.stat(dataset, "small").hot, 30, "the small shard to turn hot")
        assert not client.stat(dataset, "big").hot


@pytest.fixture(scope="module")
def env(server: ServerProcess) -> dict[str, str]:
    """The session server's CLI environment."""
    return server.cli_env()


def test_pin_and_evict_stopped_by_an_error_keep_their_json_keys(
    env: dict[str, str], admin: Client
) -> None:
    # pin's report lost bytes_queued when a later shard failed (what it had queued was
    # not said), and evict's had no in_doubt, which the others' reports all hold.
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False, durability="write-through")
    admin.put(dataset, "cold", b"c" * 5000)
    assert admin.evict(dataset, "cold") > 0

    pinned = run(env, "pin", dataset, "cold", "nosuch")
    assert pinned.returncode == 3, pinned.stderr.decode()
    assert json.loads(pinned.stdout) == {
        "pinned": ["cold"],
        "not_pinned": ["nosuch"],
        "bytes_queued": 5000 + 8,
        "in_doubt": None,
    }
    evicted = run(env, "evict", dataset, "nosuch")
    assert evicted.returncode == 3, evicted.stderr.decode()
    assert json.loads(evicted.stdout) == {
        "evicted": [],
        "already_cold": [],
        "not_evicted": ["nosuch"],
        "freed_bytes": 0,
        "kept": {},
        "in_doubt": None,
    }


def test_a_pin_waiting_for_room_is_tried_again_after_a_restart(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # The pins waiting for room (or for the archive) were held in memory alone: after a
    # restart nothing tried them again, and the shard stayed pinned and cold for good,
    # though the room came (the pin of a hot shard beside it ended).
    node = spawn_server(tmp_path / "node", "--hot-capacity", str(HOT_CAPACITY))
    dataset = unique()
    third = HOT_CAPACITY // 3
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
        for name in ("held-1", "held-2", "cold"):
            client.put(dataset, name, os.urandom(third))
        client.evict(dataset, "cold")
        client.pin(dataset, "held-1")
        client.pin(dataset, "held-2")
        assert client.pin(dataset, "cold") > 0  # no room: the two others are pinned
        assert not client.stat(dataset, "cold").hot
    node.stop()
    node.start(same_ports=True)
    with node.connect(local_reads=False) as client:
        assert client.stat(dataset, "cold").pinned
        client.unpin(dataset, "held-1")  # room, as a pin that ended leaves it
        poll(lambda: client.stat(dataset, "cold").hot, 30, "the pinned shard to turn hot")
        assert not client.stat(dataset, "held-1").hot


def skipped_promotions(node: ServerProcess) -> float:
    """``tierstore_promotions_skipped_total`` as the node's /metrics says now."""
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "tierstore_promotions_skipped":
            return float(family.samples[0].value)
    raise AssertionError(f"no tierstore_promotions_skipped_total in:\n{text}")


def test_a_planned_shard_larger_than_the_hot_tier_is_not_fetched_again_and_again(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # The policy named it first at every prefetch pass (each second), and every
    # promotion of it was skipped: tierstore_promotions_skipped_total counted one a
    # second, for as long as the plan lived, with nothing short of room.
    dataset = unique()
    names = ["0-big", "1", "2"]
    node = shrunk_node(tmp_path, spawn_server, dataset, names[0], policy="clairvoyant")
    with node.connect(local_reads=False) as client:
        for name in names[1:]:
            client.put(dataset, name, os.urandom(1 << 20))
        for name in names:
            client.evict(dataset, name)
        job = client.declare_plan(dataset, shards=names)
        client.report_position(job, 0)
        # The others are fetched ahead of the reader all the same.
        poll(
            lambda: all(client.stat(dataset, name).hot for name in names[1:]),
            30,
            "the planned shards that fit to turn hot",
        )
        deadline = time.monotonic() + 5  # five prefetch passes, at least
        while time.monotonic() < deadline:
            assert skipped_promotions(node) == 0
            client.report_position(job, 0)  # a pass, at once
            time.sleep(0.2)
        assert not client.stat(dataset, "0-big").hot


def test_a_prefetch_or_pin_of_a_shard_larger_than_its_quota_is_refused_by_the_cli(
    node: ServerProcess,
) -> None:
    # The engine refuses it with QuotaExceeded; the command caught HotTierFull only,
    # so its report (what was queued, the names not found) was never printed.
    dataset = unique()
    env = node.cli_env()
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
        client.put(dataset, "small", b"s" * 1000)
        client.put(dataset, "big", os.urandom(1 << 20))
        for name in ("small", "big"):
            client.evict(dataset, name)
        client.update_dataset(dataset, hot_quota_bytes=1 << 19)  # below big alone

        refused = run(env, "prefetch", dataset, "small", "big", "nosuch")
        assert refused.returncode == 1, refused.stderr.decode()
        assert json.loads(refused.stdout) == {"queued": 0, "not_found": ["nosuch"]}
        said = refused.stderr.decode()
        assert "QuotaExceeded" in said and "big" in said, said
        assert not client.stat(dataset, "small").hot  # nothing queued

        refused = run(env, "pin", dataset, "small", "big")
        assert refused.returncode == 1, refused.stderr.decode()
        assert json.loads(refused.stdout)["not_pinned"] == ["big"]
        assert "QuotaExceeded" in refused.stderr.decode()
        assert not client.stat(dataset, "big").pinned


def metric(node: ServerProcess, name: str) -> float:
    """Gauge or counter ``name`` (its first sample) as the node's /metrics says now."""
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"no {name} in:\n{text}")


def test_pins_left_cold_for_want_of_room_are_shown_with_their_reason(
    env: dict[str, str], admin: Client, server: ServerProcess
) -> None:
    # Pinning more than the quota (or the hot tier) holds left the rest pinned and cold:
    # stats showed only the node's running count of skipped promotions, stats --json
    # and /metrics no pinned figure at all.
    dataset = unique()
    stored = 10_000 + 8  # one frame, its checksum
    admin.create_dataset(
        dataset, encrypted=False, durability="write-through", hot_quota_bytes=2 * stored
    )
    for name in ("a", "b", "c"):
        admin.put(dataset, name, os.urandom(10_000))
    for name in ("a", "b", "c"):
        admin.evict(dataset, name)
    for name in ("a", "b"):
        admin.pin(dataset, name)
        poll(lambda n=name: admin.stat(dataset, n).hot, 30, f"{name} to turn hot")
    assert admin.pin(dataset, "c") == stored  # no room: a and b are pinned

    figures = poll(
        lambda: (stats := admin.stats()).get("pins_waiting_for_room") and stats,
        30,
        "the pin to wait for room",
    )
    assert figures["pins_waiting_for_room_bytes"] >= stored
    mine = figures["datasets"][dataset]
    assert (mine["pinned_shards"], mine["pinned_bytes"]) == (3, 3 * stored)
    assert (mine["pinned_cold_shards"], mine["pinned_cold_bytes"]) == (1, stored)
    shown = json.loads(run(env, "stats", dataset).stdout)
    assert shown["pins_waiting_for_room"] >= 1
    assert shown["datasets"][dataset]["pinned_cold_shards"] == 1
    told = run(env, "stats", dataset, json_output=False).stdout.decode()
    assert "cold for want of room" in told, told
    assert metric(server, "tierstore_pins_waiting_for_room") >= 1
    assert metric(server, "tierstore_pins_waiting_for_room_bytes") >= stored
    assert admin.stat(dataset, "c").waiting_for_room
    # stat said only "hot no, pinned yes".
    told = run(env, "stat", dataset, "c", json_output=False).stdout.decode()
    assert "waiting for room" in told, told
    assert json.loads(run(env, "stat", dataset, "c").stdout)["waiting_for_room"] is True
    assert json.loads(run(env, "stat", dataset, "a").stdout)["waiting_for_room"] is False
    for name in ("a", "b", "c"):
        admin.unpin(dataset, name)
    admin.delete_dataset(dataset, force=True)


def test_pin_warns_when_the_pins_hold_more_than_the_room(node: ServerProcess) -> None:
    # Pinning 8 MB on a 4 MiB hot tier said only that the bytes were queued for
    # promotion; the shards that found no room stayed pinned and cold, unexplained.
    env = node.cli_env()
    capped, wide = unique(), unique()
    third = HOT_CAPACITY // 3 + 1000  # three of them pass the high watermark
    with node.connect(local_reads=False) as client:
        client.create_dataset(
            capped, encrypted=False, durability="write-through", hot_quota_bytes=25_000
        )
        client.create_dataset(wide, encrypted=False, durability="write-through")
        for name in ("a", "b", "c"):
            client.put(capped, name, b"q" * 10_000)
            client.put(wide, name, os.urandom(third))
        client.put(wide, "d", b"d" * 100)
        assert client.evict(wide, "d") > 0  # to prefetch once the pins take the room

        fits = run(env, "pin", capped, "a", "b")
        assert fits.returncode == 0 and b"warning" not in fits.stderr, fits.stderr
        assert "warning" not in json.loads(fits.stdout)
        over = run(env, "pin", capped, "c")
        assert over.returncode == 0, over.stderr.decode()
        said = over.stderr.decode()
        assert f"warning: {capped}'s pins hold 30,024 bytes, more than its hot-tier" in said
        assert "quota (25,000 bytes): some pins will stay cold until others are unpinned" in said
        assert json.loads(over.stdout)["warning"] == said.strip().replace("\n", " ")

        over = run(env, "pin", wide, "a", "b", "c", json_output=False)
        assert over.returncode == 0, over.stderr.decode()
        said = over.stderr.decode()
        assert "more than the hot tier takes below its high watermark" in said, said
        assert "some pins will stay cold until others are unpinned" in said, said
        # A prefetch said "queued" and nothing more, and its shard stayed cold.
        queued = run(env, "prefetch", wide, "d")
        assert queued.returncode == 0, queued.stderr.decode()
        said = queued.stderr.decode()
        assert "more than the hot tier takes below its high watermark" in said, said
        assert "shards queued may find no room and stay cold" in said, said
        assert json.loads(queued.stdout)["queued"] == 1
