"""What one message of the tierstore.v1 protocol may carry, for the client and the
server alike: a message that one side sends and the other refuses is a shard stored
that cannot be read back."""

from __future__ import annotations

__all__ = [
    "DEFAULT_PAGE_ENTRIES",
    "ENTRY_OVERHEAD",
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PAGE_ENTRIES",
    "answer_budget",
]

MiB = 1 << 20
#: The largest frame: the most a node's ``max_frame_bytes`` and a client's
#: ``frame_bytes`` may be. Frames are the unit of transfer.
MAX_FRAME_BYTES = 64 * MiB
#: The largest message either side sends or accepts: one frame plus its envelope.
MAX_MESSAGE_BYTES = 80 * MiB
#: What an entry of a repeated field costs on the wire past its own bytes, at most:
#: its tag and its length.
ENTRY_OVERHEAD = 6
#: The entries of a listing's page (ListShards, ListDatasets) when the caller asks no
#: limit (0), and the most it may ask.
DEFAULT_PAGE_ENTRIES = 1000
MAX_PAGE_ENTRIES = 10_000


def answer_budget(message_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """What the entries of an answer that grows with the data (a ListShards page, the
    reports of lost shards) may fill, with messages of at most ``message_bytes``: a
    fifth of it (16 MiB), the rest left for the answer's other fields. Past the limit
    the answer is never sent (RESOURCE_EXHAUSTED), so the call failed every time."""
    return message_bytes // 5
