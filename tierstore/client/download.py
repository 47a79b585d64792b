"""Writing a shard's bytes to a file without holding them in memory.

``Client.get`` returns one buffer of the whole range: a 1 GiB shard took the CLI's
``get -o FILE`` to 1.2 GB of memory (a scale review). A download instead verifies
(and decrypts) each frame straight into a shared mapping of the file, whose pages
the OS writes back and reclaims as it needs: memory no longer grows with the shard.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # the CLI imports this module; the receiving side brings pyarrow
    from tierstore.client.receive import ShardStream

__all__ = ["output_paths", "stream_into_file", "write_all"]


def output_paths(path: Path) -> tuple[Path, Path | None]:
    """The file that output asked for at ``path`` goes to, and where it is written
    until whole: ``<file>.part``, renamed over the file then, so a failed write leaves
    it as it was. A link is followed, so that the file it names gets the output, not a
    file in its place; a device or a pipe is written in place (None: renaming a file
    over /dev/null would replace the device)."""
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        return target, None
    return target, target.with_name(target.name + ".part")


def stream_into_file(stream: ShardStream, path: Path) -> int:
    """Verify (and decrypt) ``stream``'s requested bytes into the file ``path``, made
    anew (or truncated: a retried stream starts over); returns how many. On
    IntegrityError the file's bytes are zeroed, as a buffer's are."""
    with path.open("w+b") as file:
        file.truncate(stream.length)
        if stream.length == 0:
            for _ in stream.messages:  # nothing to write: end the call cleanly
                pass
            return 0
        with mmap.mmap(file.fileno(), stream.length) as mapping:
            view = memoryview(mapping)
            try:
                return stream.into(view)
            finally:
                view.release()  # a mapping with a view still out cannot close


def write_all(file: BinaryIO, data: memoryview) -> int:
    """Write all of ``data`` to ``file``; returns its length. (A write cut short, by a
    reader of a pipe that went away, say, returns a count rather than raising.)"""
    view = data
    while view:
        view = view[file.write(view) :]
    return len(data)
