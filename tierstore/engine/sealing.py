"""Sealers for shard generations: the :class:`FrameSealer` a record needs, and its data key.

A plaintext generation is sealed with per-frame checksums; an encrypted one with
AES-256-GCM under a data key of its own, created with the generation and kept
wrapped by the master keyring in the record's :class:`Envelope`. This module
turns a record (and, for encrypted ones, the keyring) into the sealer that
writes, opens and verifies its stored frames, and creates and rewraps data keys.
It also seals and checks the archive's metadata objects under the same keyring.

Thread safety: :class:`ShardSealers` holds nothing but the keyring (and a lookup of
current records); it is safe to share between threads as long as the keyring is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tierstore.crypto import (
    TAG_BYTES,
    FrameCipher,
    MasterKeyProvider,
    new_data_key,
    new_nonce_prefix,
)
from tierstore.engine.archiveseal import check_seal, seal_key_id, sealed
from tierstore.engine.records import Envelope, ShardRecord
from tierstore.errors import (
    EncryptionUnavailable,
    KeyRotationRefused,
    KeyUnwrapError,
    TierstoreError,
    UnknownKeyId,
)
from tierstore.frames import CHECKSUM_BYTES, FrameSealer, shard_context
from tierstore.types import WrappedKey

__all__ = [
    "ShardSealers",
    "UnwrapFailure",
    "first_unwrap_failure",
    "sealing_overhead",
    "stored_overhead",
    "stored_size",
]


def sealing_overhead(encrypted: bool) -> int:
    """Stored bytes per frame beyond the payload: an AEAD tag, or a checksum."""
    return TAG_BYTES if encrypted else CHECKSUM_BYTES


def stored_overhead(record: ShardRecord) -> int:
    """Stored bytes per frame of ``record`` beyond the payload. Needs no key: deleting,
    evicting and sizing a shard must work when its data key cannot be unwrapped."""
    return sealing_overhead(record.envelope is not None)


def stored_size(record: ShardRecord) -> int:
    """Stored bytes of ``record``'s generation: every frame with its sealing overhead."""
    return sum(record.stored_sizes(stored_overhead(record)))


class ShardSealers:
    """Builds the sealer of each shard generation from its record and the keyring.

    ``current``, given, returns the catalog's record of a shard as it is now (``None``
    when there is none): :meth:`sealer` looks a record up again with it when the
    record's data key names a master key the keyring no longer holds (see there).
    """

    def __init__(
        self,
        keyring: MasterKeyProvider | None,
        current: Callable[[ShardRecord], ShardRecord | None] | None = None,
    ) -> None:
        self._keyring = keyring
        self._current = current

    def use_keyring(self, keyring: MasterKeyProvider) -> None:
        """Switch to another keyring (one holding the old keys too, during rotation)."""
        self._keyring = keyring

    def require_keyring(self, dataset: str) -> MasterKeyProvider:
        """The keyring; raises EncryptionUnavailable (naming encrypted ``dataset``) if
        no master key is configured."""
        if self._keyring is None:
            raise EncryptionUnavailable(f"dataset {dataset!r} is encrypted; no master key")
        return self._keyring

    def new_envelope(self, dataset: str, shard: str, generation: int) -> tuple[Envelope, bytes]:
        """A fresh data key for a new encrypted generation, and its wrapped envelope.

        Raises EncryptionUnavailable when no master key is configured.
        """
        keyring = self.require_keyring(dataset)
        data_key = new_data_key()
        context = shard_context(dataset, shard, generation)
        return Envelope(keyring.wrap(data_key, context), new_nonce_prefix()), data_key

    def sealer(self, record: ShardRecord, data_key: bytes | None = None) -> FrameSealer:
        """The sealer of ``record``'s generation; ``data_key`` skips unwrapping its envelope.

        A record read before a rotation rewrapped its data key, the old master key
        retired since, names a key the keyring no longer holds: the data key is then
        unwrapped from the envelope of the record of the same generation the catalog
        holds now (looked up once, with ``current``), so that a read of a healthy shard
        does not fail over when it read its record. Raises EncryptionUnavailable
        (encrypted, no master key configured) and what the keyring raises when the data
        key does not unwrap.
        """
        context = shard_context(record.dataset, record.name, record.generation)
        sizes = record.frame_sizes
        if record.envelope is None:
            return FrameSealer(context, len(sizes), frame_sizes=sizes)
        if data_key is None:
            data_key = self._unwrapped(record, record.envelope, context)
        cipher = FrameCipher(data_key, record.envelope.nonce_prefix)
        return FrameSealer(context, len(sizes), cipher, sizes)

    def _unwrapped(self, record: ShardRecord, envelope: Envelope, context: bytes) -> bytes:
        """The data key of ``record`` (see :meth:`sealer`)."""
        if self._keyring is None:
            raise EncryptionUnavailable(
                f"{record.dataset}/{record.name} is encrypted but no master key is configured"
            )
        try:
            return self._keyring.unwrap(envelope.wrapped, context)
        except UnknownKeyId:
            now = None if self._current is None else self._current(record)
            rewrapped = None if now is None else now.envelope
            if (
                now is None
                or now.generation != record.generation
                or rewrapped is None
                or rewrapped.nonce_prefix != envelope.nonce_prefix
                or rewrapped.wrapped == envelope.wrapped
            ):
                raise
            return self._keyring.unwrap(rewrapped.wrapped, context)

    def rewrapped(self, record: ShardRecord, data_key: bytes | None = None) -> ShardRecord | None:
        """``record`` with its data key rewrapped under the keyring's current master key
        (``data_key``, when the caller holds it, is not unwrapped again).

        ``None`` when ``record`` is plaintext or already wrapped under that key. The
        frames are untouched: only the envelope changes. Raises EncryptionUnavailable
        (no master key configured) and what the keyring raises on a key it cannot unwrap.
        """
        if self._keyring is None:
            raise EncryptionUnavailable("no master key is configured")
        envelope = record.envelope
        if envelope is None or envelope.wrapped.key_id == self._keyring.current_key_id:
            return None
        context = shard_context(record.dataset, record.name, record.generation)
        if data_key is None:
            data_key = self._keyring.unwrap(envelope.wrapped, context)
        wrapped = self._keyring.wrap(data_key, context)
        return record.with_state(envelope=Envelope(wrapped, envelope.nonce_prefix))

    def check_unwraps(
        self, records: Iterable[ShardRecord], reference: MasterKeyProvider | None = None
    ) -> None:
        """Raise KeyRotationRefused unless this keyring unwraps, for each master key id
        ``records`` use, a data key that id wrapped (see :func:`first_unwrap_failure`):
        a keyring switched to without the old keys would leave their shards unreadable,
        and a rotation stuck, until a restart with the old keyring."""
        if self._keyring is None:
            raise EncryptionUnavailable("no master key is configured")
        failure = first_unwrap_failure(self._keyring, records, reference)
        if failure is not None:
            raise KeyRotationRefused(
                f"the new keyring cannot unwrap the data keys that master key "
                f"{failure.key_id!r} wrapped ({failure.shard}: {failure.error}); it must "
                "hold the old keys until the rotation has rewrapped them. Nothing was changed"
            ) from failure.error

    def restored_under_current(
        self, record: ShardRecord, manifest: bytes | memoryview
    ) -> ShardRecord | None:
        """For ``record`` restored from its archived ``manifest`` (an older generation
        made a shard's again): ``record``, its data key rewrapped under the current
        master key if it unwraps, when its data key or the manifest's seal is under
        another key (its manifest is then to be sealed anew: a rotation that passed
        over the shard before did neither, and the old key could be retired); ``None``
        when both are under the current key, or there is no keyring."""
        if self._keyring is None:
            return None
        current = self._keyring.current_key_id
        envelope = record.envelope
        if (envelope is None or envelope.wrapped.key_id == current) and seal_key_id(
            manifest
        ) == current:
            return None
        try:
            return self.rewrapped(record) or record
        except (UnknownKeyId, KeyUnwrapError):
            return record  # its data key as it is (reads say why); resealed all the same

    def seal_object(self, key: str, body: bytes) -> bytes:
        """Metadata object ``body`` sealed for archive key ``key`` under the current
        master key (unchanged without one); see :mod:`tierstore.engine.archiveseal`."""
        return sealed(self._keyring, key, body)

    def check_object(self, key: str, raw: bytes | memoryview) -> None:
        """Check the seal of metadata object ``raw`` read at archive key ``key`` (nothing
        to check without a keyring). Raises IntegrityError and UnknownKeyId."""
        check_seal(self._keyring, key, raw)

    def verify_stored(self, record: ShardRecord, index: int, stored: memoryview) -> None:
        """Check stored frame ``index`` of ``record`` (raises IntegrityError if it fails)."""
        sealer = self.sealer(record)
        if sealer.cipher is None:
            sealer.open(index, stored)
        else:
            payload = bytearray(sealer.payload_size(index, stored))
            sealer.open_into(index, stored, memoryview(payload))


@dataclass(frozen=True, slots=True)
class UnwrapFailure:
    """A master key id whose data keys a keyring does not unwrap."""

    key_id: str
    #: ``dataset/name`` of a shard whose data key that id wrapped.
    shard: str
    #: what unwrapping it raised: UnknownKeyId, KeyUnwrapError or EncryptionUnavailable.
    error: TierstoreError


def first_unwrap_failure(
    keyring: MasterKeyProvider | None,
    records: Iterable[ShardRecord],
    reference: MasterKeyProvider | None = None,
) -> UnwrapFailure | None:
    """The first master key id used by ``records`` none of whose data keys ``keyring``
    unwraps, or ``None`` when every id has one that does (plaintext records need none).

    Cheap for a keyring that fits: one unwrap per key id, the rest of its records
    skipped. An id whose first data key does not authenticate (the wrong key under the
    right id, or that one key record damaged) is tried on its next records, so a wrong
    key costs one unwrap per record under its id, and one damaged record is not taken
    for a wrong key. An id the keyring does not hold fails at once. With ``reference``
    (the keyring in use, for a keyring to replace it), a record whose data key does not
    authenticate under ``reference`` either is passed by: its key record is damaged,
    and no keyring would unwrap it (a node with one such shard could never rotate
    again). Iterates every record; unwraps only. Thread-safe if the keyrings are.
    """
    proven: set[str] = set()
    failed: dict[str, UnwrapFailure] = {}
    for record in records:
        envelope = record.envelope
        if envelope is None or envelope.wrapped.key_id in proven:
            continue
        key_id = envelope.wrapped.key_id
        shard = f"{record.dataset}/{record.name}"
        if keyring is None:
            return UnwrapFailure(key_id, shard, EncryptionUnavailable("no master key"))
        try:
            keyring.unwrap(
                envelope.wrapped, shard_context(record.dataset, record.name, record.generation)
            )
        except UnknownKeyId as exc:
            return UnwrapFailure(key_id, shard, exc)
        except KeyUnwrapError as exc:
            if not _authenticates(reference, envelope.wrapped, record):
                continue  # damaged: the keyring in use cannot unwrap it either
            failed.setdefault(key_id, UnwrapFailure(key_id, shard, exc))
            continue
        proven.add(key_id)
        failed.pop(key_id, None)
    return next(iter(failed.values()), None)


def _authenticates(
    reference: MasterKeyProvider | None, wrapped: WrappedKey, record: ShardRecord
) -> bool:
    """False only when ``reference`` holds the key id of ``wrapped`` and the data key
    does not authenticate under it (a damaged key record); True without ``reference``."""
    if reference is None:
        return True
    try:
        reference.unwrap(wrapped, shard_context(record.dataset, record.name, record.generation))
    except KeyUnwrapError:
        return False
    except UnknownKeyId:
        return True  # it cannot tell
    return True
