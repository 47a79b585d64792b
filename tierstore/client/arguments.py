"""Checks of the client's arguments, each raising InvalidArgument that names the
argument: protobuf's own errors (a raw ValueError or TypeError, a UnicodeEncodeError
for a lone surrogate) said neither which argument nor what it should be."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar, cast, overload

from tierstore.client.deadlines import MAX_TIMEOUT_S, timeout_problem
from tierstore.errors import InvalidArgument
from tierstore.types import (
    ALL_DATASETS,
    MAX_TTL_S,
    Durability,
    Grant,
    Role,
    check_backlog_quota,
    check_hot_quota,
    seconds_up_to,
)
from tierstore.types import whole_number as integer_of
from tierstore.wire.limits import MAX_FRAME_BYTES

__all__ = [
    "Checked",
    "backlog_quota",
    "checked_prefix",
    "checked_text",
    "durability_named",
    "env_flag",
    "grant_list",
    "hot_quota",
    "optional_path",
    "positive_bytes",
    "positive_seconds",
    "readable_tls_file",
    "token_ttl",
    "whole_number",
]


def whole_number(name: str, value: object, unit: str = "bytes") -> int:
    """``value`` as an int, if it is an integer (numpy's too) and not a bool; else
    InvalidArgument naming ``name`` and what it counts, ``unit`` (a float offset is no
    byte position, and True is no length)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{name} must be a whole number of {unit}, not {value!r:.40}")
    return int(value)


def checked_text(name: str, value: object, what: str) -> str:
    """``value`` as a string a request can carry, else InvalidArgument naming ``name``
    and ``what`` it is: a str that encodes as UTF-8 (an undecodable byte of a command
    line or a file name arrives as a lone surrogate, which protobuf refuses with a raw
    UnicodeEncodeError)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be {what} (a str), not {value!r:.80}")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{name} is not valid UTF-8: it holds a lone surrogate at position {exc.start} "
            "(an undecodable byte of a command line or a file name becomes one)"
        ) from None
    return value


def grant_list(grants: object) -> list[Grant]:
    """``grants`` as a list of Grants, listed once (a generator has nothing left for
    the request after a check), else InvalidArgument."""
    listed = list(grants) if isinstance(grants, Iterable) else [grants]
    if isinstance(grants, str | bytes) or not all(isinstance(g, Grant) for g in listed):
        raise InvalidArgument(
            "grants must be a sequence of tierstore.types.Grant(dataset, Role...), not "
            f"{listed!r:.80}"
        )
    return [_checked_grant(grant) for grant in cast(list[Grant], listed)]


def _checked_grant(grant: Grant) -> Grant:
    """``grant`` with its role as a Role (its name, "reader", is taken too), else
    InvalidArgument: a misspelt role was a KeyError, a dataset of another type a
    TypeError, from deep in the request's making."""
    if not isinstance(grant.dataset, str):
        raise InvalidArgument(
            f"a grant's dataset must be a str (a name, or {ALL_DATASETS!r} for every "
            f"dataset), not {type(grant.dataset).__name__}"
        )
    try:
        role = Role(grant.role)
    except ValueError:
        roles = ", ".join(known.value for known in Role)
        raise InvalidArgument(
            f"{grant.role!r:.40} is not a role (the roles are {roles}) in the grant on "
            f"{grant.dataset!r:.80}"
        ) from None
    return Grant(grant.dataset, role)


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a deadline in seconds: a number above 0 and at most ten years (not a
    bool), else InvalidArgument naming ``name`` (a deadline of 0, NaN, infinity or
    past about 9e9 s made every call fail at once with DEADLINE_EXCEEDED)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"{name} must be a number of seconds, not {value!r:.40}")
    seconds = seconds_up_to(value, MAX_TIMEOUT_S)  # 10**400 overflows float()
    if seconds is None:
        raise InvalidArgument(f"{name} must be {timeout_problem(cast(float, value))}")
    return seconds


#: The shortest lifetime a token may be given (0 is none: it never expires), as the
#: server's token store takes it.
MIN_TOKEN_TTL_S = 1.0


def token_ttl(value: object) -> float:
    """``value`` as a token's ``ttl_s``: 0 (or None: never expires) or from
    :data:`MIN_TOKEN_TTL_S` to ten years, else InvalidArgument (a string was a bare
    TypeError, and a TTL out of range was sent to the server)."""
    if value is None:
        return 0.0
    seconds = seconds_up_to(value, MAX_TTL_S)
    real = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if seconds is None and real and value == 0:  # (an array is no Real: never compared)
        return 0.0
    if seconds is None or seconds < MIN_TOKEN_TTL_S:
        raise InvalidArgument(
            f"ttl_s must be 0 (never expires) or from {MIN_TOKEN_TTL_S:g} to {MAX_TTL_S:.0f} "
            f"seconds (ten years; the CLI's --ttl), not {value!r:.40}"
        )
    return seconds


def hot_quota(value: object) -> int:
    """``value`` as a dataset's hot quota in bytes, numpy's integers too (refused as
    not an int), else InvalidArgument (:func:`~tierstore.types.check_hot_quota`)."""
    return check_hot_quota(_as_int(value))


def backlog_quota(value: object) -> int:
    """``value`` as a dataset's backlog quota in bytes, as :func:`hot_quota` takes a
    hot quota (:func:`~tierstore.types.check_backlog_quota`)."""
    return check_backlog_quota(_as_int(value))


def _as_int(value: object) -> object:
    """``value`` as an int when it is a whole number of another type (numpy's), else
    itself, for the check to refuse."""
    whole = integer_of(value)
    return value if whole is None else whole


def positive_bytes(name: str, value: object) -> int:
    """``value`` as a size in bytes above 0, else InvalidArgument naming ``name``."""
    size = whole_number(name, value)
    if size <= 0:
        raise InvalidArgument(f"{name} must be at least 1 byte, not {size}")
    return size


def frame_size(name: str, value: object) -> int:
    """``value`` as a frame size: 1 byte to :data:`MAX_FRAME_BYTES` (a larger frame fits
    in no message), else InvalidArgument naming ``name``."""
    size = positive_bytes(name, value)
    if size > MAX_FRAME_BYTES:
        raise InvalidArgument(
            f"{name} must be at most {MAX_FRAME_BYTES:,} bytes (64 MiB: a larger frame fits "
            f"in no message), not {size:,}"
        )
    return size


V = TypeVar("V")


class Checked(Generic[V]):
    """A public attribute checked each time it is set, by ``check(name, value)``: a
    client's deadlines and frame size may be changed after it is made (a frame size
    of -1 cut a put into no frames at all, and stored an empty shard)."""

    def __init__(self, check: Callable[[str, object], V]) -> None:
        self._check = check
        self._name = self._slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name, self._slot = name, f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> Checked[V]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> V: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> V | Checked[V]:
        return self if obj is None else cast(V, getattr(obj, self._slot))

    def __set__(self, obj: object, value: object) -> None:
        setattr(obj, self._slot, self._check(self._name, value))


def durability_named(value: str | Durability) -> Durability:
    """The Durability ``value`` names, else InvalidArgument listing the two."""
    try:
        return Durability(value)
    except ValueError:
        raise InvalidArgument(
            f"durability must be 'write-back' or 'write-through', not {value!r:.40}"
        ) from None


def optional_path(name: str, value: object) -> Path | None:
    """``value`` as a Path (None and "" as None), if it is a str or an os.PathLike;
    else InvalidArgument naming ``name`` (pathlib's TypeError named no argument)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str | os.PathLike):
        raise InvalidArgument(
            f"{name}= must be a path (a str or os.PathLike), not {type(value).__name__}"
        )
    return Path(value)


def readable_tls_file(name: str, variable: str, path: Path) -> None:
    """InvalidArgument unless ``path`` (given as ``name`` or in ``variable``) is a file:
    refused when the client is made, not at its first call. Its contents are read (and
    checked) when the channel is made, in each process."""
    try:
        why = None if path.is_file() else "a directory" if path.is_dir() else "no such file"
    except OSError as exc:  # a directory on the way that this user may not search
        why = exc.strerror or str(exc)
    if why is not None:
        raise InvalidArgument(f"cannot read TLS file {path} ({name}= or {variable}): {why}")


def env_flag(text: str, name: str, default: bool) -> bool:
    """An on/off environment setting (empty: ``default``). Raises InvalidArgument."""
    value = text.strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"{name} must be 0 or 1 (or false/true, no/yes, off/on), not {text!r}")


def checked_prefix(prefix: object) -> str:
    """A shard-name ``prefix`` (None: "", every shard) as :func:`checked_text` checks it:
    a falsy non-string (0, False, []) is refused, not taken for every shard."""
    return checked_text("prefix", "" if prefix is None else prefix, "the start of shard names")
