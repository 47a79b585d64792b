"""Re-cutting an upload stream into multipart parts: exact sizes, every byte once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tierstore.tiers.s3_parts import fixed_parts


@given(
    chunks=st.lists(st.binary(max_size=64), max_size=12),
    size=st.integers(min_value=1, max_value=40),
)
def test_parts_are_the_stream_recut_to_the_part_size(chunks: list[bytes], size: int) -> None:
    parts = list(fixed_parts((memoryview(chunk) for chunk in chunks), size))
    assert b"".join(parts) == b"".join(chunks)
    assert all(len(part) == size for part in parts[:-1])
    assert all(0 < len(part) <= size for part in parts)  # never an empty part
    assert all(isinstance(part, bytes) for part in parts)


def test_a_part_does_not_change_when_its_chunks_do() -> None:
    # The mover reuses nothing, but a caller may: a part must own its bytes.
    first, second = bytearray(b"abcd"), bytearray(b"efgh")
    parts = fixed_parts(iter([memoryview(first), memoryview(second)]), 6)
    part = next(parts)
    first[:] = b"xxxx"
    assert part == b"abcdef"
    assert list(parts) == [b"gh"]
