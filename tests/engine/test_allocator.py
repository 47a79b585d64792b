"""Allocator tuning (tierstore/engine/allocator.py): freed memory goes back to the OS once
puts stop, never while one is in flight."""

from __future__ import annotations

import threading
import time

from tierstore.engine.allocator import IdleTrim, trim_heap, tune_allocator


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tuning_and_trimming_never_raise() -> None:
    assert tune_allocator(4 << 20) in (True, False)  # False where not glibc
    assert trim_heap() in (True, False)


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

