"""Allocator tuning (tierstore/engine/allocator.py): freed memory goes back to the OS once
puts stop, never while one is in flight."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tierstore.engine.allocator import IdleTrim, _glibc_function, trim_heap, tune_allocator


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tuning_and_trimming_never_raise_and_tune_glibc_only() -> None:
    glibc = platform.libc_ver()[0] == "glibc"
    assert tune_allocator(4 << 20) is glibc  # mallopt took the thresholds, where glibc
    # Whether a trim gave memory back depends on the heap's state; off glibc it is none.
    assert trim_heap() in ((True, False) if glibc else (False,))


def test_the_trim_waits_for_the_last_put_in_flight_to_end() -> None:
    clock, trims = Clock(), []
    idle = IdleTrim(2.0, lambda: trims.append(clock.now), clock, background=False)
    assert idle.trim_if_due() is None  # no put yet: nothing owed
    with idle.busy():
        with idle.busy():
            pass
        clock.now += 60  # one put still in flight, however long
        assert idle.trim_if_due() is None
    assert trims == []
    clock.now += 1.5
    assert idle.trim_if_due() == 0.5  # not idle long enough yet
    clock.now += 0.5
    assert idle.trim_if_due() is None
    assert trims == [162.0]  # once, idle_s after the last put ended
    clock.now += 60
    assert idle.trim_if_due() is None  # nothing freed since: no second trim
    assert trims == [162.0]


def test_a_put_that_starts_before_the_trim_puts_it_off() -> None:
    clock, trims = Clock(), []
    idle = IdleTrim(2.0, lambda: trims.append(clock.now), clock, background=False)
    with idle.busy():
        pass
    clock.now += 1.0
    with idle.busy():
        clock.now += 5.0
        assert idle.trim_if_due() is None
    clock.now += 1.0
    assert idle.trim_if_due() == 1.0  # counted from the end of the second put
    clock.now += 1.0
    idle.trim_if_due()
    assert trims == [108.0]


def test_the_thread_trims_after_the_puts_and_stops_on_close() -> None:
    trims: list[float] = []
    trimmed = threading.Event()

    def trim() -> None:
        trims.append(time.monotonic())
        trimmed.set()

    idle = IdleTrim(0.05, trim)
    try:
        with idle.busy():
            with idle.busy():
                pass
            # Past idle_s with one put still in flight: the thread must not trim.
            assert not trimmed.wait(0.3)
            ended = time.monotonic()
        assert trimmed.wait(10), "no trim after the last put ended"
        assert len(trims) == 1 and trims[0] >= ended + 0.05
    finally:
        idle.close()
    assert not any(thread.name == "idle-trim" for thread in threading.enumerate())


def test_work_that_owes_a_trim_never_puts_one_off() -> None:
    # The mover's uploads: a trim falls due after each, but an archive retried without
    # end must not keep the node from ever trimming (as work in flight would).
    clock, trims = Clock(), []
    idle = IdleTrim(2.0, lambda: trims.append(clock.now), clock, background=False)
    idle.owe()
    for _ in range(2):  # ended again and again, sooner than idle_s apart
        clock.now += 1.0
        idle.owe()
    assert idle.trim_if_due() is None
    assert trims == [102.0]  # idle_s after the first: the later ones did not put it off
    clock.now += 1.5
    assert idle.trim_if_due() is None and trims == [102.0]  # nothing owed since
    idle.owe()
    with idle.busy():  # a put in flight still puts the trim off
        clock.now += 5.0
        assert idle.trim_if_due() is None
    assert trims == [102.0]
    clock.now += 2.0
    idle.trim_if_due()
    assert trims == [102.0, 110.5]


# Eight threads at once each fill and free 32 MiB of 4 MiB frames, in a fresh process
# (this one's threads have their arenas already); prints RssAnon in MiB before, after
# the frees and after a trim.
_THREADS_FREE_FRAMES = textwrap.dedent(
    """
    import ctypes, sys, threading
    from pathlib import Path
    from tierstore.engine.allocator import ARENAS, tune_allocator, trim_heap

    def resident():
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(l.split()[1]) // 1024 for l in status if l.startswith("RssAnon:"))

    if sys.argv[1] == "serve":
        # serve's command line, through the console script (grpc loads, its threads
        # start), then serve's own call before its node starts.
        from tierstore.cli.entry import main
        sys.argv = ["tierstore", "serve", "--help"]
        try:
            main()
        except SystemExit:
            pass
    capped = sys.argv[1] in ("capped", "serve")
    assert tune_allocator(4 << 20, arenas=ARENAS if capped else None)
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    together = threading.Barrier(8)

    def fill_and_free():
        together.wait()
        frames = [libc.malloc(4 << 20) for _ in range(8)]
        for frame in frames:
            ctypes.memset(frame, 1, 4 << 20)
        together.wait()  # all filled before any frees
        for frame in frames:
            libc.free(frame)

    before = resident()
    threads = [threading.Thread(target=fill_and_free) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = resident()
    trim_heap()
    print()  # (after any help text)
    print(before, after, resident())
    """
)


@pytest.mark.skipif(
    _glibc_function("mallopt") is None or not Path("/proc/self/status").exists(),
    reason="glibc and /proc only",
)
@pytest.mark.parametrize(
    ("arenas", "environment", "given_back"),
    [
        ("capped", {}, True),
        # The console script caps them before grpc loads: a channel its import made
        # started threads that took 7 arenas, and serve's cap came too late.
        ("serve", {}, True),
        # open_store's call: an embedding process keeps glibc's arenas.
        ("left alone", {}, False),
        # An operator's setting wins over the node's cap.
        ("capped", {"MALLOC_ARENA_MAX": "16"}, False),
    ],
)
def test_a_trim_gives_back_what_many_threads_freed_only_with_few_arenas(
    arenas: str, environment: dict[str, str], given_back: bool
) -> None:
    # malloc_trim never shrinks the top of a thread's arena: with glibc's 8 arenas per
    # core, all 256 MiB stayed after the trim (measured); with two, 60 MiB.
    shown = subprocess.run(
        [sys.executable, "-c", _THREADS_FREE_FRAMES, arenas],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | environment,
    )
    before, after, trimmed = map(int, shown.stdout.splitlines()[-1].split())
    assert after - before >= 128, shown.stdout
    assert (trimmed - before < (after - before) / 2) is given_back, shown.stdout
