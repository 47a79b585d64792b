"""Buffer helpers shared by the Arrow framing and tensor tests."""

from __future__ import annotations

import pyarrow as pa

__all__ = ["KIB", "detached", "within"]

KIB = 1024


def detached(frames: list[pa.Buffer]) -> list[pa.Buffer]:
    """Each frame copied into its own allocation, as frames arrive from storage."""
    return [pa.py_buffer(bytearray(frame.to_pybytes())) for frame in frames]


def within(buffer: pa.Buffer, frame: pa.Buffer) -> bool:
    return bool(
        frame.address <= buffer.address
        and buffer.address + buffer.size <= (frame.address + frame.size)
    )
