"""``tierstore serve`` with suspected hot spots patched out in its process (what-if only).

Usage (the arguments are ``tierstore``'s)::

    python benchmarks/serve_what_if.py serve --data-dir DIR ...

Used by ``service_report.py --what-if`` to measure how much two suspected hot
spots of the get path cost, without changing the package:

1. **Nested message construction.** ``ShardServicer.GetShard`` builds each frame
   message as ``GetShardResponse(frame=StoredFrame(index=..., data=stored))``;
   passing a message to a constructor copies it, so every 4 MiB frame is copied
   once more into a fresh arena. Patched: the response is built in place
   (``response.frame.data = stored``), one copy fewer.
2. **Read-ahead of hot frames.** ``SealedReader.stream`` keeps up to eight frames
   ahead of the consumer, and for hot frames those are ``bytes`` copies made at
   once: every stream holds up to 32 MiB of frames the client has not asked for.
   Patched: a hot shard's frames are read one at a time as they are consumed
   (cold shards keep the read-ahead, which overlaps archive GETs).

Nothing else differs from ``python -m tierstore``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tierstore.v1 import shards_pb2  # (protobuf only: grpc is not loaded yet)

if TYPE_CHECKING:
    from tierstore.engine import sealedpath

__all__ = ["patch"]


class _InPlaceMessages:
    """Stands in for ``shards_pb2`` inside ``tierstore.server.shards``: frame messages are
    built in place; every other name is the real module's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(shards_pb2, name)

    @staticmethod
    def StoredFrame(index: int, data: bytes) -> tuple[int, bytes]:
        return index, data  # taken apart again by GetShardResponse below

    @staticmethod
    def GetShardResponse(
        header: Any = None, frame: tuple[int, bytes] | None = None
    ) -> shards_pb2.GetShardResponse:
        if header is not None:
            return shards_pb2.GetShardResponse(header=header)  # small: copied as before
        response = shards_pb2.GetShardResponse()
        assert frame is not None
        response.frame.index, response.frame.data = frame
        return response


def _stream_hot_lazily(original: Any) -> Any:
    def stream(
        self: sealedpath.SealedReader, record: Any, slices: tuple[Any, ...]
    ) -> Iterator[tuple[int, bytes]]:
        if not record.hot:
            yield from original(self, record, slices)
            return
        for piece in slices:
            stored = self._hot_frame(record, piece.index)
            if stored is None:  # evicted under the stream: the original handles the rest
                rest = tuple(s for s in slices if s.index >= piece.index)
                yield from original(self, record, rest)
                return
            yield piece.index, stored

    return stream


def patch() -> None:
    """Apply both what-if patches to this process (it loads grpc: call it once the
    console script's first steps are done, as ``main`` below does)."""
    from tierstore.engine import sealedpath
    from tierstore.server import shards

    shards.shards_pb2 = _InPlaceMessages()  # type: ignore[attr-defined,assignment]
    reader = sealedpath.SealedReader
    reader.stream = _stream_hot_lazily(reader.stream)  # type: ignore[method-assign]


if __name__ == "__main__":
    from tierstore.cli.entry import main

    sys.argv[0] = "tierstore"
    main(prepare=patch)
