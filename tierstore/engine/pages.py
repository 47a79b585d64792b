"""Cutting a listing into pages that a message can carry."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["take_page"]

T = TypeVar("T")


def take_page(
    entries: Iterable[T],
    limit: int,
    name_of: Callable[[T], str],
    *,
    max_bytes: int = 0,
    size_of: Callable[[T], int] | None = None,
) -> tuple[list[T], str | None]:
    """The first ``limit`` (at least 1) of ``entries``, and the name (``name_of``) of the
    page's last entry to start the next page after, or ``None`` when nothing follows.

    With ``size_of``, the page also ends before the entry whose ``size_of`` takes the
    page's total past ``max_bytes`` (never before its first entry, which goes alone
    however large), and nothing past that entry is taken from ``entries``: ``size_of``
    is called once for each entry of the page, in order, and for at most one more."""
    limit = max(1, limit)
    page: list[T] = []
    used = 0
    for entry in entries:
        if len(page) == limit:
            return page, name_of(page[-1])
        if size_of is not None:
            used += size_of(entry)
            if used > max_bytes and page:
                return page, name_of(page[-1])
        page.append(entry)
    return page, None
