"""S3's limits on a multipart upload, and the one part size an object of known length
is sent in. Pure: no I/O, no boto3 (the engine sizes its stall allowance by it).

S3 wants every part but the last to be at least 5 MiB and at most 5 GiB, and an upload
to have at most 10,000 parts. Some S3-compatible stores want more: Cloudflare R2
refuses an upload whose parts (but the last) are not all one size ("All non-trailing
parts must have the same length"). So an upload has one part size:
:func:`part_size_for` an object of known length, the set part size for a stream of
unknown length (refused past 10,000 parts).
"""

from __future__ import annotations

from typing import Final

from tierstore.errors import InvalidArgument

__all__ = ["MAX_DELETE_KEYS", "MAX_PARTS", "MAX_PART_SIZE", "MiB", "part_size_for"]

MiB: Final = 1024 * 1024
#: S3's most parts of one upload (read at call time: tests shrink it)
MAX_PARTS = 10_000
#: S3's largest part
MAX_PART_SIZE: Final = 5 * 1024 * MiB
#: S3's most keys in one DeleteObjects request
MAX_DELETE_KEYS: Final = 1000


def part_size_for(total: int, configured: int) -> int:
    """The size of every part (but the last, which may be shorter) of an object of
    ``total`` bytes: ``configured``, or the least whole number of MiB that fits the
    object in MAX_PARTS parts, whichever is larger, and at most 5 GiB. Raises
    InvalidArgument for an object over MAX_PARTS parts of 5 GiB (48.8 TiB; S3 itself
    takes objects of up to 5 TiB). Pure."""
    if total > MAX_PARTS * MAX_PART_SIZE:
        raise InvalidArgument(
            f"an object of {total:,} bytes is over {MAX_PARTS:,} parts of 5 GiB, the most "
            "one S3 upload holds"
        )
    needed = -(-total // MAX_PARTS)
    needed = -(-needed // MiB) * MiB
    return min(max(configured, needed), MAX_PART_SIZE)
