"""VerifyAhead: frames checked on a helper thread, never handed out unverified."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from tierstore.errors import IntegrityError
from tierstore.verifyahead import HELPER_IDLE_S, MIN_HELPER_FRAME_BYTES, VerifyAhead

FRAMES = [bytes([i]) * (MIN_HELPER_FRAME_BYTES + i) for i in range(12)]
T = TypeVar("T")


class Recorder:
    """lookup/verify callables over FRAMES that record which thread did what."""

    def __init__(self, bad: int | None = None) -> None:
        self.bad = bad
        self.looked_up: list[int] = []
        self.verified: dict[int, str] = {}
        self.lock = threading.Lock()

    def lookup(self, k: int) -> memoryview:
        assert threading.current_thread() is threading.main_thread(), (
            "lookups stay with the consumer"
        )
        self.looked_up.append(k)
        return memoryview(FRAMES[k])

    def verify(self, k: int, stored: memoryview) -> memoryview:
        with self.lock:
            assert k not in self.verified, f"frame {k} verified twice"
            self.verified[k] = threading.current_thread().name
        if k == self.bad:
            raise IntegrityError(f"frame {k} failed its checksum")
        return stored[1:]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="helper") as executor:
        yield executor


def test_every_frame_is_verified_once_and_handed_out_in_order(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    out = [
        bytes(p) for p in VerifyAhead(len(FRAMES)).frames(pool, recorder.lookup, recorder.verify)
    ]
    assert out == [f[1:] for f in FRAMES]
    assert sorted(recorder.verified) == list(range(len(FRAMES)))
    assert recorder.looked_up == list(range(len(FRAMES)))


@pytest.mark.parametrize("collect", [False, True])
def test_small_frames_are_verified_by_the_consumer_alone(
    pool: ThreadPoolExecutor, collect: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hand-over to the helper costs more than checking a small frame: a shard of
    # 100,000 tiny frames read at 30 us a frame through the helper.
    small = [bytes([i]) * (MIN_HELPER_FRAME_BYTES // 2) for i in range(12)]
    monkeypatch.setattr(sys.modules[__name__], "FRAMES", small)
    recorder = Recorder(bad=7)
    frames = VerifyAhead(len(small)).frames(pool, recorder.lookup, recorder.verify, collect=collect)
    assert [bytes(next(frames)) for _ in range(7)] == [f[1:] for f in small[:7]]
    with pytest.raises(IntegrityError, match="frame 7"):
        next(frames)
    assert set(recorder.verified.values()) == {threading.current_thread().name}
    assert sorted(recorder.verified) == list(range(8))  # nothing after the failed frame
    # Looked up as consumed (or all at once when collecting), once each.
    assert recorder.looked_up == list(range(12 if collect else 8))


def test_a_failed_frame_raises_when_reached_and_nothing_after_it_is_verified(
    pool: ThreadPoolExecutor,
) -> None:
    recorder = Recorder(bad=5)
    frames = VerifyAhead(len(FRAMES)).frames(pool, recorder.lookup, recorder.verify)
    for k in range(5):
        assert bytes(next(frames)) == FRAMES[k][1:]
    with pytest.raises(IntegrityError, match="frame 5"):
        next(frames)
    assert max(recorder.verified) == 5


def test_a_busy_pool_leaves_the_consumer_to_verify_every_frame(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    blocker = pool.submit(release.wait, 30)  # the only helper thread is taken
    try:
        recorder = Recorder()
        out = list(VerifyAhead(len(FRAMES)).frames(pool, recorder.lookup, recorder.verify))
        assert len(out) == len(FRAMES)
        assert set(recorder.verified.values()) == {threading.main_thread().name}
    finally:
        release.set()
        blocker.result(timeout=30)


def test_a_shut_down_pool_is_no_error(pool: ThreadPoolExecutor) -> None:
    pool.shutdown()
    recorder = Recorder()
    out = list(VerifyAhead(3).frames(pool, recorder.lookup, recorder.verify))
    assert [bytes(p) for p in out] == [f[1:] for f in FRAMES[:3]]


def test_closing_early_stops_the_helper_and_drops_the_views(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    ahead = VerifyAhead(len(FRAMES))
    frames = ahead.frames(pool, recorder.lookup, recorder.verify)
    next(frames)
    frames.close()
    assert ahead._helper_done.is_set() or not recorder.verified.keys() - {0}
    assert ahead._stored == [] and ahead._results == []
    assert len(recorder.looked_up) <= 1 + 2  # the frame taken and the look-ahead
    verified_at_close = dict(recorder.verified)
    assert pool.submit(lambda: None).result(timeout=30) is None  # the helper has ended
    assert recorder.verified == verified_at_close


@pytest.mark.parametrize("count", [0, 1])
def test_tiny_reads_need_no_helper(pool: ThreadPoolExecutor, count: int) -> None:
    recorder = Recorder()
    out = list(VerifyAhead(count).frames(pool, recorder.lookup, recorder.verify))
    assert len(out) == count
    assert set(recorder.verified.values()) <= {threading.main_thread().name}


def test_collecting_shares_the_checks_between_both_threads() -> None:
    # A slow check, so that the helper is surely busy while the consumer waits.
    gate = threading.Barrier(2, timeout=30)
    recorder = Recorder()

    def verify(k: int, stored: memoryview) -> memoryview:
        if k < 2:
            gate.wait()  # frames 0 and 1 are checked at the same time, one per thread
        return recorder.verify(k, stored)

    with ThreadPoolExecutor(1, thread_name_prefix="helper") as pool:
        out = list(VerifyAhead(len(FRAMES)).frames(pool, recorder.lookup, verify, collect=True))
    assert [bytes(p) for p in out] == [f[1:] for f in FRAMES]
    assert sorted(recorder.verified) == list(range(len(FRAMES)))
    assert {recorder.verified[0], recorder.verified[1]} == {
        threading.main_thread().name,
        next(n for n in recorder.verified.values() if n.startswith("helper")),
    }


def test_collecting_stops_at_a_failed_frame(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder(bad=3)
    frames = VerifyAhead(len(FRAMES)).frames(pool, recorder.lookup, recorder.verify, collect=True)
    assert [bytes(next(frames)) for _ in range(3)] == [f[1:] for f in FRAMES[:3]]
    with pytest.raises(IntegrityError, match="frame 3"):
        next(frames)


def test_a_paused_reader_does_not_hold_the_helper_and_can_resume() -> None:
    recorder = Recorder()
    pool = ThreadPoolExecutor(1, thread_name_prefix="helper")
    frames = VerifyAhead(len(FRAMES)).frames(pool, recorder.lookup, recorder.verify)
    assert bytes(next(frames)) == FRAMES[0][1:]
    # The reader pauses with the iterator half read. The helper checks what it was
    # handed, waits a moment for more, and leaves: the pool can shut down.
    shutdown = threading.Thread(target=pool.shutdown, kwargs={"wait": True})
    shutdown.start()
    shutdown.join(timeout=10 * HELPER_IDLE_S + 5)
    assert not shutdown.is_alive(), "the helper held the pool while the reader paused"
    rest = [bytes(p) for p in frames]  # the reader comes back: it checks the rest itself
    assert rest == [f[1:] for f in FRAMES[1:]]
    assert sorted(recorder.verified) == list(range(len(FRAMES)))


class KeepingExecutor(Executor):
    """Runs each task on a thread of its own and keeps the task (function and arguments)
    for ever, as a pool's worker does for a moment after a task has ended."""

    def __init__(self) -> None:
        self.kept: list[tuple[object, ...]] = []
        self.threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.kept.append((fn, args, kwargs))
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        thread = threading.Thread(target=lambda: future.set_result(fn(*args, **kwargs)))
        thread.start()
        self.threads.append(thread)
        return future


@pytest.mark.parametrize("collect", [False, True])
def test_the_helper_task_does_not_keep_the_check_alive(collect: bool) -> None:
    # Store.get's check holds the read lease: a helper task that outlived the read
    # while still referring to it kept the lease open after the frames were dropped.
    class Lease:
        pass

    lease = Lease()
    gone = weakref.ref(lease)
    recorder = Recorder()

    def verify(k: int, stored: memoryview, lease: Lease = lease) -> memoryview:
        return recorder.verify(k, stored)

    executor = KeepingExecutor()
    out = [
        bytes(p)
        for p in VerifyAhead(len(FRAMES)).frames(executor, recorder.lookup, verify, collect=collect)
    ]
    assert out == [f[1:] for f in FRAMES]
    for thread in executor.threads:
        thread.join()
    assert executor.kept  # the helper task was submitted, and is still kept
    del verify, lease
    gc.collect()
    assert gone() is None


def test_an_unexpected_error_on_the_helper_reaches_the_consumer(pool: ThreadPoolExecutor) -> None:
    # Not an IntegrityError (say, out of memory while decrypting into a new buffer):
    # the consumer must get it at that frame, not wait for ever on a frame the helper
    # claimed and never finished, holding the read transaction open.
    helper_failed = threading.Event()

    def verify(k: int, stored: memoryview) -> memoryview:
        if threading.current_thread().name.startswith("helper"):
            helper_failed.set()
            raise MemoryError(f"frame {k}: no memory (test)")
        if k == 0:
            assert helper_failed.wait(10)  # the helper has claimed and failed a frame
        return stored[1:]

    outcome: list[object] = []

    def consume() -> None:
        frames = VerifyAhead[memoryview](len(FRAMES)).frames(
            pool, lambda k: memoryview(FRAMES[k]), verify
        )
        try:
            outcome.extend(bytes(frame) for frame in frames)
        except MemoryError as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(10)
    assert not consumer.is_alive(), "the consumer hung on a frame the helper failed"
    assert isinstance(outcome[-1], MemoryError) and "no memory (test)" in str(outcome[-1])
    assert pool.submit(lambda: None).result(timeout=10) is None  # the helper has ended
