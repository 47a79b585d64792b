"""FairLock hands itself to its waiters in the order they came."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tierstore.tiers.fairlock import FairLock


def poll(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_waiters_get_the_lock_in_the_order_they_came_and_a_releaser_queues_behind() -> None:
    lock = FairLock()
    order: list[str] = []
    lock.acquire()

    def take(name: str) -> None:
        with lock:
            order.append(name)

    threads = []
    for index, name in enumerate(["first", "second", "third"]):
        thread = threading.Thread(target=take, args=(name,))
        thread.start()
        threads.append(thread)
        poll(lambda count=index + 1: lock.waiting() == count, f"{name} to queue")
    lock.release()
    # Asked again at once, as a loop of transactions does: after those waiting already.
    lock.acquire()
    order.append("releaser")
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "second", "third", "releaser"]
    assert lock.waiting() == 0
    with lock:  # free again: taken at once
        pass


def test_a_lock_not_held_cannot_be_released() -> None:
    lock = FairLock()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    with lock:
        pass
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
