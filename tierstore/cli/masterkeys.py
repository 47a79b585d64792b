"""The master keys of a node that ``tierstore serve`` runs: where they come from, the
first key of a new node, the check that they read what the node holds, rotation and
retirement.

Where from, the first that names one (README "Configuration": the settings file, then
``TIERSTORE_*`` variables, then flags)::

    --master-key-file PATH
    master_key_file          TIERSTORE_MASTER_KEY_FILE over the settings file's
    master_key_b64           TIERSTORE_MASTER_KEY_B64 over the settings file's
    <data-dir>/master.keys

A base64 key is used as it is (its id derived from its fingerprint), but cannot be
rotated: a rotation has nowhere to write the new key, so it is refused, saying how to
move the key into a key file. A key file and a base64 key both named in the settings
are refused as ambiguous.

A key file that does not exist is created with one new key, for a new node. Before
the node runs its mover or accepts a put, :func:`check_node_keys` refuses
(FailedPrecondition) keys that do not unwrap the data keys of the shards the catalog
holds (a missing key file, or the wrong keys under the right ids: serving would fail
every encrypted read, and acknowledge puts under a key the rest cannot be read with),
a created key when the archive holds objects (a new key reads none of their seals),
and keys that do not verify the seal of a dataset object in the archive (the wrong key
file on a node whose datasets are all plaintext). A start that refuses removes the key
file it created: it is no node's key. A node whose key file is lost for good, and that
holds no encrypted shard, starts with ``--reseal-archive``: the mover then rewrites the
archive's metadata sealed under the new key (a start after a stop or a kill before it
is done, with the flag or without, finishes it; the flag, while given, skips the seal
check, so it is to be dropped from the next start on, which checks the keys once the
reseal is done).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from tierstore.config import EngineSettings
from tierstore.crypto import LocalKeyring, retired_keys_path
from tierstore.engine.archiveseal import Unsealed
from tierstore.engine.store import Store
from tierstore.errors import (
    ArchiveUnavailable,
    FailedPrecondition,
    InvalidArgument,
    KeyRotationRefused,
    UnknownKeyId,
)

__all__ = [
    "KeyRotation",
    "NodeKeys",
    "check_keys_unwrap",
    "check_master_key_sources",
    "check_node_keys",
    "load_node_keys",
]

log = logging.getLogger(__name__)

_BASE64_SOURCE = "the base64 master key (TIERSTORE_MASTER_KEY_B64 or master_key_b64)"


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """The master keys a node was started with."""

    keyring: LocalKeyring
    #: the key file rotations rewrite; ``None`` for a base64 key (not rotatable).
    key_file: Path | None
    #: this start created ``key_file`` (so a start that refuses removes it again).
    created: bool = False

    @property
    def source(self) -> str:
        """Where the keys came from, for messages."""
        return _BASE64_SOURCE if self.key_file is None else f"master key file {self.key_file}"

    def forget_created(self) -> None:
        """Remove the key file this start created (nothing otherwise): for a start that
        refuses, before any key record was wrapped with it."""
        if self.created and self.key_file is not None:
            self.key_file.unlink(missing_ok=True)


def check_master_key_sources(settings: EngineSettings, data_dir: Path | None = None) -> None:
    """InvalidArgument if ``settings`` name both a key file and a base64 key. Given the
    node's ``data_dir``, also if the keys :func:`load_node_keys` would use cannot be
    had: a base64 key that is not one, a key file that cannot be loaded, or a missing
    one whose directory is missing too (but for the data directory itself, which
    serve makes). For serve to refuse before it makes anything: it loads the keys
    only once its archive has started. The file's mode is warned of when it is loaded."""
    key_file = settings.master_key_file
    if key_file is not None and settings.master_key_b64:
        raise InvalidArgument(
            f"both a master key file ({key_file}) and a base64 master key "
            "(TIERSTORE_MASTER_KEY_B64 or master_key_b64) are configured: name one"
        )
    if data_dir is None:
        return
    if key_file is None and settings.master_key_b64:
        LocalKeyring.from_base64(settings.master_key_b64)  # InvalidArgument: why, no secret
        return
    key_file = key_file or data_dir / "master.keys"
    if key_file.exists():
        LocalKeyring.from_file(key_file, warn_of_mode=False)  # InvalidArgument: file, why
    elif key_file.parent.resolve() != data_dir.resolve() and not key_file.parent.is_dir():
        raise _cannot_create(key_file, "its directory does not exist")


def load_node_keys(settings: EngineSettings, data_dir: Path) -> NodeKeys:
    """The master keys ``settings`` name (``master_key_file``, then ``master_key_b64``;
    serve puts ``--master-key-file`` in ``master_key_file``), else those of
    ``<data-dir>/master.keys``. A key file that does not exist is created with one new
    key (``created``): :func:`check_node_keys` decides whether the node may keep it.

    Raises InvalidArgument when both a key file and a base64 key are named, or the key
    file cannot be loaded or created (its directory missing, say).
    """
    check_master_key_sources(settings)
    if settings.master_key_file is None and settings.master_key_b64:
        return NodeKeys(LocalKeyring.from_base64(settings.master_key_b64), None)
    key_file = settings.master_key_file or data_dir / "master.keys"
    if key_file.exists():
        return NodeKeys(LocalKeyring.from_file(key_file), key_file)
    try:
        return NodeKeys(LocalKeyring.generate_file(key_file), key_file, created=True)
    except FileExistsError:  # created meanwhile by a node sharing the file
        return NodeKeys(LocalKeyring.from_file(key_file), key_file)
    except OSError as exc:
        raise _cannot_create(key_file, exc.strerror or str(exc)) from None


def _cannot_create(key_file: Path, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"master key file {key_file} does not exist and cannot be created: {why}"
    )


def check_node_keys(
    keys: NodeKeys, store: Store, *, reseal_archive: bool = False, archive_lost: bool = False
) -> None:
    """Refuse (FailedPrecondition, one line naming where the keys came from) keys that
    would lose data if the node served with them: keys that do not unwrap a data key
    of some master key id the catalog's records use (one unwrap per id when they fit);
    a key file created by this start while the archive holds objects; an archive that
    holds none of the node's datasets' objects (not the node's archive:
    :meth:`Store.archive_missing_datasets`); and keys under
    which no dataset object in the archive verifies (:meth:`Store.archive_seal_failure`:
    how a node whose datasets are all plaintext tells the wrong keys). With
    ``reseal_archive`` only the first and the archive's are made: the caller then has
    the archive's metadata sealed again under these keys (:meth:`Store.reseal_archive`),
    for a node
    that lost its key file and holds no encrypted shard. Call it with the store's mover
    not yet started and before any put is accepted. With ``archive_lost``
    (``serve --archive-lost``), an archive that holds none of the node's datasets'
    objects is taken for lost for good: the hot tier is archived again
    (:meth:`Store.archive_again`, the shards only it held dropped, each named in the
    log) instead of the start refused; on an archive that holds them it is ignored,
    with a warning. Raises ArchiveUnavailable when the
    archive is needed and cannot be reached (see :class:`DeferredKeyCheck`)."""
    check_keys_unwrap(keys, store, reseal_archive=reseal_archive)
    missing = store.archive_missing_datasets()
    if missing and archive_lost:
        archive_again(store)
        return  # the archive holds nothing of the node's to check the keys against
    if archive_lost:
        log.warning(
            "--archive-lost is ignored: the archive holds this node's datasets' objects "
            "(or they are on the journal), so it is not lost; drop the flag"
        )
    if missing:
        raise FailedPrecondition(
            f"the archive holds none of this node's {len(missing)} archived dataset(s) "
            f"(no settings object of {missing[0]!r}, nor of any other): it is not this "
            "node's archive (its --s3-endpoint, --bucket or --prefix, or the settings "
            "file's [archive], changed), or it lost them (an embedded archive's "
            "directory deleted). Not starting: reads of archived shards would fail, and "
            "uploads would split the node's data between two archives. Give the node "
            "its archive again, or restore the archive's objects; if they are lost for "
            "good, start with --archive-lost to archive again what the hot tier holds "
            "(the shards it does not hold are dropped)"
        )
    if reseal_archive:
        return
    if keys.created and store.archive_holds_objects():
        raise FailedPrecondition(
            f"{keys.source} did not exist (one was created, and removed again), but the "
            "archive holds objects whose manifests the keys this node had sealed: under a "
            "new key a rebuild from the archive would believe none of them (nor could "
            "encrypted shards be read). Restore the key file, or name it with "
            f"--master-key-file (or master_key_file, TIERSTORE_MASTER_KEY_FILE); {_RESEAL}"
        )
    seal = store.archive_seal_failure()
    if seal is not None and isinstance(seal.error, Unsealed):
        # Not the wrong keys: those read the node's shards (checked above), and the
        # object has no seal to disagree with them.
        raise FailedPrecondition(
            f"the archive's {seal.object_key} carries no seal: it was written by a release "
            "before archive seals, or by a node without a master key. Not starting: a node "
            "with master keys believes only metadata sealed under them. These keys read "
            "the shards this node holds: if they are the keys the archive was written "
            "with, and nothing but this node wrote to it, start once with "
            "--reseal-archive to seal its metadata under them"
        )
    if seal is not None:
        pending = store.stats().journal_entries
        # Sealed under a key id these keys lack, with uploads pending: most likely a
        # key retired before the mover had sealed the archive again after a rotation.
        retired_early = (
            f" (the journal still holds {_count(pending, 'upload')}: a key taken out of "
            "the file since the last rotation is needed until the mover has sealed the "
            "archive again under the current one; put it back, start, and take it out "
            "once `tierstore stats` shows no journal entries)"
            if pending and isinstance(seal.error, UnknownKeyId)
            else ""
        )
        raise FailedPrecondition(
            f"{keys.source} does not verify the seal of the archive's {seal}. Not starting: "
            "these are not the keys the archive was sealed with, and a rebuild from it "
            "would believe none of what was written before. Configure the keys it was "
            f"written with{retired_early}; {_RESEAL}"
        )


def archive_again(store: Store) -> None:
    """:meth:`Store.archive_again`, for ``serve --archive-lost``, logging each shard it
    dropped (its only copy was in the lost archive) and what it journaled."""
    done = store.archive_again()
    for name in done.lost:
        log.warning("--archive-lost: shard %s was only in the lost archive: dropped", name)
    log.warning(
        "--archive-lost: the archive holds none of this node's datasets' objects; "
        "archiving again %d hot shard(s) and %d dataset(s); %d shard(s) only the lost "
        "archive held were dropped",
        done.uploads,
        done.datasets,
        len(done.lost),
    )


def check_keys_unwrap(keys: NodeKeys, store: Store, *, reseal_archive: bool = False) -> None:
    """The first check of :func:`check_node_keys`, the one that needs no archive: refuse
    (FailedPrecondition) keys that do not unwrap a data key of some master key id the
    catalog's records use."""
    failure = store.master_key_failure()
    # A reseal cannot stand in for keys encrypted shards need: say so when asked for one.
    no_reseal = (
        " (--reseal-archive cannot help: nothing reads these shards without their key)"
        if reseal_archive
        else ""
    )
    if failure is not None and keys.created:
        raise FailedPrecondition(
            f"{keys.source} did not exist (one was created, and removed again), but this "
            f"node holds shards encrypted under master key {failure.key_id!r} (e.g. "
            f"{failure.shard}). Restore the key file they were written with, or name it "
            f"with --master-key-file (or master_key_file, TIERSTORE_MASTER_KEY_FILE){no_reseal}"
        )
    if failure is not None:
        raise FailedPrecondition(
            f"{keys.source} does not unwrap the data keys of this node's shards encrypted "
            f"under master key {failure.key_id!r} (e.g. {failure.shard}: {failure.error}). "
            "Not starting: reads of them would fail, and puts would be acknowledged under "
            f"keys the rest cannot be read with. Configure the keys they were written with"
            f"{_retired_hint(keys, failure.key_id)}{no_reseal}"
        )


#: the way on for a node whose key file is lost for good.
_RESEAL = (
    "if they are lost for good and no dataset is encrypted, start with --reseal-archive "
    "(with --rebuild-from-archive too if the hot tier was lost) to seal the archive's "
    "metadata under the keys given now"
)


class DeferredKeyCheck:
    """For a node that started while its archive could not be reached: holds the
    store's journal (:meth:`Mover.hold_archive`: no upload, delete or write-through
    put reaches the archive, so nothing is sealed there under keys it was not written
    with) and, every ``interval_s``, checks the keys against the archive again
    (:func:`check_node_keys`), and that no other node claimed it
    (:mod:`tierstore.engine.archiveclaim`). Once the archive answers and the checks
    pass, it claims the archive and lets the journal run. If a check fails, the
    journal stays held, with why as the mover's last error (logged; restart with the
    right keys, or on the node's own archive). Thread-safe; :meth:`stop`
    before the store is closed."""

    def __init__(self, keys: NodeKeys, store: Store, interval_s: float = 5.0) -> None:
        self._keys, self._store, self._interval_s = keys, store, interval_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # no hold is changed once stop() has returned
        self._thread = threading.Thread(target=self._run, name="tierstore-key-check", daemon=True)
        store.mover.hold_archive(
            "the master keys are not checked against the archive yet (it was unreachable "
            "when the node started); uploads wait until they are"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop checking. Does not wait for a check inside a hung archive request: the
        thread can no longer change anything (and is a daemon)."""
        with self._lock:
            self._stopping.set()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        last = ""
        while not self._stopping.wait(self._interval_s):
            try:
                # One listing first: a node with no dataset's objects to check makes no
                # archive request in the check, which then passed with the archive down.
                self._store.archive_holds_objects()
                self._store.check_archive_claim()
                check_node_keys(self._keys, self._store)
                self._store.claim_archive()  # the start could not (tierstore.cli.startcheck)
            except ArchiveUnavailable as unreachable:
                if str(unreachable) != last:  # a refusal (403) looks the same: say it
                    log.warning("the keys are not checked against the archive yet: %s", unreachable)
                    last = str(unreachable)
                continue
            except FailedPrecondition as refused:
                self._hold(f"uploads stay held: {refused}")
                log.error("uploads stay held: %s", refused)
                return
            except Exception:
                if self._stopping.is_set():
                    return  # the store closed under the check
                log.exception("checking the keys against the archive failed")
                continue
            if self._hold(None):
                log.warning(
                    "the archive answers and its seals verify under these keys: uploads run"
                )
            return

    def _hold(self, reason: str | None) -> bool:
        """Set the journal's hold, unless stopped; whether it was set."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._store.mover.hold_archive(reason)
            return True


class KeyRotation:
    """RotateKeys for a node: a new key in the key file, then every data key rewrapped.

    One rotation at a time, from minting the key to the store's rewrap under it: the
    next must start from the keyring the store switched to last, or the store could end
    up with a keyring lacking a key records use. The store checks the new keyring
    before the key file is written, so a refused rotation leaves the file as it was.
    Thread-safe.
    """

    def __init__(self, keys: NodeKeys, store: Store) -> None:
        self._key_file = keys.key_file
        self._keyring = keys.keyring
        self._store = store
        self._lock = threading.Lock()

    def __call__(self) -> int:
        """Rotate; returns how many data keys were rewrapped. KeyRotationRefused, nothing
        changed, for a base64 key, or a key file that cannot be rotated
        (:meth:`LocalKeyring.rotated_file`), or a new keyring the store refuses."""
        if self._key_file is None:
            key_id = self._keyring.current
            raise KeyRotationRefused(
                f"{_BASE64_SOURCE} cannot be rotated: there is no file to add the new key "
                f'to. Move it to a key file, {{"current": "{key_id}", "keys": '
                f'{{"{key_id}": "<that base64 key>"}}}} (mode 0600), and start with '
                "--master-key-file naming it. Nothing was changed"
            )
        with self._lock:
            self._keyring = self._keyring.rotated_file(self._key_file, self._store.check_keyring)
            return self._store.rotate_master_key(self._keyring)

    def retire(self, key_id: str) -> tuple[str, ...]:
        """Remove master key ``key_id`` from the key file, once nothing of this node
        needs it (see :meth:`Store.check_key_retirement`), keeping it aside in
        ``<key file>.retired`` for nodes that share the file; switch the store to the
        keys left and return their ids. NotFound for an id the file does not hold;
        KeyRotationRefused, nothing changed, for a base64 key, the current key, a key
        still in use, or a key file that cannot be rewritten."""
        if self._key_file is None:
            raise KeyRotationRefused(
                f"{_BASE64_SOURCE} is one key, the current one: there is none to retire"
            )
        key_file = self._key_file
        with self._lock:
            retired = self._keyring.retired_file(
                key_file, key_id, lambda left: self._store.check_key_retirement(key_id, left)
            )
            # Switched first: a switch refused (a rebuild meanwhile, embedded callers
            # only) leaves this keyring, and the store's, still holding the key.
            self._store.use_retired_keys(key_id, retired)  # nothing to rewrap: checked
            self._keyring = retired
            return tuple(sorted(retired.keys))

    def key_ids(self) -> tuple[str, ...]:
        """The ids of the master keys the node holds now (never the keys). Does not wait
        for a rotation under way (the keyring is replaced whole, never changed)."""
        return tuple(sorted(self._keyring.keys))


def _retired_hint(keys: NodeKeys, key_id: str) -> str:
    """Where ``key_id`` is, if a ``keys retire`` of a node sharing the key file put it
    aside (:func:`~tierstore.crypto.retired_keys_path`); else nothing."""
    if keys.key_file is None:
        return ""
    aside = retired_keys_path(keys.key_file.resolve())
    try:
        held = key_id in LocalKeyring.from_file(aside).keys
    except InvalidArgument:  # none there, or not readable: nothing to point to
        return ""
    if not held:
        return ""
    return (
        f" ({key_id!r} is in {aside}, where `tierstore keys retire` of a node sharing "
        "this key file put it: add it back to the key file)"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
