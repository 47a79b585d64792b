"""Reporting local reads to the server in batches (tierstore/client/reports.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any
from unittest import mock

import pytest

from tests.server.conftest import poll
from tierstore.client import reports
from tierstore.client.localrpc import GrpcLocalReadRpc
from tierstore.client.reports import ReadReporter
from tierstore.engine.localreads import LocalReadCount
from tierstore.errors import PermissionDenied, Unavailable
from tierstore.wire.local import MAX_REPORT_ENTRIES, MAX_REPORTED_READS


class Server:
    """Records what it was sent; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[LocalReadCount]]] = []
        self.failing = False
        self.lock = threading.Lock()
        self.waited: list[bool] = []  # each call's wait_for_ready

    def __call__(self, dataset: str, counts: list[LocalReadCount], wait_for_ready: bool) -> None:
        self.waited.append(wait_for_ready)
        if self.failing:
            raise Unavailable("the server is away")
        with self.lock:
            self.sent.append((dataset, counts))

    def totals(self) -> dict[tuple[str, str, int], int]:
        out: dict[tuple[str, str, int], int] = {}
        with self.lock:
            for dataset, counts in self.sent:
                for c in counts:
                    key = (dataset, c.shard, c.generation)
                    out[key] = out.get(key, 0) + c.count
        return out


def test_reads_are_sent_after_every_n_reads_without_a_flush() -> None:
    server = Server()
    reporter = ReadReporter(server, every_reads=3, interval_s=3600)
    for _ in range(2):
        reporter.add("d", "s", 1)
    reporter.add("d", "t", 2)
    poll(lambda: server.totals() == {("d", "s", 1): 2, ("d", "t", 2): 1}, 10, "the batch")
    assert len(server.sent) == 1
    reporter.close()


def test_reads_are_sent_every_interval() -> None:
    server = Server()
    reporter = ReadReporter(server, every_reads=1000, interval_s=0.05)
    reporter.add("d", "s", 1)
    poll(lambda: server.totals() == {("d", "s", 1): 1}, 10, "the interval's report")
    reporter.close()


def test_flush_and_close_send_everything_at_once() -> None:
    server = Server()
    reporter = ReadReporter(server, every_reads=1000, interval_s=3600)
    reporter.add("a", "s", 1)
    reporter.add("b", "s", 1)
    reporter.flush()
    assert server.totals() == {("a", "s", 1): 1, ("b", "s", 1): 1}
    reporter.add("a", "s", 1)
    reporter.close()
    assert server.totals()[("a", "s", 1)] == 2
    # Flushes wait for a channel still connecting (a restarted node's); the last one,
    # at close, does not: a node gone for good must not hold up a close.
    assert server.waited == [True, True, False]
    reporter.close()  # idempotent
    reporter.add("a", "s", 1)  # and usable again (a new thread)
    reporter.flush()
    assert server.totals()[("a", "s", 1)] == 3
    reporter.close()


def test_a_failed_report_is_dropped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    server = Server()
    reporter = ReadReporter(server, every_reads=1000, interval_s=3600)
    server.failing = True
    with caplog.at_level("INFO", logger="tierstore.client.reports"):
        for _ in range(3):
            reporter.add("d", "s", 1)
            reporter.flush()
    assert server.sent == []
    assert sum("could not report" in r.message for r in caplog.records) == 1
    server.failing = False
    reporter.add("d", "s", 1)
    reporter.flush()
    assert server.totals() == {("d", "s", 1): 1}  # the failed ones are gone, not resent
    reporter.close()


def test_a_flush_stops_at_its_first_failed_report() -> None:
    # Each dataset's report was sent into the same outage with its own deadline: a
    # stat() behind five datasets' reports waited 26 s on a node that had stopped.
    server = Server()
    reporter = ReadReporter(server, every_reads=1000, interval_s=3600)
    for dataset in "abcde":
        reporter.add(dataset, "s", 1)
    server.failing = True
    reporter.flush()
    assert len(server.waited) == 1  # one try, the rest dropped with it
    server.failing = False
    reporter.add("a", "s", 1)
    reporter.flush()
    assert server.totals() == {("a", "s", 1): 1}  # dropped, not kept for later
    reporter.close()


def test_a_report_the_node_refused_leaves_the_flush_s_others_to_be_sent() -> None:
    # A revoked grant's PermissionDenied is that dataset's answer: the node is there,
    # and the other datasets' reports (after it in the flush) were dropped with it.
    sent: list[str] = []

    def send(dataset: str, counts: list[LocalReadCount], wait_for_ready: bool) -> None:
        if dataset == "revoked":
            raise PermissionDenied("no role on revoked")
        sent.append(dataset)

    reporter = ReadReporter(send, every_reads=1000, interval_s=3600)
    for dataset in ("revoked", "train", "val"):
        reporter.add(dataset, "s", 1)
    reporter.flush()
    assert sent == ["train", "val"]
    reporter.close()


def test_a_report_s_deadline_is_never_past_the_client_s_own() -> None:
    deadlines: list[float] = []

    def call(fn: object, request: object, **options: float) -> None:
        deadlines.append(options["timeout_s"])

    client_timeout = [30.0]
    rpc = GrpcLocalReadRpc(lambda: mock.Mock(), call, lambda: client_timeout[0])
    counts = [LocalReadCount("s", 1, 1)]
    rpc.report("d", counts, True)
    rpc.report("d", counts, False)  # the last one, at close
    client_timeout[0] = 0.5
    rpc.report("d", counts, True)
    assert deadlines == [5.0, 1.0, 0.5]


def test_a_grant_s_deadline_is_short_and_never_past_the_client_s_own() -> None:
    # A get on a node that stopped answering waited the client's timeout_s (30 s) for
    # its grant, then the service read's stream_timeout_s.
    deadlines: list[float] = []

    def call(fn: object, request: object, **options: float) -> Any:
        deadlines.append(options["timeout_s"])
        return mock.Mock(data_key=b"k" * 32, nonce_prefix=b"n" * 4)

    client_timeout = [30.0]
    rpc = GrpcLocalReadRpc(lambda: mock.Mock(), call, lambda: client_timeout[0])
    rpc.grant_data_key("d", "s", 1)
    client_timeout[0] = 2.0
    rpc.grant_data_key("d", "s", 1)
    with contextlib.suppress(Exception):  # the fake reply is no grant: the deadline is
        rpc.open_local("d")
    assert deadlines == [5.0, 2.0, 2.0]


def test_batches_fit_what_the_server_accepts() -> None:
    reads = [LocalReadCount(f"s{i}", 1, 1) for i in range(MAX_REPORT_ENTRIES + 5)]
    reads.append(LocalReadCount("big", 1, 2 * MAX_REPORTED_READS + 3))
    batches = list(reports._batches(reads))
    for batch in batches:
        assert len(batch) <= MAX_REPORT_ENTRIES
        assert sum(c.count for c in batch) <= MAX_REPORTED_READS
        assert all(c.count > 0 for c in batch)
    total = sum(c.count for batch in batches for c in batch)
    assert total == MAX_REPORT_ENTRIES + 5 + 2 * MAX_REPORTED_READS + 3


def test_a_forked_child_starts_with_nothing_to_report() -> None:
    server = Server()
    reporter = ReadReporter(server, every_reads=1000, interval_s=3600)
    reporter.add("d", "parent", 1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            reporter.add("d", "child", 1)
            reporter.flush()
            code = 0 if server.totals() == {("d", "child", 1): 1} else 2
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    reporter.flush()
    assert server.totals() == {("d", "parent", 1): 1}  # the parent's read, once
    reporter.close()


def test_close_while_reads_start_the_thread_raises_nothing_and_loses_nothing() -> None:
    # start() published its thread before starting it: a close() in between joined a
    # thread not started (RuntimeError), which left Client.close() half done (keys not
    # zeroed, channel open). A review hit it at the second close.
    server = Server()
    reporter = ReadReporter(server, every_reads=10**9, interval_s=0.5)
    stop = threading.Event()
    added = [0, 0]

    def reader(slot: int) -> None:
        while not stop.is_set():
            reporter.add("d", "s", 1)
            added[slot] += 1

    readers = [threading.Thread(target=reader, args=(slot,)) for slot in range(2)]
    for thread in readers:
        thread.start()
    failures: list[BaseException] = []
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline and not failures:
            try:
                reporter.close()
            except Exception as exc:  # any is the failure under test
                failures.append(exc)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    reporter.close()
    assert failures == []
    assert server.totals() == {("d", "s", 1): sum(added)}  # every read reported once


def test_the_thread_of_a_reporter_dropped_without_close_ends_at_once() -> None:
    # It ended at its next wake-up only: a loop of clients dropped without close(), a
    # hundred a second, held some hundred threads at once (a review's probe).
    reporter = ReadReporter(Server(), every_reads=10**9, interval_s=3600)
    reporter.add("d", "s", 1)
    thread = reporter._thread
    assert thread is not None and thread.is_alive()
    del reporter
    poll(lambda: not thread.is_alive(), 10, "the dropped reporter's thread to end")
