"""How the engine tests build stores: settings, master keys, payloads, polling.

Every store here uses the smallest frame size (4096 bytes), so ordinary test
payloads span several frames, and a mover that retries a failing archive
within a fraction of a second.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierstore.config import EngineSettings
from tierstore.crypto import LocalKeyring
from tierstore.engine.store import Store
from tierstore.tiers.base import Tier
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability

__all__ = [
    "DATASETS",
    "FRAME",
    "KEYRING",
    "OTHER_KEYRING",
    "StoreFactory",
    "engine_settings",
    "payload",
    "wait_until",
]

FRAME = 4096
KEY_1 = os.urandom(32)
KEY_2 = os.urandom(32)
#: The master keyring most tests use: one key, id "k1".
KEYRING = LocalKeyring(keys={"k1": KEY_1}, current="k1")
#: Another key under the same id "k1": a wrong master key.
OTHER_KEYRING = LocalKeyring(keys={"k1": KEY_2}, current="k1")

#: The datasets a ready-made store holds.
DATASETS: dict[str, DatasetSettings] = {
    "plain": DatasetSettings(),
    "enc": DatasetSettings(encrypted=True),
    "wt": DatasetSettings(durability=Durability.WRITE_THROUGH),
    "wt-enc": DatasetSettings(encrypted=True, durability=Durability.WRITE_THROUGH),
}


def engine_settings(data_dir: Path, **overrides: Any) -> EngineSettings:
    """Settings for a test store: 4 KiB frames, 64 MiB hot capacity, quick retries, no
    disk reserve (16 MiB of disk a store: tests/engine/test_disk_reserve.py has one)."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "hot_capacity_bytes": 64 << 20,
        "max_frame_bytes": FRAME,
        "mover_retry_initial_s": 0.02,
        "mover_retry_max_s": 0.2,
        "access_flush_interval_s": 0.2,
        "cold_read_parallelism": 4,
        "disk_reserve_bytes": 0,
    }
    values.update(overrides)
    return EngineSettings(**values)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes: a wrong offset or a mixed generation never matches."""
    return random.Random(seed).randbytes(size)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class StoreFactory:
    """Opens stores for one test and closes every one of them at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._opened: list[Store] = []
        self._count = 0

    def new_dir(self) -> Path:
        self._count += 1
        return self.root / f"store-{self._count}"

    def __call__(
        self,
        archive: Tier | None = None,
        keyring: LocalKeyring | None = KEYRING,
        *,
        data_dir: Path | None = None,
        datasets: dict[str, DatasetSettings] | None = None,
        start_mover: bool = True,
        **overrides: Any,
    ) -> Store:
        """A store over ``archive`` (a fresh MemoryTier if none) holding ``datasets``."""
        store = Store(
            engine_settings(data_dir or self.new_dir(), **overrides),
            archive if archive is not None else MemoryTier(),
            keyring,
            start_mover=start_mover,
        )
        self._opened.append(store)
        for name, settings in (datasets or {}).items():
            store.create_dataset(name, settings)
        return store

    def reopen(
        self,
        store: Store,
        archive: Tier,
        keyring: LocalKeyring | None = KEYRING,
        **overrides: Any,
    ) -> Store:
        """Close ``store`` and open its data directory again (a restart)."""
        store.close()
        return self(archive, keyring, data_dir=store.settings.data_dir, **overrides)

    def close_all(self) -> None:
        for store in self._opened:
            store.close()
