"""MemoryTier: the conformance suite plus what only an in-process tier promises."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tiers.conformance import TierConformance, pattern
from tierstore.tiers.base import Tier
from tierstore.tiers.memory import MemoryTier


class TestMemoryTier(TierConformance):
    @pytest.fixture
    def tier(self) -> Iterator[MemoryTier]:
        tier = MemoryTier()
        yield tier
        tier.close()

    def backdoor_get(self, tier: Tier, key: str) -> bytes | None:
        assert isinstance(tier, MemoryTier)
        return tier._values.get(key)

    def test_views_survive_overwrite_and_delete(self, tier: MemoryTier) -> None:
        tier.put("k", b"first value")
        whole = tier.get("k")
        part = tier.get("k", (6, 5))
        tier.put("k", b"second")
        assert whole is not None and bytes(whole) == b"first value"
        tier.delete("k")
        assert part is not None and bytes(part) == b"value"
        assert whole.readonly

    def test_non_byte_buffers_are_stored_as_raw_bytes(self, tier: MemoryTier) -> None:
        import array

        numbers = array.array("i", range(100))
        tier.put("ints", memoryview(numbers))
        tier.put("ints-chunks", [memoryview(numbers[:10]), memoryview(numbers)[10:]])
        assert self.backdoor_get(tier, "ints") == numbers.tobytes()
        assert self.backdoor_get(tier, "ints-chunks") == numbers.tobytes()

    def test_rejects_values_that_are_not_buffers(self, tier: MemoryTier) -> None:
        with pytest.raises(TypeError):
            tier.put("k", "a string")  # type: ignore[arg-type]
        assert tier.get("k") is None

    def test_close_drops_the_values(self, tier: MemoryTier) -> None:
        tier.put("k", pattern(100))
        tier.close()
        assert tier._values == {}
