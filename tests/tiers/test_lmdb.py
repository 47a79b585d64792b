"""LmdbTier: the conformance suite against a fresh LMDB environment per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiers.conformance import TierConformance
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbTier

#: Room for the large-value tests (several 20 MiB values plus overwrites); sparse on disk.
MAP_SIZE = 1 << 30


class TestLmdbTier(TierConformance):
    @pytest.fixture
    def tier(self, tmp_path: Path) -> Iterator[LmdbTier]:
        tier = LmdbTier.open(tmp_path / "env", map_size=MAP_SIZE)
        yield tier
        tier.close()

    # Backdoors through the environment's own transactions, bypassing LmdbTier.get/put.

    def backdoor_put(self, tier: Tier, key: str, value: bytes) -> None:
        assert isinstance(tier, LmdbTier)
        with tier.environment.write() as txn:
            txn.put(key.encode(), value, db=tier.environment.db(tier.name))

    def backdoor_get(self, tier: Tier, key: str) -> bytes | None:
        assert isinstance(tier, LmdbTier)
        with tier.environment.read() as txn:
            value = txn.get(key.encode(), db=tier.environment.db(tier.name))
            return None if value is None else bytes(value)
