"""Data keys granted to a local reader, per shard generation, in memory only.

An encrypted shard read in place needs its generation's data key, which the server
grants (``GrantDataKey``, reader role) over the TLS channel. Keys are kept here so a
generation costs one grant per process, never written anywhere, and only as long as
the reader may use them:

* a key is kept only while its dataset holds a live local-read grant
  (:meth:`DataKeys.grant` sets its deadline), and only until the deadline of the
  grant it was last used under: :meth:`DataKeys.expire` drops it then — the read
  path calls it at every local read and on the read reporter's thread, so no read
  is needed for it to go. A renewal extends no key by itself (a deleted shard's key
  was kept for as long as its dataset was read); one in use is granted again, one
  ``GrantDataKey`` per generation read per grant;
* a shard keeps the key of one generation, its newest: caching a newer generation's
  key drops the older one's, and an older generation's key is not kept next to a
  newer one;
* at most ``max_keys`` of them, least recently used dropped first; all of a
  dataset's when its grant is refused; all at ``close()``.

A dropped key's bytes are overwritten with zeros where this module holds them, and
the cipher's own copy (inside OpenSSL) is cleansed when the last reader using it lets
go of it; the copy the received message held (Python ``bytes``) is immutable and
cannot be, so zeroing is best effort — it shortens how long a key lingers, it does
not bound it. Zeroing never disturbs a read in flight: the cipher has a copy of its
own (see :func:`_cipher_has_its_own_key`).

Thread safety: :class:`DataKeys` is safe to share between threads. Fork safety: a
child inherits the cache as plain memory and may use it (same principal, same keys).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tierstore.client.forklocks import ForkSafeLock
from tierstore.crypto import NONCE_PREFIX_BYTES, FrameCipher, zero
from tierstore.errors import IntegrityError

__all__ = ["DataKeys"]


def _cipher_has_its_own_key(make: Callable[[bytearray, bytes], FrameCipher]) -> bool:
    """Whether a cipher made from a key buffer still works once that buffer is zeroed.

    ``cryptography``'s ``AESGCM`` copies the key into OpenSSL when it is made if it is
    built with OpenSSL 3.2 or later, LibreSSL, BoringSSL or AWS-LC (its published
    wheels are); built against an older OpenSSL it keeps the buffer it was given and
    reads it at every use, so zeroing that buffer would fail every later decryption
    with that cipher — reads in flight included — as a bad tag (``DataLoss``).
    """
    key = bytearray(range(32))
    cipher = make(key, bytes(NONCE_PREFIX_BYTES))
    sealed = cipher.encrypt(0, b"probe", b"")
    zero(memoryview(key))
    try:
        cipher.decrypt_into(0, sealed, b"", memoryview(bytearray(5)))
    except IntegrityError:
        return False
    return True


def _new_cipher(key: bytes | bytearray, nonce_prefix: bytes) -> FrameCipher:
    return FrameCipher(key, nonce_prefix)  # type: ignore[arg-type]  # any buffer works


#: Decided once per process: whether the cipher may be given the buffer this module
#: zeroes, or needs a copy of its own (immutable, so never zeroed, but freed with it).
_CIPHER_HAS_ITS_OWN_KEY = _cipher_has_its_own_key(_new_cipher)


@dataclass(slots=True)
class _Key:
    """One shard's cached key: its generation, cipher, the buffer we zero, and until
    when it is kept (the deadline of the grant it was last used under)."""

    generation: int
    cipher: FrameCipher
    held: bytearray
    until: float


class DataKeys:
    """Ciphers of shard generations, one generation per (dataset, shard); bounded LRU.

    ``clock`` (``time.monotonic`` by default) is the clock grant deadlines are read
    against.
    """

    def __init__(self, max_keys: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_keys
        self._clock = clock
        self._lock = ForkSafeLock()
        # (dataset, shard) -> the key of its newest generation; least recently used first.
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()
        # dataset -> its grant's deadline; no entry: no grant, no keys kept.
        self._until: dict[str, float] = {}
        # The earliest deadline in _until (or earlier): expire() is O(1) before it.
        self._next_deadline = math.inf

    def __len__(self) -> int:
        return len(self._keys)

    def grant(self, dataset: str, until: float) -> None:
        """``dataset`` holds a local-read grant until ``until`` (a ``clock`` time): keys
        of it used from now on may be kept until then. A renewal sets the new deadline
        (the keys not used since keep the old one)."""
        with self._lock:
            self._until[dataset] = until
            self._next_deadline = min(self._next_deadline, until)

    def get(self, dataset: str, shard: str, generation: int) -> FrameCipher | None:
        """The cipher of a generation whose key was granted, or ``None``; used now, it is
        kept until the dataset's grant runs out."""
        with self._lock:
            found = self._keys.get((dataset, shard))
            if found is None or found.generation != generation:
                return None
            self._keys.move_to_end((dataset, shard))
            found.until = max(found.until, self._until.get(dataset, found.until))
            return found.cipher

    def put(
        self, dataset: str, shard: str, generation: int, data_key: bytes, nonce_prefix: bytes
    ) -> FrameCipher:
        """Keep a granted key, dropping (and zeroing) the shard's key of an older
        generation; returns its cipher.

        The key is not kept — zeroed at once — when ``dataset`` holds no live grant
        (:meth:`grant`) or a newer generation's key of the shard is cached; the cipher
        returned works either way. Raises InvalidArgument for a bad nonce prefix (and
        what ``cryptography`` raises for a bad key length).
        """
        held = bytearray(data_key)  # the one copy we can zero later
        cipher = _new_cipher(held if _CIPHER_HAS_ITS_OWN_KEY else bytes(held), nonce_prefix)
        now = self._clock()
        dropped = []
        slot = (dataset, shard)
        with self._lock:
            current = self._keys.get(slot)
            if now >= self._until.get(dataset, -math.inf) or (
                current is not None and current.generation > generation
            ):
                dropped.append(held)
            else:
                if current is not None:
                    dropped.append(self._keys.pop(slot).held)
                self._keys[slot] = _Key(generation, cipher, held, self._until[dataset])
                while len(self._keys) > self._max:
                    dropped.append(self._keys.popitem(last=False)[1].held)
        _zero_all(dropped)
        return cipher

    def expire(self) -> int:
        """Drop (and zero) the keys whose deadline has passed — every key of a dataset
        whose grant ran out, and those not used under its renewal — and forget the
        grants run out; returns how many keys were dropped. O(1) while no deadline has
        passed."""
        now = self._clock()
        with self._lock:
            if now < self._next_deadline:
                return 0
            for dataset in [d for d, until in self._until.items() if until <= now]:
                del self._until[dataset]
            dropped = self._pop_locked(lambda slot, key: key.until <= now)
            self._next_deadline = min(
                itertools.chain(self._until.values(), (key.until for key in self._keys.values())),
                default=math.inf,
            )
        _zero_all(dropped)
        return len(dropped)

    def drop_dataset(self, dataset: str) -> None:
        """Forget (and zero) every key of ``dataset``, and its grant."""
        with self._lock:
            self._until.pop(dataset, None)
            dropped = self._pop_locked(lambda slot, key: slot[0] == dataset)
        _zero_all(dropped)

    def clear(self) -> None:
        """Forget (and zero) every key, and every grant."""
        with self._lock:
            dropped = [key.held for key in self._keys.values()]
            self._keys.clear()
            self._until.clear()
            self._next_deadline = math.inf
        _zero_all(dropped)

    def __del__(self) -> None:
        # Freed with a client dropped without close(): zero what is left. Without the
        # lock: nothing else can reach the cache now, and this may run inside garbage
        # collection on any thread, one that may hold a lock (this one, or one that a
        # blocking cleanup would take) — which deadlocked a finalizer that cleared().
        for key in list(getattr(self, "_keys", {}).values()):
            zero(memoryview(key.held))

    def _pop_locked(self, gone: Callable[[tuple[str, str], _Key], bool]) -> list[bytearray]:
        doomed = [slot for slot, key in self._keys.items() if gone(slot, key)]
        return [self._keys.pop(slot).held for slot in doomed]


def _zero_all(keys: list[bytearray]) -> None:
    # Outside the lock: a read in flight keeps its cipher, which has its own copy.
    for key in keys:
        zero(memoryview(key))
