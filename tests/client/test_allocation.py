"""Where decrypted frames land (tierstore/client/allocation.py) and fork-safe locks
(tierstore/client/forklocks.py)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import pytest

from tierstore.client.allocation import PinnedAllocator, aligned_buffer, frame_allocator
from tierstore.client.forklocks import ForkSafeLock


def test_aligned_buffers_are_writable_and_64_byte_aligned() -> None:
    for size in (1, 63, 4096, 4 << 20):
        buffer = aligned_buffer(size)
        assert buffer.size == size and buffer.address % 64 == 0
        memoryview(buffer).cast("B")[0] = 7


def test_pinning_is_never_forced_on_a_process_without_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert frame_allocator(False) is aligned_buffer
    assert "torch" not in sys.modules  # not imported to decide


class FakeTorch:
    """Enough of torch for the allocator: CUDA available, pinning as configured."""

    uint8 = "uint8"

    def __init__(self, pins: bool) -> None:
        self.pins = pins
        self.cuda = type("cuda", (), {"is_available": staticmethod(lambda: True)})

    def empty(self, size: int, dtype: Any, pin_memory: bool) -> Any:
        if not self.pins:
            raise RuntimeError("CUDA error: initialization error")
        import numpy as np

        array = np.zeros(size + 64, np.uint8)
        offset = (-array.ctypes.data) % 64
        view = array[offset : offset + size]
        return type("T", (), {"numpy": lambda self: view})()


def test_pinned_buffers_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never automatic, even with torch in use and CUDA there: torch cannot track a copy
    # to the GPU from a view into a frame, so the frame could be reused under it.
    monkeypatch.setitem(sys.modules, "torch", FakeTorch(pins=True))
    assert frame_allocator(False) is aligned_buffer
    allocate = frame_allocator(True)
    assert isinstance(allocate, PinnedAllocator)
    buffer = allocate(1000)
    assert buffer.size == 1000 and buffer.is_mutable and buffer.address % 64 == 0


def test_pinning_that_fails_falls_back_once(caplog: pytest.LogCaptureFixture) -> None:
    allocate = PinnedAllocator(FakeTorch(pins=False))
    with caplog.at_level("INFO", logger="tierstore.client.allocation"):
        buffers = [allocate(100) for _ in range(3)]
    assert all(b.size == 100 and b.address % 64 == 0 for b in buffers)
    assert sum("pinned memory is unavailable" in r.message for r in caplog.records) == 1


def test_a_fork_safe_lock_held_by_another_thread_is_free_in_the_child() -> None:
    lock = ForkSafeLock()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
        signal.alarm(5)  # a lock left held would hang the child: let it die instead
        with lock:
            pass
        os._exit(0)
    release.set()
    thread.join()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
