"""What one message of the tierstore.v1 protocol may carry, for the client and the
server alike: a message that one side sends and the other refuses is a shard stored
that cannot be read back."""

from __future__ import annotations

__all__ = ["MAX_FRAME_BYTES", "MAX_MESSAGE_BYTES"]

MiB = 1 << 20
#: The largest frame: the most a node's ``max_frame_bytes`` and a client's
#: ``frame_bytes`` may be. Frames are the unit of transfer.
MAX_FRAME_BYTES = 64 * MiB
#: The largest message either side sends or accepts: one frame plus its envelope.
MAX_MESSAGE_BYTES = 80 * MiB
