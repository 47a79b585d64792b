"""The mover's threads run below the priority of the threads serving callers (Linux)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from tests.engine.stores import FRAME, StoreFactory, engine_settings, payload, wait_until
from tierstore.engine.background import MAX_NICENESS, lower_this_thread
from tierstore.errors import InvalidArgument
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def niceness_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def process_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, os.getpid())


def niceness_after(*steps: int) -> int:
    """The nice value of a fresh thread after it called lower_this_thread(step) for each step."""
    seen: list[int] = []

    def body() -> None:
        for step in steps:
            lower_this_thread(step)
        seen.append(niceness_of(threading.get_native_id()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen[0]


def test_a_lowered_thread_runs_below_the_process_and_alone() -> None:
    base = process_niceness()
    before = niceness_of(threading.get_native_id())
    assert niceness_after(3) == min(MAX_NICENESS, base + 3)
    assert niceness_of(threading.get_native_id()) == before  # the caller's thread is untouched
    assert process_niceness() == base


def test_lowering_is_capped_at_the_lowest_priority_and_never_undone() -> None:
    assert niceness_after(MAX_NICENESS + 5) == MAX_NICENESS
    base = process_niceness()
    # A second, smaller step keeps the lower priority (a thread cannot raise its own).
    assert niceness_after(6, 2) == min(MAX_NICENESS, base + 6)


def test_a_refusal_leaves_the_thread_running_at_its_priority(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)  # as a sandbox might
    assert niceness_after(5) == process_niceness()
    assert "cannot lower the priority" in caplog.text


def test_zero_leaves_the_thread_at_the_process_priority() -> None:
    assert niceness_after(0) == process_niceness()


@pytest.mark.parametrize("niceness", [-1, MAX_NICENESS + 1])
def test_a_niceness_out_of_range_is_refused(niceness: int, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="background_niceness"):
        engine_settings(tmp_path, background_niceness=niceness)


def test_uploads_and_cache_fills_run_in_the_background_fetches_do_not(
    open_store: StoreFactory,
) -> None:
    older = set(threading.enumerate())  # e.g. other tests' stores
    store = open_store(MemoryTier(), datasets={"plain": DatasetSettings()}, background_niceness=7)
    lowered = min(MAX_NICENESS, process_niceness() + 7)
    caller = niceness_of(threading.get_native_id())
    data = payload(3 * FRAME, 1)
    for name in ("a", "b"):
        store.put("plain", name, data)  # the caller's put: its thread keeps its priority
    assert store.drain(10)
    for name in ("a", "b"):
        store.evict("plain", name)
    assert store.prefetch("plain", ["a"]) == 1  # fetched on the promotion fetch pool
    assert store.get("plain", "b").to_bytes() == data  # a whole cold read: a cache fill
    for name in ("a", "b"):
        wait_until(lambda name=name: store.stat("plain", name).hot, f"{name} to turn hot")
    movers = {
        thread.name: niceness_of(thread.native_id)
        for thread in threading.enumerate()
        if thread.native_id is not None
        and thread not in older
        and thread.name.startswith(("tierstore-journal", "tierstore-promote", "tierstore-fill"))
    }
    fetchers = {name for name in movers if name.startswith("tierstore-promote-fetch")}
    assert fetchers, movers
    background = {"tierstore-journal", "tierstore-fill"}
    assert background <= movers.keys() and "tierstore-promote" in movers, movers
    assert {movers[name] for name in background} == {lowered}, movers
    # A promotion that fetches is work a reader is about to need: the callers' priority.
    assert {movers[name] for name in movers.keys() - background} == {caller}, movers
    assert niceness_of(threading.get_native_id()) == caller
    assert store.get("plain", "a").to_bytes() == data
