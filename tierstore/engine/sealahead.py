"""Seal-ahead: a helper thread seals a put's next frame while the writer stores this one.

Sealing a frame (xxh3 and the copy that appends it, or AES-GCM) and storing it in
LMDB (``txn.put`` copies it into a dirty page) are each a pass over the frame's
bytes. Done in turn on one thread they add up; ``xxhash``, ``cryptography`` and
``lmdb`` release the GIL for the long part of each, so on two threads they overlap.
The writer still stores the frames in order, each one sealed exactly once.

Small frames are sealed on the writer's thread: handing a frame to the helper costs
tens of microseconds of Python, more than sealing a frame under
:data:`MIN_AHEAD_BYTES` takes (a put of a million tiny frames spent most of its time
handing them over).

If the helper has not started the next frame when the writer needs it (its pool is
busy with another put), the writer takes the frame back and seals it itself: a
busy helper never makes a put wait.

Thread safety: :func:`sealed_ahead` may run on any number of threads at once, each
with its own frames; the pool is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence, Sized
from concurrent.futures import Executor, Future, wait
from typing import TypeVar

from tierstore.verifyahead import MIN_HELPER_FRAME_BYTES

__all__ = ["MIN_AHEAD_BYTES", "sealed_ahead"]

P = TypeVar("P", bound=Sized)
S = TypeVar("S")

#: The smallest payload sealed ahead on the helper; smaller ones are sealed inline
#: (the size below which verifying on a helper does not pay either).
MIN_AHEAD_BYTES = MIN_HELPER_FRAME_BYTES


def sealed_ahead(
    seal: Callable[[int, P], S], payloads: Sequence[P], helper_pool: Executor
) -> Generator[S, None, None]:
    """``seal(index, payload)`` of each payload, in order; the next one (if it has
    at least :data:`MIN_AHEAD_BYTES`) is sealed on ``helper_pool`` while the caller
    works on the one yielded. An exception from
    ``seal`` is raised when its frame is reached.

    Close the iterator when abandoning it (``contextlib.closing``): closing waits for a
    seal running on the helper, so that no thread still reads a payload (a view of the
    caller's buffer) after the caller's put has ended."""
    ahead: Future[S] | None = None
    try:
        for index, payload in enumerate(payloads):
            if ahead is not None and not ahead.cancel():
                current = ahead.result()
            else:
                current = seal(index, payload)
            ahead = None
            if index + 1 < len(payloads) and len(payloads[index + 1]) >= MIN_AHEAD_BYTES:
                try:
                    ahead = helper_pool.submit(seal, index + 1, payloads[index + 1])
                except RuntimeError:  # the pool is shut down (store closing): seal inline
                    ahead = None
            yield current
    finally:
        if ahead is not None and not ahead.cancel():
            wait([ahead])  # its outcome is dropped: nobody asked for that frame
