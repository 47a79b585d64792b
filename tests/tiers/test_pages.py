"""release_pages: mapped file pages leave the resident set, the data stays readable."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from tierstore.tiers.pages import release_pages

MiB = 1 << 20


def _resident_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile line in /proc/self/status")


def test_released_pages_leave_rss_and_the_data_stays_intact(tmp_path: Path) -> None:
    data = os.urandom(64 * MiB)
    env = lmdb.open(str(tmp_path), map_size=1 << 30)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"frame", data)
        with env.begin(buffers=True) as txn:
            view = txn.get(b"frame")
            assert bytes(view) == data  # maps every page in
            before = _resident_file_kib()
            release_pages(view)
            after = _resident_file_kib()
            assert before - after >= 60 * 1024, (before, after)
            assert bytes(view) == data  # faulted back in from the page cache
    finally:
        env.close()


def test_small_views_are_left_alone(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), map_size=1 << 24)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"k", b"tiny value")
        with env.begin(buffers=True) as txn:
            view = txn.get(b"k")
            release_pages(view)  # less than a page: nothing to release
            assert bytes(view) == b"tiny value"
    finally:
        env.close()
