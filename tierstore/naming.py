"""Naming rules for datasets and shards (pure functions, no I/O).

* Dataset: ``[a-z0-9][a-z0-9._-]{0,62}``.
* Shard: a path-like key of 1 to 1024 UTF-8 bytes, printable (no control
  characters), no leading ``/``, no empty, ``.`` or ``..`` segment.

Names are compared byte for byte, as S3 keys are: no Unicode normalization (NFC and
NFD spellings of one word are two names), which would store a name other than the
one given.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable

from tierstore.errors import InvalidArgument, InvalidName

__all__ = [
    "MAX_SHARD_NAME_BYTES",
    "given_names",
    "is_dataset_name",
    "validate_dataset_name",
    "validate_shard_name",
]

MAX_SHARD_NAME_BYTES = 1024
_DATASET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def is_dataset_name(name: object) -> bool:
    """Whether ``name`` is a valid dataset name."""
    return isinstance(name, str) and _DATASET_RE.fullmatch(name) is not None


def validate_dataset_name(name: object) -> str:
    """Return ``name`` if it is a valid dataset name, else raise :class:`InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"dataset name must be a string, not {type(name).__name__}")
    if not is_dataset_name(name):
        raise InvalidName(
            f"invalid dataset name {name[:80]!r}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def validate_shard_name(name: object) -> str:
    """Return ``name`` if it is a valid shard name, else raise :class:`InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"shard name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidName("shard name is empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidName("shard name is not valid UTF-8 (lone surrogate)") from exc
    if size > MAX_SHARD_NAME_BYTES:
        raise InvalidName(f"shard name is {size} bytes; the limit is {MAX_SHARD_NAME_BYTES}")
    if name.startswith("/"):
        raise InvalidName(f"shard name {name[:80]!r} starts with '/'")
    # Printable ASCII (nearly every name) has none of the categories below; the check
    # per character costs about 0.1 ms for a long name, on every call naming a shard.
    for char in "" if name.isascii() and name.isprintable() else name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidName(
                f"shard name {name[:80]!r} contains a control or unprintable character "
                f"(U+{ord(char):04X})"
            )
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidName(f"shard name {name[:80]!r} has an empty, '.' or '..' path segment")
    return name


def given_names(
    value: object,
    must_be: str,
    *,
    error: type[InvalidArgument] = InvalidArgument,
    most: int | None = None,
) -> tuple[object, ...]:
    """``value``, names given as any iterable (a generator too), as a tuple: taken once,
    since a generator has nothing left for a second pass, and with ``most`` at most
    ``most`` + 1 of them (an endless one is taken no further; the caller refuses past
    ``most``). Raises ``error`` ("``must_be``, not ...") for a str, which would be the
    names of its one-letter items, and for what is no iterable (None, a number). The
    entries themselves are the caller's to check."""
    if isinstance(value, str):
        raise error(f"{must_be}, not one string: {value!r:.40}")
    if not isinstance(value, Iterable):
        raise error(f"{must_be}, not {value!r:.40}")
    return tuple(value if most is None else itertools.islice(value, most + 1))
