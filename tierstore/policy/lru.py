"""Least-recently-used eviction: the baseline policy."""

from __future__ import annotations

from collections.abc import Iterable

from tierstore.policy.base import EvictionCandidate

__all__ = ["LruPolicy"]


class LruPolicy:
    """Evicts the shards read longest ago first (never-read shards count as oldest)."""

    def choose_victims(
        self, candidates: Iterable[EvictionCandidate], bytes_to_free: int
    ) -> list[EvictionCandidate]:
        victims: list[EvictionCandidate] = []
        freed = 0
        for candidate in sorted(candidates, key=lambda c: (c.last_access, c.generation)):
            if freed >= bytes_to_free:
                break
            victims.append(candidate)
            freed += candidate.stored_bytes
        return victims
