"""Fixtures of the engine tests: store factories over a MemoryTier or the session SeaweedFS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.recording import RecordingPolicy
from tests.engine.stores import DATASETS, StoreFactory
from tierstore.engine import policies
from tierstore.engine.store import Store
from tierstore.policy.base import Policy
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3 import S3Settings, S3Tier


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[StoreFactory]:
    """``open_store(archive, keyring, data_dir=..., **settings)``; closes every store it opened."""
    factory = StoreFactory(tmp_path)
    yield factory
    factory.close_all()


@pytest.fixture
def archive() -> MemoryTier:
    """An in-memory archive: the test reads and changes its objects directly."""
    return MemoryTier()


@pytest.fixture
def store(open_store: StoreFactory, archive: MemoryTier) -> Store:
    """A store over ``archive`` with the datasets plain, enc, wt and wt-enc."""
    return open_store(archive, datasets=DATASETS)


@pytest.fixture
def s3_archive(s3_settings: S3Settings) -> Iterator[S3Tier]:
    """An S3Tier on an empty private prefix of the session's SeaweedFS bucket."""
    tier = S3Tier(s3_settings)
    yield tier
    tier.close()


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """Policies named ``recording`` (admits misses) and ``refusing`` (admits none) are
    :class:`RecordingPolicy` objects (see ``tests.engine.recording.policy_of``)."""
    real = policies.make_driven_policy

    def make(name: str) -> Policy:
        if name in ("recording", "refusing"):
            return RecordingPolicy(admits=name == "recording")
        return real(name)

    monkeypatch.setattr(policies, "make_driven_policy", make)
