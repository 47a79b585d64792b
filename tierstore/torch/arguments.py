"""Checks of the plugin's arguments: each refuses with InvalidArgument naming the
argument, so a mistyped option fails where it is given, never as a surprise later."""

from __future__ import annotations

from tierstore.errors import InvalidArgument
from tierstore.types import check_bool

__all__ = ["check_bool", "check_int"]


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool: True is no count) in ``[low, high)``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidArgument(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and value >= high:
        raise InvalidArgument(f"{name} must be below {high}, got {value}")
    return value
