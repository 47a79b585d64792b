"""Buffer helpers shared by the Arrow framing and tensor tests."""

from __future__ import annotations

import struct

import pyarrow as pa

__all__ = ["KIB", "detached", "misaligned_body", "within"]

KIB = 1024


def detached(frames: list[pa.Buffer]) -> list[pa.Buffer]:
    """Each frame copied into its own allocation, as frames arrive from storage."""
    return [pa.py_buffer(bytearray(frame.to_pybytes())) for frame in frames]


def within(buffer: pa.Buffer, frame: pa.Buffer) -> bool:
    return bool(
        frame.address <= buffer.address
        and buffer.address + buffer.size <= (frame.address + frame.size)
    )


def misaligned_body(message: pa.Buffer) -> bytes:
    """``message`` (an encapsulated IPC message with a continuation marker) with 4
    bytes more of metadata announced and inserted before its body: a message pyarrow
    still reads, whose body buffers sit at addresses 4 past an 8-byte boundary."""
    data = message.to_pybytes()
    length = struct.unpack_from("<i", data, 4)[0]
    head = data[:4] + struct.pack("<i", length + 4) + data[8 : 8 + length]
    return head + bytes(4) + data[8 + length :]
