"""Envelope encryption: master keys wrap per-generation data keys; frames are AES-256-GCM.

* A **master key** (32 bytes) is named by a key id and held by a :class:`MasterKeyProvider`
  (here :class:`LocalKeyring`, loaded from a key file or an environment variable; a KMS can
  implement the same protocol later).
* A **data key** is random per shard generation. It is wrapped by the current master key and
  stored in the catalog and in the shard's archive manifest — never inside frame bytes — so
  rotating the master key rewrites only those small records.
* Each frame is one AES-256-GCM message. Nonce = 8-byte random per-generation prefix + 4-byte
  big-endian frame index; the associated data binds dataset, shard, generation, frame index and
  a last-frame flag, so frames cannot be swapped, reordered, moved or truncated unnoticed.

``AESGCM.decrypt_into`` leaves unauthenticated plaintext in the destination when the tag
fails; :meth:`FrameCipher.decrypt_into` zeroes it before raising.

Thread safety: every class here is immutable after construction and safe to share.
:meth:`LocalKeyring.rotated_file` serializes rotations of one key file through a lock
file beside it, between threads and processes alike.

Key ids of a key file only grow (``k1``, ``k2``, ...; a rotation takes one past the
highest): a key retired from the file never lends its id to a different key, which
would make a copy of the file kept elsewhere unwrap nothing under that id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierstore.errors import (
    IntegrityError,
    InvalidArgument,
    KeyRotationRefused,
    KeyUnwrapError,
    NotFound,
    UnknownKeyId,
)
from tierstore.private_files import exclusive_lock, narrow_mode_hint, write_private_file
from tierstore.types import WrappedKey

__all__ = [
    "KEY_BYTES",
    "NONCE_PREFIX_BYTES",
    "TAG_BYTES",
    "FrameCipher",
    "LocalKeyring",
    "MasterKeyProvider",
    "new_data_key",
    "new_nonce_prefix",
    "retired_keys_path",
    "zero",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 8
_WRAP_NONCE_BYTES = 12
_WRAP_CONTEXT = b"tierstore/data-key/v1\x00"


def zero(buffer: memoryview) -> None:
    """Overwrite a writable buffer with zero bytes."""
    flat = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
    flat[:] = bytes(len(flat))


def new_data_key() -> bytes:
    """Return a fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def new_nonce_prefix() -> bytes:
    """Return a fresh random per-generation nonce prefix."""
    return os.urandom(NONCE_PREFIX_BYTES)


class MasterKeyProvider(Protocol):
    """Wraps and unwraps data keys. A KMS client can implement this protocol."""

    @property
    def current_key_id(self) -> str:
        """The key id new data keys are wrapped with."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Wrap ``data_key`` with the current master key, bound to ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Return the data key.

        Raises :class:`UnknownKeyId` if the master key is not held, and
        :class:`KeyUnwrapError` (an IntegrityError) if the blob or context does not
        authenticate (a wrong master key under the same id, or a tampered record).
        """
        ...


@dataclass(frozen=True, slots=True)
class LocalKeyring:
    """Master keys held in process memory, loaded from a key file or an environment variable.

    Key file (JSON, mode 0600 recommended)::

        {"current": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": "<base64 32 bytes>"}}
    """

    keys: Mapping[str, bytes]
    current: str

    def __repr__(self) -> str:  # the ids, never the keys
        return f"LocalKeyring(key_ids={sorted(self.keys)!r}, current={self.current!r})"

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise InvalidArgument(
                f"current master key id {_shown_id(self.current)} is not in the keyring"
            )
        for key_id, key in self.keys.items():
            if len(key) != KEY_BYTES:
                raise InvalidArgument(
                    f"master key {_shown_id(key_id)} is {len(key)} bytes; it must be {KEY_BYTES}"
                )
        if any(_decoded_or_none(key_id) in self.keys.values() for key_id in self.keys):
            # Every catalog record and archive manifest names its key by id, in the clear.
            raise InvalidArgument(
                "a key id may not be a key of the keyring (ids are stored in the clear "
                "beside every data key they wrap): give each key a short name, such as k1"
            )

    @property
    def current_key_id(self) -> str:
        return self.current

    @classmethod
    def from_base64(cls, text: str, key_id: str | None = None) -> LocalKeyring:
        """One key from base64 text (as kept in an environment variable).

        Without ``key_id`` the id is derived from the key's fingerprint, so the
        same key always gets the same id.
        """
        key = _decode_key(text, "master key")
        if key_id is None:
            key_id = "fp-" + hashlib.sha256(b"tierstore/key-id\x00" + key).hexdigest()[:16]
        return cls(keys={key_id: key}, current=key_id)

    @classmethod
    def from_file(cls, path: Path, *, warn_of_mode: bool = True) -> LocalKeyring:
        """Load a key file (format in the class docstring). Logs a warning naming the
        file and its mode when users outside its owner and group may use it, or its
        group may write it (the keys are used all the same: refusing would stop a node
        over a mode an operator can fix while it runs), unless not ``warn_of_mode`` (a
        check before the load that uses the keys). Group read is let be: a Kubernetes
        Secret mounted for a pod that does not run as root is readable through the
        pod's group (fsGroup). Raises InvalidArgument when it cannot be loaded."""
        try:
            with path.open("rb") as file:
                mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
                document = json.loads(file.read())
            if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
                raise InvalidArgument(
                    'it must be a JSON object {"current": ID, "keys": {ID: BASE64_KEY, ...}}'
                )
            if "current" not in document:
                raise InvalidArgument('it names no current key ("current": ID)')
            keys = {
                str(k): _decode_key(v, f"key {_shown_id(str(k))}")
                for k, v in document["keys"].items()
            }
            keyring = cls(keys=keys, current=str(document["current"]))
        except (OSError, ValueError, TypeError, InvalidArgument) as exc:
            raise InvalidArgument(f"cannot load key file {path}: {exc}") from exc
        if mode & 0o027 and warn_of_mode:
            log.warning(
                "master key file %s may be used by users other than its owner and group "
                "(mode %o): %s",
                path,
                mode,
                narrow_mode_hint(path),
            )
        return keyring

    @staticmethod
    def generate_file(path: Path, key_id: str = "k1") -> LocalKeyring:
        """Create a new key file with one random key (mode 0600, written whole and
        fsynced, its directory too) and return its keyring. FileExistsError if ``path``
        exists: a key file is never overwritten."""
        key = AESGCM.generate_key(bit_length=256)
        _write_key_file(path, {key_id: key}, key_id, exclusive=True)
        return LocalKeyring(keys={key_id: key}, current=key_id)

    def rotated_file(
        self, path: Path, check: Callable[[LocalKeyring], None] | None = None
    ) -> LocalKeyring:
        """Add a fresh random key to the key file at ``path``, make it current, and
        return the keyring of the file as written: every key it held (so existing data
        keys still unwrap, including keys another process added) and the new one.

        ``check``, given, is called with that keyring before the file is written (under
        the lock); whatever it raises is raised with the file unchanged (a store
        refusing a keyring that cannot unwrap a data key still in use, say).

        The file is re-read and rewritten under an exclusive lock on ``<path>.lock``,
        so rotations of one file (by threads or processes) run one at a time and the
        new key id is never one the file already holds. The file is replaced
        atomically (mode 0600, or 0640 with its group where its group could read it;
        written, fsynced, renamed, the directory fsynced): a crash leaves the whole old
        file or the whole new one.

        A ``path`` that is a symbolic link is followed: the file it names is rewritten
        and the link stays (replacing the link would leave the file it names, perhaps
        the copy an operator keeps, without the new key).

        Raises :class:`KeyRotationRefused`, with the file unchanged, when it cannot be
        read, locked or written, or no longer holds every key of this keyring with the
        same bytes (a key some record may be wrapped with would be dropped), but for a
        key a node sharing the file retired (kept in memory, not written back: see
        :meth:`_rewritten_file`).
        Thread-safe.
        """

        def rotate(on_file: LocalKeyring) -> LocalKeyring:
            key_id = _unused_key_id(on_file.keys)
            return LocalKeyring(
                keys={**on_file.keys, key_id: AESGCM.generate_key(bit_length=256)},
                current=key_id,
            )

        return self._rewritten_file(path, rotate, check, "rotate")

    def retired_file(
        self, path: Path, key_id: str, check: Callable[[LocalKeyring], None] | None = None
    ) -> LocalKeyring:
        """Remove the master key ``key_id`` from the key file at ``path`` and return the
        keyring of the file as written, as :meth:`rotated_file` does (the same lock,
        ``check`` and atomic replace): for a key no record is wrapped with any more,
        which ``check`` (the store's) makes sure of. The current key is never retired.

        The key is not destroyed: it is added to :func:`retired_keys_path` (the key
        file's mode and group) first, for a node that shares the key file and still
        needs it, until an operator deletes that file.

        Raises :class:`NotFound` for an id the file does not hold, and
        :class:`KeyRotationRefused`, with the file unchanged, for the current key, for a
        file whose current key is not this keyring's (rotated by another process, or
        edited), and as :meth:`rotated_file` does.
        """

        taken: dict[str, bytes] = {}  # the key retire() took out, for keep_aside()

        def retire(on_file: LocalKeyring) -> LocalKeyring:
            if key_id not in on_file.keys:
                raise NotFound(
                    f"key file {path} holds no master key {key_id!r} (it holds "
                    f"{sorted(on_file.keys)}; retired already?)"
                )
            if key_id == on_file.current:
                raise KeyRotationRefused(
                    f"master key {key_id!r} is the current key, which new data keys are "
                    "wrapped with: rotate first (tierstore keys rotate), then retire it"
                )
            if on_file.current != self.current:
                # Taking the file's keyring up here would switch this node to a current
                # key it never rotated to, and rewrap its data keys under it, unasked.
                raise KeyRotationRefused(
                    f"key file {path} names {on_file.current!r} as its current key, not "
                    f"{self.current!r} as this process holds it (another node sharing the "
                    "file rotated it, or it was edited): nothing was changed. Run "
                    "`tierstore keys rotate` on this node first, which takes up every key "
                    "in the file, then retire the key"
                )
            kept = {name: key for name, key in on_file.keys.items() if name != key_id}
            taken[key_id] = on_file.keys[key_id]
            return LocalKeyring(keys=kept, current=on_file.current)

        def keep_aside(changed: LocalKeyring) -> None:
            if check is not None:
                check(changed)
            # Before the key leaves the key file: another node sharing the file may
            # still need it, and this node cannot know (a crash between the two writes
            # leaves the key in both files, never in neither).
            key_file = path.resolve()
            _keep_retired_key(retired_keys_path(key_file), key_id, taken[key_id], key_file)

        return self._rewritten_file(path, retire, keep_aside, "retire a key of")

    def _rewritten_file(
        self,
        path: Path,
        change: Callable[[LocalKeyring], LocalKeyring],
        check: Callable[[LocalKeyring], None] | None,
        doing: str,
    ) -> LocalKeyring:
        """Replace the key file at ``path`` with ``change`` of what it holds, under its
        lock, after ``check``: :meth:`rotated_file` and :meth:`retired_file`.

        A key of this keyring that the file no longer holds but that its retired keys
        (:func:`retired_keys_path`) hold with the same bytes, retired by a node sharing
        the file, is kept in the keyring returned (this node's records may still need
        it: ``check`` decides, and :meth:`retired_file` can retire it here too) but not
        written back to the file: that node's retirement is not undone."""
        path = path.resolve()
        try:
            with exclusive_lock(path.with_name(path.name + ".lock")):
                try:
                    on_file = LocalKeyring.from_file(path)
                except InvalidArgument as exc:
                    raise KeyRotationRefused(f"cannot {doing} key file: {exc}") from exc
                aside = _retired_keys(path) if set(self.keys) - set(on_file.keys) else {}
                missing = sorted(
                    k for k, key in self.keys.items() if on_file.keys.get(k, aside.get(k)) != key
                )
                if missing:
                    raise KeyRotationRefused(
                        f"key file {path} no longer holds master key(s) {missing} as this "
                        "process holds them; rewriting it would drop keys that records may "
                        "be wrapped with, so nothing was changed: put those keys back in "
                        "the file"
                    )
                carried = {k: key for k, key in self.keys.items() if k not in on_file.keys}
                held = LocalKeyring(keys={**carried, **on_file.keys}, current=on_file.current)
                changed = change(held)
                if check is not None:
                    check(changed)
                kept = {k: key for k, key in changed.keys.items() if k not in carried}
                # Nodes sharing the file through their group keep reading it.
                _write_key_file(path, kept, changed.current, group_of=path)
                return changed
        except OSError as exc:
            raise KeyRotationRefused(f"cannot {doing} key file {path}: {exc}") from exc

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        nonce = os.urandom(_WRAP_NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(
            nonce, data_key, _WRAP_CONTEXT + self.current.encode() + b"\x00" + context
        )
        return WrappedKey(key_id=self.current, blob=nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        master = self.keys.get(wrapped.key_id)
        if master is None:
            raise UnknownKeyId(
                f"data key is wrapped by master key {wrapped.key_id!r}, which this keyring "
                f"does not hold (it holds {sorted(self.keys)})"
            )
        nonce, sealed = wrapped.blob[:_WRAP_NONCE_BYTES], wrapped.blob[_WRAP_NONCE_BYTES:]
        try:
            return AESGCM(master).decrypt(
                nonce, sealed, _WRAP_CONTEXT + wrapped.key_id.encode() + b"\x00" + context
            )
        except (InvalidTag, ValueError) as exc:  # ValueError: a blob cut short of its nonce
            raise KeyUnwrapError(
                f"data key did not unwrap with master key {wrapped.key_id!r}: "
                "wrong master key or tampered key record"
            ) from exc


_NUMBERED_ID = re.compile(r"k([0-9]+)")


def _unused_key_id(taken: Mapping[str, bytes]) -> str:
    """``k<n>`` for ``n`` one past the highest ``k<n>`` in ``taken`` (1 with none): not
    the first free number, which after old keys were retired from the file is the id
    of one of them (the newest key, current since its rotation, stays)."""
    numbers = [int(found[1]) for found in map(_NUMBERED_ID.fullmatch, taken) if found]
    return f"k{max(numbers, default=0) + 1}"


def retired_keys_path(key_file: Path) -> Path:
    """Where :meth:`LocalKeyring.retired_file` keeps the keys it took out of
    ``key_file``: ``<key file>.retired``, a key file of the same format."""
    return key_file.with_name(key_file.name + ".retired")


def _retired_keys(key_file: Path) -> Mapping[str, bytes]:
    """The keys retired from ``key_file`` (:func:`retired_keys_path`); none when there is
    no such file or it cannot be loaded."""
    aside = retired_keys_path(key_file)
    if not aside.exists():
        return {}
    try:
        return LocalKeyring.from_file(aside).keys
    except InvalidArgument:
        return {}


def _keep_retired_key(path: Path, key_id: str, key: bytes, key_file: Path) -> None:
    """Add ``key_id`` to the retired keys at ``path`` (made if missing; readable by the
    group that may read ``key_file``, as the key file is). Raises
    KeyRotationRefused for a file there that is not a key file, or holds another key
    under that id; OSError when it cannot be written."""
    kept: dict[str, bytes] = {}
    if path.exists():
        try:
            kept = dict(LocalKeyring.from_file(path).keys)
        except InvalidArgument as exc:
            raise KeyRotationRefused(f"cannot keep the retired key aside: {exc}") from exc
    if kept.get(key_id, key) != key:
        raise KeyRotationRefused(
            f"{path} holds another key under the id {key_id!r}: move that file away first"
        )
    kept[key_id] = key
    _write_key_file(path, kept, key_id, group_of=key_file)


def _write_key_file(
    path: Path,
    keys: Mapping[str, bytes],
    current: str,
    *,
    exclusive: bool = False,
    group_of: Path | None = None,
) -> None:
    """Replace (or with ``exclusive``, create) the key file at ``path`` atomically (mode
    0600, or 0640 with the group of a ``group_of`` its group may read; see
    :func:`~tierstore.private_files.write_private_file`). Raises OSError, leaving
    ``path`` unchanged."""
    document = {
        "current": current,
        "keys": {name: base64.b64encode(value).decode() for name, value in keys.items()},
    }
    write_private_file(path, json.dumps(document).encode(), exclusive=exclusive, group_of=group_of)


#: the longest key id an error message shows (``k12``, ``fp-`` and 16 hex digits): a
#: longer one may be a key written where its id goes (44 characters of base64).
_SHOWN_ID_CHARS = 32


def _shown_id(key_id: str) -> str:
    """``key_id`` as an error message shows it: quoted, unless it is long enough to be
    a key put in the place of an id, which is never shown."""
    if len(key_id) <= _SHOWN_ID_CHARS:
        return repr(key_id)
    return f"of {len(key_id)} characters (not shown: a key in the place of its id?)"


def _decoded_or_none(text: str) -> bytes | None:
    """``text`` decoded as base64, or None if it is not base64."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except ValueError:
        return None


def _decode_key(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be base64 text")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(f"{what} is not valid base64") from exc


class FrameCipher:
    """AES-256-GCM for the frames of one shard generation."""

    __slots__ = ("_aead", "_nonce_prefix", "key")

    def __init__(self, data_key: bytes, nonce_prefix: bytes) -> None:
        if len(nonce_prefix) != NONCE_PREFIX_BYTES:
            raise InvalidArgument(f"nonce prefix must be {NONCE_PREFIX_BYTES} bytes")
        self._aead = AESGCM(data_key)
        self._nonce_prefix = nonce_prefix
        #: the data key, for handing to an authorized reader (never logged: no repr shows it)
        self.key = data_key

    def _nonce(self, index: int) -> bytes:
        return self._nonce_prefix + struct.pack(">I", index)

    def encrypt(self, index: int, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """Return ciphertext + 16-byte tag for frame ``index``."""
        return self._aead.encrypt(self._nonce(index), plaintext, aad)

    def decrypt_into(
        self, index: int, sealed: bytes | memoryview, aad: bytes, out: memoryview
    ) -> None:
        """Decrypt frame ``index`` into ``out`` (exactly ``len(sealed) - 16`` bytes).

        On a failed tag ``out`` is zeroed and :class:`IntegrityError` raised.
        """
        if out.format != "B":
            out = out.cast("B")  # pyarrow exports 'b'; cryptography takes unsigned bytes
        try:
            self._aead.decrypt_into(self._nonce(index), sealed, aad, out)
        except InvalidTag as exc:
            zero(out)
            raise IntegrityError(f"frame {index} failed its authentication tag") from exc
        except ValueError as exc:
            zero(out)
            raise IntegrityError(f"frame {index} is truncated or mis-sized: {exc}") from exc
