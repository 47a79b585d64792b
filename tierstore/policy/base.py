"""The placement-policy seam (pure: no I/O).

The engine asks a policy which hot shards to evict; the placement-policy work
replaces the LRU placeholder with frequency- and plan-aware policies through
this same interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["EvictionCandidate", "EvictionPolicy"]


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    """A hot shard the engine may evict (the archive already holds it; not pinned)."""

    dataset: str
    name: str
    generation: int
    stored_bytes: int
    access_count: int
    last_access: float


class EvictionPolicy(Protocol):
    """Chooses eviction victims."""

    def choose_victims(
        self, candidates: Iterable[EvictionCandidate], bytes_to_free: int
    ) -> list[EvictionCandidate]:
        """Victims, in eviction order, whose stored bytes add up to at least ``bytes_to_free``
        (or all candidates if they do not)."""
        ...
