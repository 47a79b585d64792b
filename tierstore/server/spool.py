"""Frames of an incoming put, held until the whole stream has arrived.

A put commits in one LMDB transaction, so its frames must all be at hand first;
holding the LMDB writer open while a slow client streams would stall every
other writer. Small puts stay in memory; past ``memory_limit`` the frames go to
an unlinked temporary file in the data directory (so a plaintext dataset's put is
bounded by disk, not RAM). The puts of one server share a :class:`SpoolMemory` too
(``SERVER_SPOOL_MEMORY``): with every worker receiving a put, 64 MiB each would be
gigabytes, so once the puts in memory hold that much together, a put's frames go to
its file at once. Closing the spool (or an interrupted stream) frees everything: an
abandoned put leaks no space, nor does a failed one whose frames something still holds.

A put to an encrypted dataset must not reach the data disk in plaintext, not
even for the seconds it is spooled: with ``encrypted`` the file holds each frame
sealed by AES-256-GCM under a key made for this one spool and kept only in its
memory (nonce: the frame's index, unique under that key).
:meth:`FrameSpool.views` hands a spool file's frames over as
:class:`~tierstore.framing.FramesOnDemand`: each is read (and decrypted) when the
engine asks for it (Arrow validation, then sealing, chunk by chunk for a large put),
so the put holds a few frames at a time, not its whole size, at the cost of reading
(and decrypting) Arrow frames more than once. A frame that fails its tag (the disk changed
it) raises IntegrityError there, and the put stores nothing, instead of feeding wrong
bytes to the commit.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierstore.crypto import TAG_BYTES, zero
from tierstore.errors import IntegrityError, Unavailable
from tierstore.framing import FramesOnDemand

__all__ = ["SERVER_SPOOL_MEMORY", "FrameSpool", "SpoolMemory"]

#: bytes of frames the puts of one server hold in memory together.
SERVER_SPOOL_MEMORY = 512 << 20


class _SpoolCipher:
    """AES-256-GCM under a fresh random key, for the frames of one spool file."""

    __slots__ = ("_aead",)

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    @staticmethod
    def _nonce(index: int) -> bytes:
        return index.to_bytes(12, "big")

    def seal(self, index: int, frame: bytes) -> bytes:
        """Frame ``index`` as stored in the file: ciphertext and tag."""
        return self._aead.encrypt(self._nonce(index), frame, None)

    def open_into(self, index: int, sealed: bytes, out: memoryview) -> None:
        """Decrypt frame ``index`` into ``out``; IntegrityError, ``out`` zeroed, if it
        does not verify (decrypt_into leaves the unauthenticated plaintext there)."""
        try:
            self._aead.decrypt_into(self._nonce(index), sealed, None, out)
        except (InvalidTag, ValueError) as exc:  # ValueError: cut short
            zero(out)
            raise IntegrityError(
                f"frame {index} of a put changed in its spool file on disk; "
                "the put was not stored: send it again"
            ) from exc


class SpoolMemory:
    """Bytes of memory the spools of one server may hold together. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, nbytes: int) -> bool:
        """Count ``nbytes`` more as held, if they fit; whether they did."""
        with self._lock:
            if self._held + nbytes > self._limit:
                return False
            self._held += nbytes
            return True

    def give(self, nbytes: int) -> None:
        """Count ``nbytes`` taken before as free again."""
        with self._lock:
            self._held -= nbytes


class FrameSpool:
    """Append-only store of frames; one per put, used by one thread.

    With ``encrypted`` no frame reaches the file in plaintext (module docstring).
    """

    def __init__(
        self,
        directory: Path,
        memory_limit: int = 64 << 20,
        *,
        encrypted: bool = False,
        shared: SpoolMemory | None = None,
    ) -> None:
        self._directory = directory
        self._memory_limit = memory_limit
        #: the memory this spool shares with the server's other puts
        self._shared = shared
        self._frames: list[bytes] = []
        self._sizes: list[int] = []
        self._in_memory = 0
        self._file: IO[bytes] | None = None
        #: seals what goes to the file; the key lives and dies with this spool
        self._cipher = _SpoolCipher() if encrypted else None

    def __enter__(self) -> FrameSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def count(self) -> int:
        return len(self._sizes)

    @property
    def nbytes(self) -> int:
        return sum(self._sizes)

    def append(self, frame: bytes) -> None:
        """Keep one frame: in memory, or in the spool file past the memory limit or once
        the server's puts hold their shared memory."""
        self._sizes.append(len(frame))
        if (
            self._file is None
            and self._in_memory + len(frame) <= self._memory_limit
            and (self._shared is None or self._shared.take(len(frame)))
        ):
            self._frames.append(frame)
            self._in_memory += len(frame)
            return
        if self._file is None:
            # Made 0700, as the data directory's others; one that exists is left as it
            # is (ServerSettings.spool_dir may name a directory the operator keeps).
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Unnamed (already unlinked): the kernel frees it even if the server crashes.
            self._file = tempfile.TemporaryFile(dir=self._directory, prefix="put-")  # noqa: SIM115
            for index, held in enumerate(self._frames):
                self._write(index, held)
            self._frames = []
            self._give_memory_back()
        self._write(len(self._sizes) - 1, frame)

    def _write(self, index: int, frame: bytes) -> None:
        """Frame ``index`` to the file, sealed if this spool encrypts."""
        assert self._file is not None
        self._file.write(frame if self._cipher is None else self._cipher.seal(index, frame))

    def views(self) -> Sequence[memoryview]:
        """Every frame, in order, as views valid until :meth:`close`.

        Frames from the spool file come as :class:`_SpooledFrames`, read (and
        decrypted, for an encrypted spool) when asked for; asking raises
        IntegrityError (a DataLoss) if the file no longer holds what was written to
        it, Unavailable if it cannot be read."""
        if self._file is None:
            return [memoryview(frame) for frame in self._frames]
        self._file.flush()
        return _SpooledFrames(self._cipher, self._file, tuple(self._sizes))

    def _give_memory_back(self) -> None:
        if self._shared is not None:
            self._shared.give(self._in_memory)
        self._in_memory = 0

    def close(self) -> None:
        """Free memory and the spool file. Idempotent."""
        self._frames = []
        self._give_memory_back()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._cipher = None


class _SpooledFrames(FramesOnDemand):
    """A spool file's frames, each read (and, with a cipher, decrypted) when asked for.

    Read with pread, not through a map of the file: a map lived as long as any view of
    it, and a failed put's traceback holding one kept the file, and its space, until a
    garbage collection; and a file cut short is then an error, not SIGBUS. The last two
    frames asked for are kept, as a writer sealing one frame ahead asks for each twice.
    Valid while the spool is open: asking after :meth:`FrameSpool.close` raises
    ValueError (a frame asked for before stays whole)."""

    _KEPT = 2

    def __init__(
        self, cipher: _SpoolCipher | None, file: IO[bytes], sizes: tuple[int, ...]
    ) -> None:
        self._cipher = cipher
        self._file = file
        self._sizes = sizes
        overhead = TAG_BYTES if cipher is not None else 0
        #: where each frame starts in the file (its ciphertext, with a cipher)
        self._offsets = [0] * len(sizes)
        for index in range(1, len(sizes)):
            self._offsets[index] = self._offsets[index - 1] + sizes[index - 1] + overhead
        self._overhead = overhead
        self._kept: OrderedDict[int, memoryview] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def costly(self) -> bool:
        return self._cipher is not None  # a plaintext frame is a pread: a copy

    def frame(self, index: int) -> memoryview:
        with self._lock:
            kept = self._kept.get(index)
            if kept is not None:
                self._kept.move_to_end(index)
                return kept
            size = self._sizes[index]
            fd = self._file.fileno()  # ValueError once the spool is closed
            try:
                stored = os.pread(fd, size + self._overhead, self._offsets[index])
            except OSError as exc:  # not an OSError: Arrow validation takes those for bad data
                raise Unavailable(
                    f"frame {index} of a put could not be read back from its spool file "
                    f"({exc}); the put was not stored: send it again"
                ) from exc
            if self._cipher is None:
                if len(stored) != size:
                    raise IntegrityError(
                        f"frame {index} of a put was cut short in its spool file on disk; "
                        "the put was not stored: send it again"
                    )
                frame = memoryview(stored)
            else:
                frame = memoryview(bytearray(size))
                self._cipher.open_into(index, stored, frame)
            self._kept[index] = frame
            if len(self._kept) > self._KEPT:
                self._kept.popitem(last=False)
            return frame
