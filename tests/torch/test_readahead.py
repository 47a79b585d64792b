"""Read-ahead (tierstore.torch.readahead): order, how far ahead, errors when due, early stop,
and a generator inherited through fork left alone in the child."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
import weakref

import pytest

from tierstore.torch.readahead import read_ahead


class Recorder:
    """A fetch that records how many fetches run at once, released by the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.stops: list[threading.Event] = []

    def __call__(self, name: str, stop: threading.Event) -> str:
        with self.lock:
            self.started.append(name)
            self.stops.append(stop)
        return name.upper()


def wait_for(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_come_in_order(depth: int) -> None:
    names = [f"s{i}" for i in range(10)]
    assert list(read_ahead(Recorder(), names, depth)) == [n.upper() for n in names]


def test_depth_bounds_what_is_fetched_ahead() -> None:
    fetch = Recorder()
    generator = read_ahead(fetch, [f"s{i}" for i in range(10)], 2)
    assert next(generator) == "S0"
    # Holding s0: s1 and s2 are fetched ahead, never s3.
    wait_for(lambda: len(fetch.started) == 3)
    assert fetch.started == ["s0", "s1", "s2"]
    assert next(generator) == "S1"
    wait_for(lambda: len(fetch.started) == 4)
    generator.close()
    assert all(stop.is_set() for stop in fetch.stops)  # fetches may give up their retries


class Shard:
    """A result whose collection a weak reference sees."""


def test_a_result_the_consumer_dropped_is_not_kept_alive() -> None:
    # The threads that replaced the pool's kept each its last result while it fetched
    # the next or waited: up to ``depth`` shard tables more than the bound per worker.
    made: list[weakref.ref[Shard]] = []
    gate = threading.Event()

    def fetch(name: str, stop: threading.Event) -> Shard:
        if name != "s0":
            gate.wait(10)  # the fetches ahead hold on until the test has looked
        shard = Shard()
        made.append(weakref.ref(shard))
        return shard

    generator = read_ahead(fetch, [f"s{i}" for i in range(6)], 1)
    first = next(generator)
    del first
    gc.collect()
    try:
        assert made[0]() is None  # only the fetch ahead (s1, waiting) is running
    finally:
        gate.set()
        generator.close()


def test_inline_fetches_only_when_asked() -> None:
    fetch = Recorder()
    generator = read_ahead(fetch, ["a", "b"], 0)
    assert fetch.started == []
    assert next(generator) == "A" and fetch.started == ["a"]


def test_a_failed_fetch_raises_when_its_turn_comes() -> None:
    def fetch(name: str, stop: threading.Event) -> str:
        if name == "bad":
            raise ValueError("broken shard")
        return name

    generator = read_ahead(fetch, ["a", "b", "bad", "c"], 3)
    assert [next(generator), next(generator)] == ["a", "b"]
    with pytest.raises(ValueError, match="broken shard"):
        next(generator)


@pytest.mark.parametrize("depth", [0, 2])
def test_a_failing_source_raises_after_what_came_before(depth: int) -> None:
    def names() -> object:
        yield from ("a", "b")
        raise ValueError("no more names")

    generator = read_ahead(Recorder(), names(), depth)  # type: ignore[arg-type]
    assert [next(generator), next(generator)] == ["A", "B"]
    with pytest.raises(ValueError, match="no more names"):
        next(generator)


_INHERITED = None


def _child_drops_the_inherited_generator(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    global _INHERITED
    _INHERITED = None  # runs the generator's clean-up here: it must not touch the pool
    fresh = list(read_ahead(Recorder(), ["x", "y"], 2))  # and a new pool works
    queue.put((os.getpid(), fresh))


@pytest.mark.timeout(60)
def test_a_forked_child_leaves_the_parents_pool_alone() -> None:
    global _INHERITED
    fetch = Recorder()
    _INHERITED = read_ahead(fetch, [f"s{i}" for i in range(6)], 2)
    assert next(_INHERITED) == "S0"  # the pool and its threads exist in the parent
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    for _ in range(5):
        child = context.Process(target=_child_drops_the_inherited_generator, args=(queue,))
        child.start()
        pid, fresh = queue.get(timeout=30)
        child.join(30)
        assert child.exitcode == 0 and pid == child.pid and fresh == ["X", "Y"]
    assert list(_INHERITED) == ["S1", "S2", "S3", "S4", "S5"]  # the parent's goes on
    _INHERITED = None
