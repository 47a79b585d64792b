"""Checks of the plugin's arguments: each refuses with InvalidArgument naming the
argument, so a mistyped option fails where it is given, never as a surprise later."""

from __future__ import annotations

from tierstore.errors import InvalidArgument
from tierstore.types import check_bool, whole_number

__all__ = ["check_bool", "check_int"]


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is a whole number (an int or a numpy integer, not a
    bool: True is no count) in ``[low, high)``."""
    number = whole_number(value)
    if number is None or number < low:
        raise InvalidArgument(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and number >= high:
        raise InvalidArgument(f"{name} must be below {high}, got {value}")
    return number
