"""Whether the archive takes the data of the journal entry in progress
(tierstore/engine/stallwatch.py). A real frozen archive under a store is in
tests/engine/test_failures.py."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from tests.engine.stores import wait_until
from tierstore.engine import stallwatch
from tierstore.engine.stallwatch import StallWatch

MiB = 1024 * 1024


def test_a_slow_attempt_stalls_after_the_stall_time_per_part_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With 16 parts in flight on a 2 MB/s link, a healthy upload asked for its next
    # frame only every 67 s: it showed as a failing archive, and puts at their quota
    # were refused at once.
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 10.0)
    watch = StallWatch(parts_in_flight=4)
    assert watch.stalled_for() is None and watch.describe() is None  # none in progress
    watch.begin()
    watch.uploading(100 * MiB)  # 13 parts of 8 MiB: 4 in flight at once
    watch._since = time.monotonic() - 35  # within 4 x 10 s
    assert watch.stalled_for() is None and watch.describe() is None
    watch._since = time.monotonic() - 45
    assert (watch.stalled_for() or 0) >= 45 and "taken no data" in (watch.describe() or "")
    watch.progressed()
    assert watch.stalled_for() is None
    watch._since = time.monotonic() - 45
    watch.end()  # between attempts: nothing in progress
    assert watch.stalled_for() is None


def test_an_upload_of_fewer_parts_than_may_be_in_flight_gets_their_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stall time was 30 s for every part that *may* be in flight: with 8 mover
    # threads (the Kubernetes manifest's), a frozen archive under a one-request upload
    # went unseen for 240 s, a write-through put was told NotArchivedYet only then, and
    # a node's stop waited as long for it.
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 10.0)
    watch = StallWatch(parts_in_flight=8)
    watch.begin()
    watch._since = time.monotonic() - 15  # reading frames, a manifest: one request
    assert watch.stalled_for() is not None
    watch.uploading(MiB)  # one part
    assert watch.stalled_for() is not None
    watch.uploading(20 * MiB)  # three parts: three in flight
    watch._since = time.monotonic() - 25
    assert watch.stalled_for() is None
    watch._since = time.monotonic() - 35
    assert watch.stalled_for() is not None


def test_the_stall_time_grows_with_the_parts_of_a_large_upload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An object too large for 10,000 parts of 8 MiB goes up in larger parts, one of
    # which hands the archive no new data for as long as it takes to send: a part of
    # 100 MiB at 1 MB/s is healthy, and took 100 s, past the 30 s stall time.
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 10.0)
    watch = StallWatch(parts_in_flight=2)
    watch.begin()
    watch.uploading(10_000 * 40 * MiB)  # parts of 40 MiB: 5 times 8 MiB
    watch._since = time.monotonic() - 90  # within 2 x 10 s x 5
    assert watch.stalled_for() is None
    watch._since = time.monotonic() - 110
    assert (watch.stalled_for() or 0) >= 110
    watch.uploading(0)  # the upload done (its manifest next): back to 8 MiB parts
    assert watch.stalled_for() is not None
    watch.uploading(10_000 * 8 * MiB)  # fits 8 MiB parts: no more time than those
    watch._since = time.monotonic() - 25
    assert watch.stalled_for() is not None
    watch.uploading(10_000 * 40 * MiB)
    watch.begin()  # a new attempt starts from 8 MiB parts
    watch._since = time.monotonic() - 25
    assert watch.stalled_for() is not None


def test_a_stall_is_logged_once_and_so_is_the_data_going_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stats and /metrics said the archive had stalled; the log said nothing until a
    # request failed, minutes later.
    caplog.set_level(logging.INFO, logger=stallwatch.__name__)
    monkeypatch.setattr(stallwatch, "STALL_REPORT_S", 0.2)
    watch, stop = StallWatch(parts_in_flight=1), threading.Event()
    watcher = threading.Thread(target=watch.log_stalls, args=(stop,), daemon=True)

    def stalls_warned() -> int:
        return sum("taken no data" in r.getMessage() for r in caplog.records)

    watch.begin()
    watch._since = time.monotonic() - 5  # stalled
    watcher.start()
    try:
        wait_until(lambda: stalls_warned() == 1, "the stall to be logged")
        watch.progressed()  # the same attempt hands data
        wait_until(lambda: "taking the journal entry's data again" in caplog.text, "the end")
        # A new attempt that stalls (the last one failed, and said so) is warned of anew.
        watch.begin()
        watch._since = time.monotonic() - 5
        wait_until(lambda: stalls_warned() == 2, "the second stall to be logged")
        watch.end()  # it failed: that is logged as it fails, not as data going again
        time.sleep(0.3)  # a pass of the watcher or more: nothing more is said
        assert caplog.text.count("data again") == 1 and stalls_warned() == 2
    finally:
        stop.set()
        watcher.join(5)
    assert not watcher.is_alive()
