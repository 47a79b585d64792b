"""Two nodes on one archive prefix are refused (tierstore/engine/archiveclaim.py).

Each would delete the generations the other overwrote, so the shards of one fail
``DATA_LOSS``. The slips that lead there: a node thought lost starting again after its
hot tier was rebuilt elsewhere from the archive, and a second node given the first
one's archive settings.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tierstore.tiers.seaweedfs import SeaweedServer

from .conftest import ServerProcess, archive_of, poll
from .test_backup import copy_backup

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.mark.timeout(240)
def test_a_node_whose_archive_was_rebuilt_elsewhere_is_refused_it(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    lost_dir, new_dir = tmp_path / "lost", tmp_path / "new"
    lost = spawn_server(lost_dir)
    before, after = os.urandom(3000), os.urandom(4000)
    with lost.connect() as admin:
        admin.create_dataset("plain", encrypted=False)
        admin.put("plain", "s", before)
        poll(lambda: admin.stats()["journal_entries"] == 0, 60, "the uploads", interval_s=0.2)
    copy_backup(lost_dir, tmp_path / "backup")
    assert lost.stop() == 0  # thought lost: its hot tier is in fact still there

    shutil.copytree(tmp_path / "backup", new_dir)
    rebuilt = spawn_server(new_dir, "--rebuild-from-archive")
    assert "took the archive over from node" in rebuilt.output()
    assert str(lost_dir.resolve()) in rebuilt.output()
    with rebuilt.connect() as admin:
        admin.put("plain", "s", after)  # its mover deletes the generation `lost` holds
        poll(lambda: admin.stats()["journal_entries"] == 0, 60, "the uploads", interval_s=0.2)

    with pytest.raises(AssertionError, match="the server exited") as refused:
        spawn_server(lost_dir)
    assert "belongs to another node's hot tier" in str(refused.value)
    assert str(new_dir.resolve()) in str(refused.value)
    with rebuilt.connect() as admin:  # the refused start changed nothing
        assert admin.get("plain", "s").to_pybytes() == after
    assert rebuilt.stop() == 0
    restarted = spawn_server(new_dir)
    with restarted.connect() as admin:
        assert admin.get("plain", "s").to_pybytes() == after
        assert admin.evict("plain", "s") >= len(after)
        assert admin.get("plain", "s").to_pybytes() == after  # from the archive


@pytest.mark.timeout(120)
def test_a_second_new_node_on_an_archive_prefix_in_use_is_refused(
    spawn_server: Callable[..., ServerProcess],
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_admin: S3Client,
) -> None:
    first = spawn_server(tmp_path / "first")  # nothing archived yet but its claim
    archive = archive_of(first, seaweedfs)
    # One of the first node's uploads in flight: a start refused the archive aborted it
    # (a start aborts the uploads an earlier run of its own left behind) all the same.
    in_flight = s3_admin.create_multipart_upload(
        Bucket=archive.bucket, Key=f"{archive.prefix}plain/00000000000000ff.frames"
    )["UploadId"]
    with pytest.raises(AssertionError, match="the server exited") as refused:
        spawn_server(tmp_path / "second")
    assert "belongs to another node's hot tier" in str(refused.value)
    assert str((tmp_path / "first").resolve()) in str(refused.value)
    listed = s3_admin.list_multipart_uploads(Bucket=archive.bucket, Prefix=archive.prefix)
    assert [upload["UploadId"] for upload in listed.get("Uploads", [])] == [in_flight]
    with first.connect() as admin:
        assert admin.list_datasets() == []  # it serves on
    assert first.stop() == 0

    # Its disk lost before it made a dataset, the archive holds its claim alone: a
    # rebuild has nothing to read, and takes the archive over all the same (it was
    # refused for good, its advice, --rebuild-from-archive, included).
    rebuilt = spawn_server(tmp_path / "third", "--rebuild-from-archive")
    assert "took the archive over from node" in rebuilt.output()
    # Its own now: the upload the first node left open is aborted at its start, by the
    # time it serves (before, only once its mover ran).
    listed = s3_admin.list_multipart_uploads(Bucket=archive.bucket, Prefix=archive.prefix)
    assert listed.get("Uploads", []) == []
    with rebuilt.connect() as admin:
        admin.create_dataset("plain", encrypted=False)
        admin.put("plain", "s", b"the new node serves")
        assert admin.get("plain", "s").to_pybytes() == b"the new node serves"


@pytest.mark.timeout(300)
def test_a_node_whose_linked_hot_tier_was_away_is_not_taken_for_new_once_it_is_back(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # hot/ linked to a device's mount: a start while the device was away left the mark
    # of a new hot tier, and once it was back the node took its archive back from the
    # node rebuilt meanwhile (its catalog behind the archive), without a word.
    lost_dir, new_dir = tmp_path / "lost", tmp_path / "new"
    device, unmounted = tmp_path / "device", tmp_path / "mount-point"
    device.mkdir()
    unmounted.mkdir()
    lost_dir.mkdir(mode=0o700)
    hot = lost_dir / "hot"
    hot.symlink_to(device)
    lost = spawn_server(lost_dir)
    with lost.connect() as admin:
        admin.create_dataset("plain", encrypted=False)
        admin.put("plain", "s", b"archived")
        poll(lambda: admin.stats()["journal_entries"] == 0, 60, "the upload", interval_s=0.2)
    copy_backup(lost_dir, tmp_path / "backup")
    assert lost.stop() == 0
    unchecked = lost_dir / "hot-tier.unchecked"

    def link_hot_to(target: Path) -> None:
        hot.unlink()
        hot.symlink_to(target)

    link_hot_to(tmp_path / "nothing")  # the device gone, its link dangling
    with pytest.raises(AssertionError, match="the server exited") as refused:
        spawn_server(lost_dir)
    assert "is a symbolic link to" in str(refused.value)
    assert not unchecked.exists()  # nothing said the hot tier is new
    link_hot_to(unmounted)  # an empty mount point: a new hot tier, refused as lost
    with pytest.raises(AssertionError, match="the hot tier was lost"):
        spawn_server(lost_dir)
    assert unchecked.exists()

    shutil.copytree(tmp_path / "backup", new_dir)  # thought lost: rebuilt elsewhere
    rebuilt = spawn_server(new_dir, "--rebuild-from-archive")
    assert "took the archive over from node" in rebuilt.output()
    assert rebuilt.stop() == 0
    link_hot_to(device)  # the device is back: the node's own hot tier, not a new one
    with pytest.raises(AssertionError, match="the server exited") as refused:
        spawn_server(lost_dir)
    assert "belongs to another node's hot tier" in str(refused.value)
    assert str(new_dir.resolve()) in str(refused.value)
