"""Data keys granted to a local reader, per shard generation, in memory only.

An encrypted shard read in place needs its generation's data key, which the server
grants (``GrantDataKey``, reader role) over the TLS channel. Keys are kept here so a
generation costs one grant per process: never written anywhere, at most
``max_keys`` of them (least recently used go first), and dropped with their dataset
when its local-read grant is not renewed. A dropped key's bytes are overwritten
with zeros where this module holds them, and the cipher's own copy (inside
OpenSSL) is cleansed when the last reader using it lets go of it; the copy the
received message held (Python ``bytes``) is immutable and cannot be, so zeroing
is best effort — it shortens how long a key lingers, it does not bound it. Zeroing
never disturbs a read in flight: the cipher took its own copy when it was made.

Thread safety: :class:`DataKeys` is safe to share between threads. Fork safety: a
child inherits the cache as plain memory and may use it (same principal, same keys).
"""

from __future__ import annotations

from collections import OrderedDict

from tierstore.client.forklocks import ForkSafeLock
from tierstore.crypto import FrameCipher, zero

__all__ = ["DataKeys"]

_Generation = tuple[str, str, int]


class DataKeys:
    """Ciphers of shard generations, keyed by (dataset, shard, generation); bounded LRU."""

    def __init__(self, max_keys: int = 4096) -> None:
        self._max = max_keys
        self._lock = ForkSafeLock()
        self._ciphers: OrderedDict[_Generation, tuple[FrameCipher, bytearray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ciphers)

    def get(self, dataset: str, shard: str, generation: int) -> FrameCipher | None:
        """The cipher of a generation whose key was granted, or ``None``."""
        key = (dataset, shard, generation)
        with self._lock:
            found = self._ciphers.get(key)
            if found is None:
                return None
            self._ciphers.move_to_end(key)
            return found[0]

    def put(
        self, dataset: str, shard: str, generation: int, data_key: bytes, nonce_prefix: bytes
    ) -> FrameCipher:
        """Keep a granted key; returns its cipher. Raises InvalidArgument for a bad
        nonce prefix (and what ``cryptography`` raises for a bad key length)."""
        held = bytearray(data_key)  # the one copy we can zero later
        cipher = FrameCipher(held, nonce_prefix)  # type: ignore[arg-type]  # any buffer works
        dropped = []
        with self._lock:
            previous = self._ciphers.pop((dataset, shard, generation), None)
            if previous is not None:
                dropped.append(previous[1])
            self._ciphers[(dataset, shard, generation)] = (cipher, held)
            while len(self._ciphers) > self._max:
                dropped.append(self._ciphers.popitem(last=False)[1][1])
        for key in dropped:
            zero(memoryview(key))
        return cipher

    def drop_dataset(self, dataset: str) -> None:
        """Forget (and zero) every key of ``dataset``."""
        with self._lock:
            gone = [key for key in self._ciphers if key[0] == dataset]
            dropped = [self._ciphers.pop(key)[1] for key in gone]
        for key in dropped:
            zero(memoryview(key))

    def clear(self) -> None:
        """Forget (and zero) every key."""
        with self._lock:
            dropped = [held for _, held in self._ciphers.values()]
            self._ciphers.clear()
        for key in dropped:
            zero(memoryview(key))
