"""A store's master keys: rotation, the checks before a key is retired or a node
starts, and the seals on the archive's metadata.

Data keys are wrapped by a master key (:mod:`tierstore.engine.sealing`); the
archive's metadata objects (manifests, dataset objects) carry a seal made under
the current master key (:mod:`tierstore.engine.archiveseal`), so that a rebuild
believes only objects this node's keys sealed. Rotating rewraps data keys in the
catalog and journals a rewrite of the archive's metadata, which the mover carries
out; frames are never rewritten. A catalog note (``_SEALED_WITH``) remembers the key
the archive was last resealed under, so that a key is retired only once nothing
needs it.

Thread safety: every method may be called from any thread; rotations run one at a
time (the rotation lock, taken before any LMDB transaction).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tierstore.crypto import MasterKeyProvider, new_data_key
from tierstore.engine.archiveseal import UnreadableObject
from tierstore.engine.catalog import Catalog
from tierstore.engine.records import JournalOp, ShardRecord, archive_dataset_key
from tierstore.engine.sealing import ShardSealers, UnwrapFailure, first_unwrap_failure
from tierstore.errors import (
    ArchiveUnavailable,
    EncryptionUnavailable,
    IntegrityError,
    KeyRotationRefused,
    KeyUnwrapError,
    TierstoreError,
    UnknownKeyId,
)
from tierstore.frames import shard_context
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment

__all__ = ["MasterKeys", "SealFailure"]

log = logging.getLogger(__name__)

#: shards a key rotation handles per write transaction.
ROTATION_BATCH = 1000
#: records the start's look for a rotation cut short reads per read transaction.
SCAN_BATCH = 1000
#: the catalog note naming the master key the archive's metadata was last resealed
#: under (by a finished rotation); see :meth:`MasterKeys.rotate`.
_SEALED_WITH = "archive_metadata_sealed_with"
#: journal operations that rewrite archive metadata under the current master key
_RESEAL_OPS = ("manifest", "dataset")
#: the current master key under which a start's look for a rotation cut short walked
#: the catalog and found none to resume (:meth:`MasterKeys._cut_short`): until the
#: current key changes (a rotation, cut short or not), no start walks it again.
_WALKED_UNDER = "rotation_looked_for_under"
#: the key a reseal of the archive's metadata was asked for under
#: (:meth:`MasterKeys.reseal_archive`), until a start finds its rotation finished and the
#: journal empty.
_RESEALING = "archive_metadata_resealing_under"
#: the master key a rotation began to reseal the archive's metadata under, until it
#: finished (then ``_SEALED_WITH`` names the key): a start finding it the current key
#: resumes the rotation, whatever data keys are left under an older key (none, once a
#: kill came after the last was rewrapped, before the later datasets' metadata was
#: journaled).
_ROTATING_UNDER = "rotation_resealing_under"
#: the current key of the last keyring a check for a rotation passed
#: (:meth:`MasterKeys.check_keyring`), until a rotation under it finished: a start
#: finding it the current key resumes the rotation, though a kill came before it began
#: (on a node of plaintext datasets, no data key tells). A note of its own: a rotation
#: under the old key, run between the check and the key file, clears only its own.
_ROTATION_CHECKED_TO = "rotation_checked_to"


@dataclass(frozen=True, slots=True)
class SealFailure:
    """An archive metadata object whose seal did not verify under a store's keys."""

    object_key: str
    #: IntegrityError (edited, forged, sealed under another key of the same id, no
    #: seal) or UnknownKeyId (sealed under a key id the keyring lacks: one retired?)
    error: TierstoreError

    def __str__(self) -> str:
        return f"{self.object_key}: {self.error}"


class MasterKeys:
    """The master keys of one store, and what changing them takes."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        archive: Tier,
        sealers: ShardSealers,
        keyring: MasterKeyProvider | None,
        wake_mover: Callable[[], None],
    ) -> None:
        self._env = environment
        self._catalog = catalog
        self._archive = archive
        self._sealers = sealers
        self._keyring = keyring
        #: tells the mover that the journal holds rewrites of archive metadata.
        self._wake_mover = wake_mover
        # Held for a whole rotate: see there. Taken before any LMDB transaction.
        self._rotation_lock = threading.Lock()
        #: set by stop: a rotation ends after its batch in hand (the rest on next start).
        self._stopping = threading.Event()
        self._resumer: threading.Thread | None = None
        #: the keyring :meth:`check_keyring` last passed, and the keyring in use then
        #: (:meth:`rotate` need not walk the catalog again for it: see there).
        self._checked: tuple[MasterKeyProvider, MasterKeyProvider | None] | None = None
        #: rebuilds finished (under the rotation lock): a check whose walk began before
        #: one ended may have read the catalog as it was before, and is not kept.
        self._rebuilds = 0

    @property
    def keyring(self) -> MasterKeyProvider | None:
        """The master keys (None: none configured, so no dataset may be encrypted)."""
        return self._keyring

    @property
    def current_key_id(self) -> str:
        """The id of the master key new data keys are wrapped with ("" without a keyring)."""
        return "" if self._keyring is None else self._keyring.current_key_id

    def rotate(self, keyring: MasterKeyProvider | None = None) -> int:
        """Rewrap every data key not under the current master key.

        With ``keyring`` (holding the old keys and a new current one), switch to it
        first; KeyRotationRefused, nothing changed, when it cannot unwrap a data key
        that a master key still in use wrapped. Frames are never rewritten: only
        catalog records and the archive's metadata. Every manifest and dataset object
        in the archive is rewritten (by the mover), sealed under the current master
        key, so that the old key can be retired and a rebuild still believes them;
        when the last finished rotation resealed them under the current key already,
        only the manifests of rewrapped shards are (a rotation that reseals them notes
        so first: one a stop or a crash cut short is resumed by the next start, see
        :meth:`resume_rotation`). Works in batches of
        ``ROTATION_BATCH`` shards, each its own transaction: an error stops it with
        the earlier batches done, and running it again finishes the rest. Returns how
        many generations' data keys were rewrapped.

        Thread-safe: rotations run one at a time (a second call waits for the first),
        so no other rotation switches the keyring while this one's batches rewrap.
        """
        with self._rotation_lock:
            if keyring is not None:
                if not self._checked_already(keyring):
                    self._check(keyring)  # refuse a keyring without the old keys
                self._keyring, self._checked = keyring, None
                self._sealers.use_keyring(keyring)
            return self._rotate()

    def _rotate(self) -> int:
        """:meth:`rotate` under the current keyring, the rotation lock held."""
        if self._keyring is None:
            raise EncryptionUnavailable("no master key is configured")
        current = self._keyring.current_key_id
        with self._env.write() as txn:
            datasets = [name for name, _ in self._catalog.list_datasets(txn)]
            # Reseal every object only when some may be under another key (or none):
            # a rotation that changes nothing leaves the journal alone.
            reseal = self._catalog.note(txn, _SEALED_WITH) != current
            if reseal:  # until it finishes, a start resumes it (see _cut_short)
                self._catalog.set_note(txn, _ROTATING_UNDER, current)
        rewrapped = sum(self._rotate_dataset(name, reseal) for name in datasets)
        if self._stopping.is_set():
            return rewrapped  # cut short: the next start resumes it
        with self._env.write() as txn:
            self._catalog.set_note(txn, _SEALED_WITH, current)
            self._catalog.set_note(txn, _ROTATING_UNDER, "")
            if self._catalog.note(txn, _ROTATION_CHECKED_TO) == current:
                self._catalog.set_note(txn, _ROTATION_CHECKED_TO, "")
        return rewrapped

    def resume_rotation(self) -> None:
        """Finish, in a background thread, a rotation that a stop (or a crash) cut short:
        when the last rotation did not finish (the archive's metadata not resealed under
        the current key) and either a rotation under the current key began to reseal it,
        or a keyring check passed for a rotation to it (:meth:`check_keyring`), or some
        record's data key is wrapped with a master key the keyring still holds other
        than the current one, :meth:`rotate`. Returns at once;
        :meth:`stop` ends it. Call it once, after the keys were checked."""
        self._resumer = threading.Thread(
            target=self._resume, name="tierstore-rotation-resume", daemon=True
        )
        self._resumer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End a rotation under way after its current batch and wait for the thread of
        :meth:`resume_rotation` (a store closing). Thread-safe."""
        self._stopping.set()
        if self._resumer is not None:
            self._resumer.join(timeout)

    def _resume(self) -> None:
        try:
            left = self._cut_short()
            if left is None:
                return
            log.warning(
                "resuming a key rotation cut short: %s, under the current key %r",
                left,
                self.current_key_id,
            )
            self.rotate()
        except Exception:  # logged; running `tierstore keys rotate` finishes it
            log.exception("resuming a key rotation cut short failed")

    def _cut_short(self) -> str | None:
        """What the last rotation left to do when it did not finish (for the log), else
        ``None``: the archive's metadata still to reseal under the current key, when a
        rotation under it began to and did not finish (every data key may be rewrapped
        by then, and a later dataset's metadata not journaled yet), or a check for a
        rotation to it passed and none finished (a kill between the key file and the
        store's rotation); else a master key
        other than the current one that the keyring holds and a record's data key is
        wrapped with. Catalog notes read when it finished, or when an earlier start under
        the same current key looked and found none (a node that never rotated: its
        first start looks, or the first start after a rotation cut short, or after an
        upgrade from a node that kept no such note); else one unwrap per key id, the
        records read ``SCAN_BATCH`` per read transaction (:meth:`_all_records`), and
        when none is found and the walk read records to the end, a note that it did (not
        for an empty catalog: a rebuild from the archive may fill it next)."""
        keyring = self._keyring
        if keyring is None:
            return None
        current = keyring.current_key_id
        with self._env.read() as txn:
            if self._catalog.note(txn, _SEALED_WITH) == current:
                return None  # the last rotation finished (what is left under: damaged)
            if current in (
                self._catalog.note(txn, _ROTATING_UNDER),
                self._catalog.note(txn, _ROTATION_CHECKED_TO),
            ):
                return "the archive's metadata is not all resealed yet"
            if self._catalog.note(txn, _WALKED_UNDER) == current:
                return None  # looked for under this key already: no rotation since
        old, walked = self._first_resumable(keyring)
        if old is None and walked:
            self._note_walked(current)
        return None if old is None else f"data keys are still under master key {old!r}"

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Callable[[Any], None]]:
        """For a rebuild from the archive: no rotation runs while it is held, and the
        function it gives, called in the transaction that restores the catalog, forgets
        that the archive was resealed under the current key, that a rotation under it
        began, and that a start found no rotation to resume (notes an emptied catalog
        keeps): the archive rebuilt from
        may be sealed, and its data keys wrapped, under an older key, which is then
        retired only after a rotation reseals everything, and a start looks again. A
        keyring :meth:`check_keyring` passed before, or while, it is held is checked
        again by a rotation to it (its check may have read none of those data keys),
        but its note is kept: it tells of the key file, which the rebuild leaves as it
        is (a kill after the key file names that keyring current still leaves a
        rotation for the start to resume)."""

        def forget(txn: Any) -> None:
            for note in (_SEALED_WITH, _WALKED_UNDER, _ROTATING_UNDER):
                self._catalog.set_note(txn, note, "")

        with self._rotation_lock:
            try:
                yield forget
            finally:
                self._checked, self._rebuilds = None, self._rebuilds + 1

    def _note_walked(self, current: str) -> None:
        """Note that a walk under ``current`` found no rotation to resume, unless the
        store is stopping (the walk may have ended early) or was rotated meanwhile."""
        try:
            with self._rotation_lock:
                if self._stopping.is_set() or self.current_key_id != current:
                    return
                with self._env.write() as txn:
                    self._catalog.set_note(txn, _WALKED_UNDER, current)
        except TierstoreError as exc:  # a full disk, say: nothing is lost
            log.warning("found no rotation cut short, but could not note it: %s", exc)

    def _first_resumable(self, keyring: MasterKeyProvider) -> tuple[str | None, bool]:
        """:meth:`_cut_short`'s walk: the first key id other than the current one that
        ``keyring`` holds and unwraps a record's data key with, else ``None``; and
        whether the walk read any record."""
        current = keyring.current_key_id
        tried: set[str] = set()
        walked = False
        for record in self._all_records():
            walked = True
            if self._stopping.is_set():
                return None, walked
            envelope = record.envelope
            if envelope is None or envelope.wrapped.key_id in (current, *tried):
                continue
            key_id = envelope.wrapped.key_id
            context = shard_context(record.dataset, record.name, record.generation)
            try:
                keyring.unwrap(envelope.wrapped, context)
            except UnknownKeyId:
                tried.add(key_id)  # retired: no rotation can rewrap it
                continue
            except KeyUnwrapError:
                continue  # this record damaged: another of its key id may unwrap
            return key_id, walked
        return None, walked

    def _all_records(self) -> Iterator[ShardRecord]:
        """Every record, by dataset and name, :meth:`_records_of` each dataset."""
        with self._env.read() as txn:
            datasets = [name for name, _ in self._catalog.list_datasets(txn)]
        return itertools.chain.from_iterable(map(self._records_of, datasets))

    def _records_of(self, dataset: str) -> Iterator[ShardRecord]:
        """The records of ``dataset`` in name order, ``SCAN_BATCH`` per read transaction,
        each a fresh one that goes on after the last name read: a walk of a large
        catalog in one snapshot, beside the writes of a serving node, keeps every page
        they replace meanwhile from being reused (the map grows)."""
        start_after: str | None = None
        while True:
            with self._env.read() as txn:
                shards = self._catalog.iter_shards(txn, dataset, start_after=start_after)
                batch = list(itertools.islice(shards, SCAN_BATCH))
            yield from batch
            if len(batch) < SCAN_BATCH:
                return
            start_after = batch[-1].name

    def check_keyring(self, keyring: MasterKeyProvider) -> None:
        """Raise KeyRotationRefused, nothing changed, unless ``keyring`` unwraps a data
        key of each master key id the catalog's records use: what
        :meth:`rotate` checks a keyring it is given with, for a caller that
        must know before it makes the keyring durable (a rotation to the keyring
        checked last then walks the catalog no more: see :meth:`_checked_already`).
        A check of a keyring with another current key that passes notes that a
        rotation to it may follow: the caller writes it where keys live next, and a
        start that finds it current with the archive not yet resealed under it resumes
        the rotation (see :meth:`_cut_short`), though a kill came before the rotation
        began. Thread-safe: a check whose walk a rebuild (:meth:`restoring`) ended
        during is not kept (it may have read the catalog from before the rebuild)."""
        rebuilds = self._rebuilds
        in_use = self._check(keyring)
        with self._rotation_lock:
            if self._rebuilds == rebuilds:
                self._checked = (keyring, in_use)
            if keyring.current_key_id != self.current_key_id:
                try:
                    with self._env.write() as txn:
                        self._catalog.set_note(txn, _ROTATION_CHECKED_TO, keyring.current_key_id)
                except TierstoreError as exc:  # a full disk, say: the rotation may still go
                    log.warning("could not note the rotation that may follow: %s", exc)

    def _check(self, keyring: MasterKeyProvider) -> MasterKeyProvider | None:
        """:meth:`check_keyring`'s walk; returns the keyring in use it checked beside."""
        in_use = self._keyring
        ShardSealers(keyring).check_unwraps(self._all_records(), in_use)
        return in_use

    def _checked_already(self, keyring: MasterKeyProvider) -> bool:
        """Whether ``keyring`` is the one :meth:`check_keyring` last passed, the keyring
        in use is still the one it was checked beside, and ``keyring`` unwraps a data
        key that keyring's current key wraps: records written since the check are
        wrapped with that key alone, so the check still holds. Under the rotation
        lock."""
        checked, in_use = self._checked or (None, None)
        if checked is not keyring or in_use is not self._keyring or in_use is None:
            return False
        probe = b"\x02tierstore keyring probe"  # no shard's context (see frames.py)
        try:
            keyring.unwrap(in_use.wrap(new_data_key(), probe), probe)
        except (UnknownKeyId, KeyUnwrapError):
            return False
        return True

    def check_retirement(self, key_id: str, keyring: MasterKeyProvider) -> None:
        """Raise KeyRotationRefused, nothing changed, unless ``keyring`` (the keys less
        ``key_id``) may replace this store's: no catalog record's data key is wrapped
        with ``key_id`` (every key id in use unwraps under ``keyring``), a rotation
        has resealed the archive's metadata under the current key (a rebuild could
        not believe objects sealed under a retired one), and none of that resealing
        is still on the journal. For a caller about to drop ``key_id`` from where keys
        live (:meth:`LocalKeyring.retired_file`). Thread-safe."""
        with self._rotation_lock:
            current = self.current_key_id
            if key_id == current:
                raise KeyRotationRefused(
                    f"master key {key_id!r} is the current key: rotate first, then retire it"
                )
            # New records are wrapped with the current key alone (rotations wait for
            # the lock held here): records read a batch at a time tell as a snapshot.
            under_key: list[bool] = []
            failure = first_unwrap_failure(keyring, self._watched(key_id, under_key), self._keyring)
            # A walk to the end that met no record under the key found none damaged.
            damaged = self._damaged_key_record(key_id) if failure is not None or under_key else None
            if damaged is not None:
                raise KeyRotationRefused(
                    f"the data key of {damaged} is wrapped with master key {key_id!r} but "
                    f"does not unwrap with it (a damaged key record: reads of the shard fail "
                    f"with DataLoss, and no rotation can rewrap it). Delete it (tierstore rm), "
                    f"then retire {key_id!r}. Nothing was changed"
                )
            if failure is not None:
                # A rotation a restart cut short resumes at start, while the keyring
                # still holds the key; else nothing rewraps them but a rotation.
                raise KeyRotationRefused(
                    f"data keys of this node's shards are still wrapped with master key "
                    f"{failure.key_id!r} (e.g. {failure.shard}: {failure.error}); a rotation "
                    f"that did not finish (a node stopped during it) leaves them so, until "
                    f"the node's start resumes it (its log says so) or `tierstore keys "
                    f"rotate` runs again. Wait for it and the mover, then retire "
                    f"{key_id!r}. Nothing was changed"
                ) from failure.error
            with self._env.read() as txn:
                sealed_with = self._catalog.note(txn, _SEALED_WITH)
                resealing = self._catalog.count_journal_ops(txn, _RESEAL_OPS)
            if sealed_with != current:
                raise KeyRotationRefused(
                    f"the archive's metadata has not been resealed under the current key "
                    f"{current!r}: rotate (tierstore keys rotate), wait for the mover, then "
                    f"retire {key_id!r}"
                )
            if resealing:
                raise KeyRotationRefused(
                    f"{resealing} archive metadata objects are still to be resealed under "
                    f"{current!r} by the mover: retire {key_id!r} once they are (tierstore "
                    "stats shows the journal)"
                )

    def use_retired(self, key_id: str, keyring: MasterKeyProvider) -> None:
        """Switch to ``keyring``, the keys less ``key_id``, once :meth:`check_retirement`
        passed and ``key_id`` left where keys live: no record to rewrap, so neither a
        check of ``keyring`` nor a pass over the catalog. A put meanwhile wraps its data
        key with the current key, which the check proved is not ``key_id``; a rotation
        meanwhile made another current: KeyRotationRefused, nothing switched, unless
        ``keyring``'s current key is this store's and not ``key_id``. A rebuild from the
        archive meanwhile (which may bring back data keys under ``key_id``) forgets the
        note that the archive is resealed under the current key: refused too, nothing
        switched. Thread-safe."""
        with self._rotation_lock:
            current = self.current_key_id
            if keyring.current_key_id != current or key_id == current:
                raise KeyRotationRefused(
                    f"the keys left once {key_id!r} is retired name {keyring.current_key_id!r} "
                    f"as current, not {current!r} as this node holds it (a rotation ran "
                    "meanwhile): nothing was switched; rotate, then retire the key again"
                )
            with self._env.read() as txn:
                sealed_with = self._catalog.note(txn, _SEALED_WITH)
            if sealed_with != current:
                raise KeyRotationRefused(
                    f"the archive's metadata is no longer known to be resealed under "
                    f"{current!r} (a rebuild from the archive ran meanwhile): nothing was "
                    f"switched; rotate, wait for the mover, then retire {key_id!r} again"
                )
            self._keyring, self._checked = keyring, None
            self._sealers.use_keyring(keyring)

    def _watched(self, key_id: str, met: list[bool]) -> Iterator[ShardRecord]:
        """:meth:`_all_records`, ``met`` made non-empty once a record whose data key is
        wrapped with ``key_id`` has been read."""
        for record in self._all_records():
            envelope = record.envelope
            if not met and envelope is not None and envelope.wrapped.key_id == key_id:
                met.append(True)
            yield record

    def _damaged_key_record(self, key_id: str) -> str | None:
        """``dataset/name`` of a shard whose data key is wrapped with ``key_id`` and does
        not unwrap under this store's keyring, when none wrapped with it does (else a
        rotation can still rewrap them: None). Unwraps the records of ``key_id`` until
        one does."""
        if self._keyring is None:
            return None
        damaged = None
        for record in self._all_records():
            envelope = record.envelope
            if envelope is None or envelope.wrapped.key_id != key_id:
                continue
            context = shard_context(record.dataset, record.name, record.generation)
            try:
                self._keyring.unwrap(envelope.wrapped, context)
            except UnknownKeyId:
                return None  # not held at all: as any key id in use
            except KeyUnwrapError:
                damaged = damaged or f"{record.dataset}/{record.name}"
                continue
            return None
        return damaged

    def unwrap_failure(self) -> UnwrapFailure | None:
        """The first master key id the catalog's records use whose data keys this store's
        keyring does not unwrap (the key missing, or the wrong one under its id), else
        ``None``: one unwrap per key id when the keyring fits, every record read
        (:func:`~tierstore.engine.sealing.first_unwrap_failure`). For a node to check
        before it starts the mover and accepts puts. Thread-safe."""
        return first_unwrap_failure(self._keyring, self._all_records())

    def key_use(self) -> dict[str, int]:
        """How many shards' data keys each master key id wraps (ids no record uses are
        not in it), for an admin to see which keys are still in use: every record read,
        ``SCAN_BATCH`` per read transaction (:meth:`_all_records`). Thread-safe."""
        use: dict[str, int] = {}
        for record in self._all_records():
            if record.envelope is not None:
                key_id = record.envelope.wrapped.key_id
                use[key_id] = use.get(key_id, 0) + 1
        return use

    def _rotate_dataset(self, dataset: str, reseal: bool) -> int:
        """:meth:`rotate` for one dataset, ``ROTATION_BATCH`` shards per write
        transaction: a large catalog is never one huge transaction holding the writer.
        Journals a rewrite of each rewrapped shard's manifest, and with ``reseal`` of
        every manifest and the dataset object. Returns how many data keys were
        rewrapped."""
        rewrapped = 0
        start_after: str | None = None
        while not self._stopping.is_set():
            with self._env.write() as txn:
                shards = self._catalog.iter_shards(txn, dataset, start_after=start_after)
                batch = list(itertools.islice(shards, ROTATION_BATCH))
                for record in batch:
                    try:
                        updated = self._sealers.rewrapped(record)
                    except KeyUnwrapError as exc:
                        # Its key record is damaged (others of its key id unwrap: see
                        # check_keyring): one shard, not the rotation. It stays as it is,
                        # and so does the archive's copy of its key (not journaled);
                        # check_retirement names it until it is deleted.
                        log.error(
                            "not rewrapping the data key of %s/%s: %s", dataset, record.name, exc
                        )
                        continue
                    if updated is not None:
                        self._catalog.put_shard(txn, updated)
                        rewrapped += 1
                    # (The mover rewrites archived manifests only; an upload still to
                    # come writes its manifest under the current key anyway.)
                    if updated is not None or reseal:
                        self._catalog.append_journal(
                            txn, JournalOp("manifest", dataset, record.name, record.generation)
                        )
                done = len(batch) < ROTATION_BATCH
                if done and reseal:
                    self._catalog.append_journal(txn, JournalOp("dataset", dataset))
            self._wake_mover()
            if done:
                return rewrapped
            start_after = batch[-1].name
        return rewrapped

    def archive_seal_failure(self) -> SealFailure | None:
        """Whether this store's master keys are those the archive was sealed with: ``None``
        when the seal of some dataset object in the archive verifies under them (the
        first that does ends the check: usually one GET), or when there is nothing to
        tell by (no keyring, no dataset object archived yet, or a :meth:`reseal_archive`
        under these keys not finished: its rotation not done, or the journal not empty);
        else a :class:`SealFailure` for the first object that did not verify. Plaintext
        datasets hold no data key to unwrap, so this is how a node tells the wrong keys
        (a rebuild would believe none of its objects). One damaged or edited object among
        others that verify is not taken for the wrong keys (a rebuild skips it, logged).
        Raises ArchiveUnavailable when the archive cannot be reached (the caller decides
        what may run before the check is made), and when the objects it could not verify
        were unreadable (not JSON, a malformed seal: a body cut short on the way, say),
        which tells nothing about the keys. Thread-safe."""
        if self._keyring is None:
            return None
        current = self._keyring.current_key_id
        with self._env.read() as txn:
            names = [name for name, _ in self._catalog.list_datasets(txn)]
            resealing = self._catalog.note(txn, _RESEALING) == current
            # Not all journaled yet (a kill cut it short: this start resumes it), or
            # the mover is rewriting them: an empty journal alone tells nothing.
            unfinished = self._catalog.note(txn, _ROTATING_UNDER) == current
            pending = self._catalog.journal_length(txn)
        if resealing and (unfinished or pending):
            return None  # being rewritten under these keys
        if resealing:
            with self._env.write() as txn:
                self._catalog.set_note(txn, _RESEALING, "")  # done: check from now on
        failure = damaged = None
        for name in names:
            key = archive_dataset_key(name)
            raw = self._archive.get(key)
            if raw is None:
                continue  # not archived yet
            try:
                self._sealers.check_object(key, raw)
            except UnreadableObject as exc:  # says nothing about the keys
                log.warning("archive object %s cannot be read whole: %s", key, exc)
                damaged = damaged or f"{key}: {exc}"
                continue
            except (IntegrityError, UnknownKeyId) as exc:
                log.warning("archive object %s does not verify: %s", key, exc)
                failure = failure or SealFailure(key, exc)
                continue
            return None
        if failure is None and damaged is not None:
            # A body cut short on the way looks like this: ask again later rather than
            # take it for the wrong keys (which refuses a start, or holds uploads).
            raise ArchiveUnavailable(
                f"the archive's metadata could not be read whole ({damaged}); the keys "
                "are checked against it again"
            )
        return failure

    def reseal_archive(self) -> None:
        """Have the mover rewrite every manifest and dataset object in the archive,
        sealed under the current master key, whatever key sealed them last (a lost key
        file replaced, on a node whose datasets are all plaintext). Its first write
        transaction notes the reseal as a rotation under the current key that began to
        reseal: from then on, until the rotation has journaled every rewrite and the
        journal is empty, :meth:`archive_seal_failure` takes these keys for the
        archive's, and the next start resumes it (:meth:`resume_rotation`), so a
        node killed at any point of it starts again, without asking for the reseal
        again, and finishes it. EncryptionUnavailable without a keyring. Thread-safe
        (a rotation: see :meth:`rotate`)."""
        with self._rotation_lock:
            if self._keyring is None:
                raise EncryptionUnavailable("no master key is configured")
            current = self._keyring.current_key_id
            with self._env.write() as txn:
                self._catalog.set_note(txn, _SEALED_WITH, "")  # "under another key": reseal
                self._catalog.set_note(txn, _RESEALING, current)
                # In this transaction, not the rotation's first: a kill in between left
                # a reseal that no start resumed (and that the seal check refused).
                self._catalog.set_note(txn, _ROTATING_UNDER, current)
            self._rotate()
