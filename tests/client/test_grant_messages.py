"""Local-read messages and host identity (tierstore/wire/local.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierstore.engine.localreads import LocalReadCount
from tierstore.errors import InvalidArgument, InvalidName
from tierstore.v1 import shards_pb2
from tierstore.wire.local import (
    HostIdentity,
    LocalGrant,
    grant_from_pb,
    grant_to_pb,
    read_counts_from_pb,
    read_counts_to_pb,
    this_host,
)

GRANT = LocalGrant(
    path=Path("/srv/tierstore/hot"),
    map_size=1 << 30,
    device=2049,
    inode=1234,
    host=HostIdentity("boot", "pid:[4026531836]", "node-1"),
    server_pid=42,
    ttl_s=60.0,
)


def test_a_grant_survives_the_wire() -> None:
    assert grant_from_pb(grant_to_pb(GRANT)) == GRANT


@pytest.mark.parametrize(
    "change",
    [
        {"path": ""},
        {"path": "relative/hot"},
        {"map_size": 0},
        {"server_pid": 0},
        {"ttl_s": 0.0},
        {"ttl_s": -1.0},
        {"ttl_s": float("nan")},
        {"ttl_s": float("inf")},
        {"ttl_s": 1e9},
    ],
)
def test_a_grant_that_names_no_usable_place_or_lifetime_is_refused(
    change: dict[str, object],
) -> None:
    message = grant_to_pb(GRANT)
    for field, value in change.items():
        setattr(message, field, value)
    with pytest.raises(InvalidArgument):
        grant_from_pb(message)


def test_host_identity_compares_boot_and_pid_namespace() -> None:
    here = this_host()
    assert here.known, "this test machine has /proc"
    assert here.same_as(HostIdentity(here.boot_id, here.pid_namespace, "another-name"))
    assert not here.same_as(HostIdentity("other-boot", here.pid_namespace))
    assert not here.same_as(HostIdentity(here.boot_id, "pid:[1]"))
    assert not HostIdentity("", "").same_as(HostIdentity("", ""))


def test_this_host_reads_what_it_can(tmp_path: Path) -> None:
    this_host.cache_clear()
    try:
        assert this_host(tmp_path) == HostIdentity("", "", this_host(tmp_path).hostname)
        assert not this_host(tmp_path).known
    finally:
        this_host.cache_clear()


def test_read_counts_survive_the_wire() -> None:
    counts = [LocalReadCount("a/b.bin", 7, 3), LocalReadCount("c", 1 << 63, 1)]
    message = read_counts_to_pb("ds", counts)
    assert message.dataset == "ds"
    assert read_counts_from_pb(message) == counts


def test_bad_read_counts_are_refused() -> None:
    with pytest.raises(InvalidName):
        read_counts_from_pb(read_counts_to_pb("d", [LocalReadCount("/abs", 1, 1)]))
    zero = shards_pb2.ReportLocalReadsRequest(
        dataset="d", reads=[shards_pb2.LocalReadCount(shard="s", generation=1, count=0)]
    )
    with pytest.raises(InvalidArgument):
        read_counts_from_pb(zero)
