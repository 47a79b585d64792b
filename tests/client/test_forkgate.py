"""The fork gate (tierstore.client.forkgate): fork() waits for calls in flight, new calls
wait for the fork, the child starts open, and a stalled read holds a fork only so long."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.forking import exit_code_of_child_forked_while_held
from tierstore.client import forkgate
from tierstore.client.channel import ChannelSettings, ProcessChannel
from tierstore.client.forkgate import GATE, ForkGate


def wait_for(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_hold_waits_for_calls_in_flight_and_keeps_new_ones_out() -> None:
    gate = ForkGate()
    inside, leave, events = threading.Event(), threading.Event(), []

    def reader() -> None:
        with gate.call():
            inside.set()
            leave.wait(10)
            events.append("read done")

    def late_reader() -> None:
        with gate.call():
            events.append("late read")

    first = threading.Thread(target=reader)
    first.start()
    inside.wait(10)
    # Let the reader finish only once the holder is waiting for it.
    helper = threading.Thread(target=lambda: (wait_for(lambda: gate._holding), leave.set()))
    helper.start()
    gate.hold(10)
    events.append("held")
    late = threading.Thread(target=late_reader)
    late.start()
    late.join(0.2)
    assert late.is_alive()  # a new call waits while the gate is held
    gate.release()
    late.join(10)
    first.join(10)
    helper.join(10)
    assert events == ["read done", "held", "late read"]


def test_a_call_nested_in_one_in_flight_goes_on_while_a_fork_waits() -> None:
    # A shard read (a call) that asks for a data key (a call inside it) while a fork is
    # being prepared: waiting at the inner call would hold the fork until its deadline.
    gate = ForkGate()
    outer_inside, events = threading.Event(), []

    def read_with_inner_call() -> None:
        with gate.call():
            outer_inside.set()
            wait_for(lambda: gate._holding)
            with gate.call():
                events.append("inner call")
        events.append("read done")

    reader = threading.Thread(target=read_with_inner_call)
    reader.start()
    outer_inside.wait(10)
    started = time.monotonic()
    gate.hold(max_wait_s=20)
    waited = time.monotonic() - started
    events.append("held")
    gate.release()
    reader.join(10)
    assert events == ["inner call", "read done", "held"]
    assert waited < 10  # the hold ended when the read did, not at its deadline


@contextmanager
def call_in_flight(gate: ForkGate) -> Iterator[threading.Event]:
    """A thread inside ``gate.call()`` from the start of the body until the event yielded
    is set, or the body ends."""
    inside, leave = threading.Event(), threading.Event()

    def stalled() -> None:
        with gate.call():
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=stalled)
    thread.start()
    assert inside.wait(10)
    try:
        yield leave
    finally:
        leave.set()
        thread.join(10)


def test_a_stalled_call_holds_a_fork_only_max_wait() -> None:
    gate = ForkGate()
    with call_in_flight(gate):
        started = time.monotonic()
        assert gate.hold(max_wait_s=0.2) == 1  # still in flight
        assert time.monotonic() - started < 5
        gate.release()
    assert gate.hold(max_wait_s=0.2) == 0
    gate.release()


@pytest.mark.timeout(60)
def test_a_fork_that_went_ahead_past_a_stalled_call_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The child of such a fork may hang in gRPC's after-fork handler: the parent's log
    # must say why, not leave a silent hang to be found.
    monkeypatch.setattr(forkgate, "MAX_WAIT_S", 0.2)
    with (
        call_in_flight(GATE),
        caplog.at_level(logging.WARNING, logger="tierstore.client.forkgate"),
    ):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    (warning,) = [r for r in caplog.records if r.name == "tierstore.client.forkgate"]
    assert "1 client call still in flight after 0.2 s" in warning.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tierstore.client.forkgate"):
        pid = os.fork()  # no call in flight now: nothing to say
        if pid == 0:
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert not [r for r in caplog.records if r.name == "tierstore.client.forkgate"]


def _enter_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with GATE.call():
        queue.put("entered")


@pytest.mark.timeout(60)
def test_a_child_forked_while_a_call_waits_starts_with_an_open_gate() -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with call_in_flight(GATE) as leave:
        # The fork waits for the reader; release it from another thread shortly after.
        threading.Timer(0.3, leave.set).start()
        child = context.Process(target=_enter_in_child, args=(queue,))
        child.start()
        assert leave.is_set()  # the fork went ahead only once the read had finished
    assert queue.get(timeout=30) == "entered"
    child.join(30)
    assert child.exitcode == 0


def test_a_channel_lock_held_by_another_thread_at_fork_is_free_in_the_child() -> None:
    # A thread opening the channel holds its lock while it waits for the gate, which a
    # forking thread may hold: the child must not inherit the lock held.
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", insecure=True))
    # close() takes the lock (no channel is open: nothing else happens)
    assert exit_code_of_child_forked_while_held(channel._lock, channel.close) == 0


def test_a_channel_dropped_while_a_fork_is_prepared_never_waits_for_it() -> None:
    # Garbage collection may close a dropped channel on any thread, inside whatever lock
    # it holds: in ThreadPoolExecutor.submit, concurrent.futures' global lock, which a
    # fork handler running after ours takes. Waiting there for the gate hung a
    # DataLoader's fork for good: the fork waited for the lock, the lock's holder for
    # the fork.
    channel = ProcessChannel(ChannelSettings(address="127.0.0.1:1", insecure=True))
    held = channel._held
    channel.get()  # opened here
    lock = threading.Lock()  # stands for the lock the fork handler would take
    dropped = threading.Event()

    def drop_inside_the_lock() -> None:
        nonlocal channel
        with lock:
            del channel  # the last reference: its finalizer closes the channel
            dropped.set()

    GATE.hold(10)  # a fork being prepared
    try:
        dropper = threading.Thread(target=drop_inside_the_lock)
        dropper.start()
        # The old finalizer waited for the gate inside the lock: the "fork" could then
        # never take the lock.
        assert lock.acquire(timeout=10), "the dropping thread kept the lock"
        lock.release()
        assert dropped.is_set() and held.current is None
        assert GATE._deferred  # closed after the fork, not during it
    finally:
        GATE.release()
    GATE.run_deferred()
    assert not GATE._deferred
    dropper.join(10)


def test_deferred_work_runs_on_the_next_call_when_no_fork_comes() -> None:
    gate = ForkGate()
    ran: list[str] = []
    gate.hold(1)
    other = threading.Thread(target=gate.run_or_defer, args=(lambda: ran.append("late"),))
    other.start()
    other.join(10)
    assert not other.is_alive() and ran == []  # kept, not waited for
    gate.release()  # released without run_deferred: the next call's way out runs it
    with gate.call():
        assert ran == []
    assert ran == ["late"]
    gate.run_or_defer(lambda: ran.append("at once"))  # an open gate: no waiting
    assert ran == ["late", "at once"] and gate.idle


def test_deferred_work_is_done_at_once_when_only_another_calls_bookkeeping_is_in_the_way() -> None:
    # Another thread inside the gate's lock for a moment (every call's way in and out):
    # that is no fork, and the work was kept until the next call or fork, perhaps never.
    gate = ForkGate()
    ran: list[str] = []
    gate._condition.acquire()  # as a call's bookkeeping does, briefly
    tried = threading.Event()
    acquire = gate._condition.acquire

    def watched_acquire(*args: object, **kwargs: object) -> bool:
        tried.set()
        return acquire(*args, **kwargs)  # type: ignore[arg-type]

    gate._condition.acquire = watched_acquire  # type: ignore[method-assign]
    other = threading.Thread(target=gate.run_or_defer, args=(lambda: ran.append("done"),))
    other.start()
    assert tried.wait(10)  # it met the lock held
    gate._condition.release()
    other.join(10)
    assert ran == ["done"] and gate._deferred == [] and gate.idle


def test_a_finalizer_run_while_a_call_waits_for_a_fork_is_kept_for_after_it() -> None:
    # Garbage collection may run a finalizer (a dropped channel's close) on a thread that
    # waits at the gate for a fork: that thread is not inside a call yet, so the close
    # must not run there and then, in the middle of the fork, as a nested call would.
    gate = ForkGate()
    ran: list[bool] = []
    inside, leave, waiting, forked = (threading.Event() for _ in range(4))

    def in_flight() -> None:  # a call the fork waits for
        with gate.call():
            inside.set()
            leave.wait(10)

    def fork() -> None:  # the before handler, the fork itself, the parent's handler
        gate.hold(10)
        forked.wait(10)
        gate.release()

    def late_caller() -> None:
        with gate.call():
            pass

    late = threading.Thread(target=late_caller)
    wait = gate._condition.wait

    def wait_running_a_finalizer(timeout: float | None = None) -> bool:
        if threading.current_thread() is late and not waiting.is_set():
            gate.run_or_defer(lambda: ran.append(gate._holding))
            waiting.set()
        return wait(timeout)

    gate._condition.wait = wait_running_a_finalizer  # type: ignore[method-assign]
    first = threading.Thread(target=in_flight)
    first.start()
    assert inside.wait(10)
    forking = threading.Thread(target=fork)
    forking.start()
    wait_for(lambda: gate._holding)
    late.start()
    assert waiting.wait(10)
    leave.set()
    first.join(10)
    wait_for(lambda: gate.idle)
    assert ran == []  # kept while the fork is prepared and made
    forked.set()
    for thread in (forking, late):
        thread.join(10)
    assert ran == [False]  # run once the fork was done
    assert gate.idle and gate._deferred == []
