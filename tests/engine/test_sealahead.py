"""Seal-ahead: the frames come out in order, each sealed once, the next one on the helper;
a busy or shut-down helper never makes the writer wait, and a failing seal surfaces at
its own frame."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tierstore.config import EngineSettings
from tierstore.engine.sealahead import MIN_AHEAD_BYTES, sealed_ahead
from tierstore.engine.store import Store
from tierstore.errors import ShardNotFound
from tierstore.frames import FrameSealer
from tierstore.tiers.memory import MemoryTier


class Sealer:
    """Records which thread sealed which frame; fails at ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.sealed_by: dict[int, str] = {}
        self.lock = threading.Lock()

    def __call__(self, index: int, payload: bytes) -> bytes:
        with self.lock:
            assert index not in self.sealed_by, f"frame {index} sealed twice"
            self.sealed_by[index] = threading.current_thread().name
        if index == self.fail_at:
            raise ValueError(f"frame {index} cannot be sealed")
        return payload + b"!"


PAYLOADS = [bytes([i]) * MIN_AHEAD_BYTES for i in range(6)]


def test_frames_come_in_order_and_the_helper_seals_ahead() -> None:
    sealer = Sealer()
    with ThreadPoolExecutor(1, thread_name_prefix="helper") as pool:
        out = []
        for frame in sealed_ahead(sealer, PAYLOADS, pool):
            out.append(frame)
            # While the caller holds this frame, the next one is the helper's: wait
            # for it to be sealed there, so every later frame is the helper's work.
            index = len(out)
            if index < len(PAYLOADS):
                pool.submit(lambda: None).result()  # runs after the queued seal
    assert out == [p + b"!" for p in PAYLOADS]
    assert sorted(sealer.sealed_by) == list(range(len(PAYLOADS)))
    assert sealer.sealed_by[0] == threading.current_thread().name
    assert all(name.startswith("helper") for i, name in sealer.sealed_by.items() if i > 0)


def test_small_frames_are_sealed_inline() -> None:
    # Handing a tiny frame to the helper costs more than sealing it: a put of a
    # million tiny frames spent most of its time handing them over.
    small = [bytes([i]) * (MIN_AHEAD_BYTES - 1) for i in range(4)]
    mixed = [small[0], PAYLOADS[1], small[2], PAYLOADS[3]]
    for payloads, ahead in ((small, set()), (mixed, {1, 3})):
        sealer = Sealer()
        with ThreadPoolExecutor(1, thread_name_prefix="helper") as pool:
            out = []
            for frame in sealed_ahead(sealer, payloads, pool):
                out.append(frame)
                pool.submit(lambda: None).result()  # any seal queued there is done
        assert out == [p + b"!" for p in payloads]
        assert {i for i, name in sealer.sealed_by.items() if name.startswith("helper")} == ahead


def test_a_busy_helper_never_makes_the_writer_wait() -> None:
    sealer = Sealer()
    release = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="helper") as pool:
        pool.submit(release.wait, 30)  # the helper is busy with someone else's work
        out = list(sealed_ahead(sealer, PAYLOADS, pool))
        release.set()
    assert out == [p + b"!" for p in PAYLOADS]
    assert set(sealer.sealed_by.values()) == {threading.current_thread().name}


def test_a_shut_down_helper_pool_means_sealing_inline() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    sealer = Sealer()
    assert list(sealed_ahead(sealer, PAYLOADS, pool)) == [p + b"!" for p in PAYLOADS]
    assert set(sealer.sealed_by.values()) == {threading.current_thread().name}


def test_a_failing_seal_surfaces_at_its_own_frame() -> None:
    sealer = Sealer(fail_at=3)
    out = []
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="frame 3"):
        for frame in sealed_ahead(sealer, PAYLOADS, pool):
            out.append(frame)
    assert out == [p + b"!" for p in PAYLOADS[:3]]
    assert sorted(sealer.sealed_by) == [0, 1, 2, 3]  # nothing is sealed past the failure


def test_no_frames_no_work() -> None:
    sealer = Sealer()
    with ThreadPoolExecutor(1) as pool:
        assert list(sealed_ahead(sealer, [], pool)) == []
    assert sealer.sealed_by == {}


def test_closing_waits_for_the_seal_on_the_helper() -> None:
    # A put that fails mid-way abandons its frames: no helper may still be reading the
    # caller's buffer once the put has ended.
    started, finished = threading.Event(), threading.Event()

    def slow_seal(index: int, payload: bytes) -> bytes:
        if index == 1:
            started.set()
            time.sleep(0.2)
            finished.set()
        return payload

    with ThreadPoolExecutor(1) as pool:
        frames = sealed_ahead(slow_seal, PAYLOADS, pool)
        assert next(frames) == PAYLOADS[0]
        assert started.wait(10)  # frame 1 is being sealed on the helper
        frames.close()
        assert finished.is_set()


def test_a_seal_of_the_wrong_size_fails_the_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(EngineSettings(data_dir=tmp_path / "store"), MemoryTier(), start_mover=False)
    try:
        store.create_dataset("d")
        store.put("d", "kept", b"x" * 64)
        real = FrameSealer.seal
        monkeypatch.setattr(FrameSealer, "seal", lambda self, i, p: bytes(real(self, i, p)) + b"?")
        with pytest.raises(RuntimeError, match="sealed to"):
            store.put("d", "bad", b"y" * 64)
        monkeypatch.undo()
        assert store.get("d", "kept").to_bytes() == b"x" * 64
        with pytest.raises(ShardNotFound):
            store.get("d", "bad")
    finally:
        store.close()
