"""Byte views of buffer-protocol objects (stdlib only).

pyarrow exports signed ``'b'`` buffers and numpy many formats; consumers such as
``cryptography`` and LMDB want flat unsigned bytes. Everything that takes a
caller's buffer goes through :func:`byte_view` once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

__all__ = ["BytesLike", "byte_view", "value_chunks"]

#: Anything with the buffer protocol that a tier accepts as a value.
BytesLike = bytes | bytearray | memoryview


def byte_view(value: object) -> memoryview | None:
    """A flat unsigned-byte view of ``value`` if it exports the buffer protocol, else ``None``.

    pyarrow exports signed ``'b'`` and numpy many formats; consumers such as
    ``cryptography`` take only ``'B'``. A non-contiguous buffer is copied.
    """
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B") if view.c_contiguous else memoryview(view.tobytes())


def value_chunks(value: BytesLike | Iterable[BytesLike]) -> Iterator[memoryview]:
    """A tier value as byte views: itself if it is one buffer, else each item of the iterable.

    Anything with the buffer protocol counts as one buffer (a numpy array is one
    value, not an iterable of elements). Raises :class:`TypeError` for an item
    that is not a buffer.
    """
    single = byte_view(value)
    if single is not None:
        yield single
        return
    for item in cast("Iterable[BytesLike]", value):
        view = byte_view(item)
        if view is None:
            raise TypeError(
                "a tier value must be a buffer or an iterable of buffers, "
                f"got a {type(item)!r} item"
            )
        yield view
