"""Seals on the archive's metadata objects: dataset settings and shard manifests.

The archive is untrusted (DESIGN 3.4). Frames check themselves on every read, but a
rebuild from the archive alone has to believe the archive's metadata, and an edited
dataset object saying ``"encrypted": false`` would have the rebuilt store write that
dataset's new shards in plaintext. So, with a master key configured, every metadata
object the engine writes carries a *seal*: a fresh random value wrapped by the master
key with the object's archive key and the digest of its fields as the wrap context. It
unwraps only under that master key and only against exactly those fields at exactly
that key, so nobody without the master key can make or move one. The seal needs
nothing but the keyring's ``wrap`` and ``unwrap``; a KMS behind
:class:`~tierstore.crypto.MasterKeyProvider` seals too.

Without a master key objects are written unsealed, and a store without one cannot
check seals: a deployment without encryption trusts its archive. A store with a
master key believes only sealed objects (stripping a seal must not be a way around
it), so an archive written before a master key was configured is sealed by one key
rotation (:meth:`~tierstore.engine.store.Store.rotate_master_key` rewrites every
manifest and dataset object).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from tierstore.crypto import KEY_BYTES, MasterKeyProvider
from tierstore.errors import IntegrityError
from tierstore.types import WrappedKey

__all__ = ["SEAL_FIELD", "UnreadableObject", "Unsealed", "check_seal", "sealed"]

#: the JSON field of a metadata object that holds its seal.
SEAL_FIELD = "seal"
# A leading control byte: no shard context (which starts with a dataset name, and
# names hold no control characters) can equal a seal's context.
_LABEL = b"\x01tierstore archive object\x00"


def sealed(keyring: MasterKeyProvider | None, key: str, body: bytes) -> bytes:
    """``body`` (a JSON object) with a seal binding it to archive key ``key``.

    Returned unchanged when ``keyring`` is ``None``.
    """
    if keyring is None:
        return body
    document = json.loads(body)
    wrapped = keyring.wrap(os.urandom(KEY_BYTES), _context(key, document))
    document[SEAL_FIELD] = {
        "key_id": wrapped.key_id,
        "wrapped": base64.b64encode(wrapped.blob).decode(),
    }
    return json.dumps(document, separators=(",", ":")).encode()


class UnreadableObject(IntegrityError):
    """A metadata object whose bytes are not a JSON object with a well-formed seal:
    damaged (in the archive, or on the way: a body cut short), so it says nothing
    about the keys it was sealed with."""


class Unsealed(IntegrityError):
    """A metadata object that carries no seal at all: written by a release before
    archive seals, or by a node without a master key (or a seal stripped off)."""


def check_seal(keyring: MasterKeyProvider | None, key: str, raw: bytes | memoryview) -> None:
    """Check that ``raw``, read at archive key ``key``, carries a seal made for it.

    Without a keyring there is nothing to check against and this returns at once.
    Raises Unsealed (an IntegrityError) when ``raw`` carries no seal, IntegrityError
    when its seal does not unwrap for
    these fields at this key (edited, moved or forged); UnreadableObject (an
    IntegrityError) when it is not a JSON object or its seal is malformed; and
    UnknownKeyId when the seal is under a master key the keyring does not hold.
    """
    if keyring is None:
        return
    document = _document(raw)
    seal = document.pop(SEAL_FIELD, None)
    if seal is None:
        raise Unsealed(
            f"archive object {key} carries no seal; a store with a master key believes "
            "only metadata sealed under it (rotate the master key once to seal objects "
            "written without one)"
        )
    try:
        wrapped = WrappedKey(key_id=str(seal["key_id"]), blob=base64.b64decode(seal["wrapped"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableObject(f"archive object {key} has a malformed seal: {exc}") from exc
    try:
        keyring.unwrap(wrapped, _context(key, document))
    except IntegrityError as exc:
        raise IntegrityError(
            f"archive object {key} does not match its seal: edited, moved or forged"
        ) from exc


def seal_key_id(raw: bytes | memoryview) -> str | None:
    """The id of the master key ``raw``'s seal names (``None``: no seal, or ``raw`` no
    sealed object); nothing is checked (:func:`check_seal` does)."""
    try:
        seal = _document(raw).get(SEAL_FIELD)
    except UnreadableObject:
        return None
    return str(seal["key_id"]) if isinstance(seal, dict) and "key_id" in seal else None


def _document(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        document = json.loads(bytes(raw))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise UnreadableObject(f"archive object is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UnreadableObject("archive object is not a JSON object")
    return document


def _context(key: str, document: dict[str, Any]) -> bytes:
    """What a seal is bound to: the object's key and a digest of its fields (the
    seal itself left out), serialized canonically so a re-encoding checks the same."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return _LABEL + key.encode() + b"\x00" + hashlib.sha256(canonical).digest()
