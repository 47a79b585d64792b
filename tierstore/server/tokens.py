"""Bearer tokens: issued once, stored only as hashes, checked in constant time.

A token reads ``ts_<token_id>_<secret>``: ``token_id`` is 12 hex digits, public (listed,
logged, used to revoke); ``secret`` is 32 random bytes, URL-safe base64 without padding.
The store keeps the SHA-256 of the whole token string and never the token: with 256 bits
of randomness in every token, a fast hash is as good as a slow one, and no salt is needed.

The store is one JSON file (mode 0600, rewritten atomically on every change) owned by one
server process. It holds the live tokens and the recent past: a token revoked or run out
:data:`RETENTION_S` ago is forgotten (dropped at the next change, and when the file is
loaded), so the file stays as large as the live tokens make it, however many were issued.
:meth:`TokenStore.authenticate` fails with one generic
:class:`~tierstore.errors.Unauthenticated` message whatever went wrong; the exception's
``reason`` (an :class:`AuthFailure`) tells the audit log which check failed.

Tokens must never reach a log: nothing here puts one into a ``repr`` or an error message.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierstore.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NewerFormat,
    NotFound,
    Unauthenticated,
)
from tierstore.naming import validate_dataset_name
from tierstore.private_files import refuse_dangling_link, restrict_mode, write_private_file
from tierstore.server.authz import Principal, check_principal_name
from tierstore.types import ALL_DATASETS, MAX_TTL_S, Grant, Role, token_id_of

__all__ = [
    "ADMIN_PRINCIPAL",
    "MAX_TTL_S",
    "MIN_TTL_S",
    "RETENTION_S",
    "TOKEN_PREFIX",
    "AuthFailure",
    "TokenInfo",
    "TokenStore",
]

TOKEN_PREFIX = "ts_"
#: The principal of the token ``tierstore serve`` creates on first start.
ADMIN_PRINCIPAL = "admin"
#: The shortest lifetime a token may be given: a shorter one would expire before use.
MIN_TTL_S = 1.0
#: How long a revoked or expired token is kept (listed, its id known to ``revoke``, and
#: refused as revoked or expired in the audit log) before the store forgets it.
RETENTION_S = 30 * 86400.0

_ID_BYTES = 6
_SECRET_BYTES = 32
_TOKEN_ID_RE = re.compile(r"[0-9a-f]{12}")
_FORMAT = "tierstore-tokens/v1"
_ADMIN_ON_ALL = Grant(ALL_DATASETS, Role.ADMIN)
# Compared against when the token id is unknown, so that path costs what a known one does.
_DUMMY_DIGEST = hashlib.sha256(b"tierstore: no such token").hexdigest()


class AuthFailure(enum.StrEnum):
    """Why a token was refused (the ``reason`` of :class:`Unauthenticated`; audit only)."""

    NO_TOKEN = "no-token"  # no authorization header, or one that is not a bearer token
    SEVERAL_HEADERS = "several-headers"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token: everything but the token."""

    token_id: str
    principal: str
    grants: tuple[Grant, ...]
    created_at: float
    #: seconds since the epoch; 0: never expires.
    expires_at: float
    revoked: bool = False
    #: seconds since the epoch; 0: not revoked.
    revoked_at: float = 0.0

    def expired(self, now: float) -> bool:
        """Whether the token has expired at time ``now``."""
        return self.expires_at != 0 and now >= self.expires_at

    def live(self, now: float) -> bool:
        """Whether the token would authenticate at time ``now``."""
        return not self.revoked and not self.expired(now)

    def forgotten(self, now: float) -> bool:
        """Whether the token was revoked, or ran out, :data:`RETENTION_S` or more before
        ``now``: the store drops it."""
        ended = [self.revoked_at] if self.revoked else []
        if self.expires_at != 0:
            ended.append(self.expires_at)
        return bool(ended) and now >= min(ended) + RETENTION_S


@dataclass(frozen=True, slots=True)
class _Record:
    info: TokenInfo
    #: hex SHA-256 of the token string.
    digest: str = dataclasses.field(repr=False)
    #: by dataset a grant names, the incarnation of the dataset it was made for (its
    #: first generation, Store.dataset_incarnation); absent: made by an earlier
    #: release, bound at the next start (:meth:`TokenStore.drop_stale_grants`).
    incarnations: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _check_grants(grants: Iterable[Grant]) -> tuple[Grant, ...]:
    """The grants, each once, in order; InvalidArgument for one that is no Grant of a
    Role, names no valid dataset, or gives a dataset a second role (which one was meant:
    the token would act with the higher, whatever the list looked like)."""
    checked: dict[str, Grant] = {}
    for grant in grants:
        if not isinstance(grant, Grant) or not isinstance(grant.role, Role):
            raise InvalidArgument(f"a grant must be a Grant with a Role, not {grant!r}")
        if grant.dataset != ALL_DATASETS:
            validate_dataset_name(grant.dataset)
        held = checked.setdefault(grant.dataset, grant)
        if held.role is not grant.role:
            raise InvalidArgument(
                f"two roles on dataset {grant.dataset!r}: {held.role.value} and "
                f"{grant.role.value}; grant one (each role includes those below it)"
            )
    return tuple(sorted(checked.values(), key=lambda g: (g.dataset, g.role.rank)))


class TokenStore:
    """Issues, revokes and checks bearer tokens, persisted in one JSON file.

    Thread-safe: changes are serialized by a lock and written to disk before they take
    effect in memory; :meth:`authenticate` reads an immutable snapshot without locking.
    One process owns the file: changes made by another process are not seen.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        """Load the store from ``path`` (an absent file is an empty store).

        Raises :class:`~tierstore.errors.DataLoss` if the file is not a token store, and
        :class:`OSError` if it cannot be read.
        """
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        # Replaced, never mutated: readers may hold an old snapshot safely.
        self._records: Mapping[str, _Record] = self._load()

    def __repr__(self) -> str:
        return f"TokenStore({str(self._path)!r}, tokens={len(self._records)})"

    @property
    def path(self) -> Path:
        """The store's file."""
        return self._path

    def create(
        self,
        principal: str,
        grants: Iterable[Grant],
        ttl_s: float = 0,
        *,
        require_dataset: Callable[[str], int] | None = None,
    ) -> tuple[TokenInfo, str]:
        """Issue a token for ``principal`` with ``grants``, valid ``ttl_s`` seconds (0: ever).

        ``require_dataset(name)``, when given, is called for each dataset a grant names
        (not ``*``) under the lock that :meth:`remove_grants_on` takes, and raises if
        there is no such dataset: grants end with their dataset, so none may start
        before it either (a grant on a name nobody has made yet would be honoured by a
        dataset made later under it, for someone else). It returns the dataset's
        incarnation, which the grant is bound to (:meth:`drop_stale_grants`).

        Returns the token's info and the token itself — the only time the token exists
        outside the caller's hands. Raises :class:`~tierstore.errors.InvalidArgument` for a
        bad principal name or grant, or a TTL that is neither 0 nor from :data:`MIN_TTL_S`
        to :data:`MAX_TTL_S`; what ``require_dataset`` raises; :class:`OSError` if the
        store cannot be written.
        """
        with self._lock:
            info, token = self._new(principal, grants, ttl_s)
            incarnations = {}
            if require_dataset is not None:
                for grant in info.grants:
                    if grant.dataset != ALL_DATASETS:
                        incarnations[grant.dataset] = require_dataset(grant.dataset)
            record = _Record(info, _digest(token), incarnations)
            self._commit({**self._records, info.token_id: record})
        return info, token

    def revoke(self, token_id: str, *, force: bool = False) -> TokenInfo:
        """Revoke a token for good; revoking a revoked token again is a no-op.

        The last live token with the admin role on every dataset is revoked only with
        ``force``: without one, every admin call fails until the node restarts and
        writes a new admin token. The check is made here, under the store's lock, so
        that it holds for every client and two revokes at once cannot each leave the
        other's token as the last.

        Returns the token's updated info. Raises :class:`~tierstore.errors.NotFound` for
        an unknown id, InvalidArgument for an empty or malformed id or a whole token
        given as the id (its secret is never echoed),
        :class:`~tierstore.errors.FailedPrecondition` for the last live admin token
        without ``force``, :class:`OSError` if the store cannot be written.
        """
        if not token_id:
            raise InvalidArgument("no token id given: the 12 hex characters after 'ts_'")
        if token_id_of(token_id) is not None:
            # A whole token was given: never echo its secret part (errors reach logs).
            raise InvalidArgument(
                "that is a whole token, not a token id: give only its id, the 12 hex "
                "characters after 'ts_'"
            )
        if not _TOKEN_ID_RE.fullmatch(token_id):
            raise InvalidArgument(
                f"{token_id[:16]!r} is not a token id: a token id is 12 lowercase hex "
                "characters (the part after 'ts_', as `tierstore token ls` shows it)"
            )
        with self._lock:
            now = self._clock()
            record = self._records.get(token_id)
            if record is None or record.info.forgotten(now):
                raise NotFound(
                    f"no token {token_id[:16]!r} (a token revoked or expired more than "
                    f"{RETENTION_S / 86400:.0f} days ago is forgotten)"
                )
            if record.info.revoked:
                return record.info
            if not force and self._last_live_admin(record.info, now):
                raise FailedPrecondition(
                    f"{token_id} is the last live admin token: revoked, every admin call "
                    "fails until the node restarts and writes a new admin.token in its "
                    "data directory. Create another admin token first (tierstore token "
                    "create NAME --grant '*=admin'), or revoke it with force (the CLI's "
                    "--force)"
                )
            revoked = dataclasses.replace(
                record, info=dataclasses.replace(record.info, revoked=True, revoked_at=now)
            )
            self._commit({**self._records, token_id: revoked})
            return revoked.info

    def _last_live_admin(self, info: TokenInfo, now: float) -> bool:
        """Whether ``info`` is a live admin token on every dataset and no other is."""
        admins = [
            record.info.token_id
            for record in self._records.values()
            if _ADMIN_ON_ALL in record.info.grants and record.info.live(now)
        ]
        return admins == [info.token_id]

    def remove_grants_on(self, dataset: str) -> dict[str, tuple[Grant, ...]]:
        """Remove every token's grant on ``dataset`` by name (grants on ``*`` stay), as
        the dataset is deleted: grants name datasets, so a dataset made again under that
        name would otherwise be readable with the old tokens. Returns the grants removed
        by token id (for :meth:`restore_grants`). Raises :class:`OSError` if the store
        cannot be written (then nothing changed)."""
        with self._lock:
            removed: dict[str, tuple[Grant, ...]] = {}
            changed: dict[str, _Record] = {}
            for token_id, record in self._records.items():
                grants = record.info.grants
                gone = tuple(grant for grant in grants if grant.dataset == dataset)
                if gone:
                    kept = tuple(grant for grant in grants if grant.dataset != dataset)
                    info = dataclasses.replace(record.info, grants=kept)
                    changed[token_id] = dataclasses.replace(record, info=info)
                    removed[token_id] = gone
            if changed:
                self._commit({**self._records, **changed})
            return removed

    def drop_stale_grants(self, incarnation_of: Callable[[str], int | None]) -> list[str]:
        """Remove every grant made for another dataset than the one its name names now
        (``incarnation_of(name)``: the dataset's incarnation, None for none), as a node
        starts: the dataset was deleted since, and what holds the name now came back
        from the archive (a write-back delete a hot-tier loss undid) or was made by
        someone else, while this grant came from a token file copied before the
        delete, or was made after it. Grants end with their dataset; a delete removes
        them as it runs, and this catches those a restore or a rebuild brought back.
        A grant an earlier release made (no incarnation recorded) is bound to the
        dataset of its name now, or removed when there is none. Returns one line per
        grant removed (for the node's log). Raises OSError if the store cannot be
        written (then nothing changed)."""
        with self._lock:
            changed: dict[str, _Record] = {}
            removed: list[str] = []
            for token_id, record in self._records.items():
                kept: list[Grant] = []
                bound = dict(record.incarnations)
                for grant in record.info.grants:
                    if grant.dataset == ALL_DATASETS:
                        kept.append(grant)
                        continue
                    now = incarnation_of(grant.dataset)
                    # Unbound (an earlier release's): bound to the dataset there is now.
                    if now is not None and bound.setdefault(grant.dataset, now) == now:
                        kept.append(grant)
                    else:
                        bound.pop(grant.dataset, None)
                        removed.append(
                            f"token {token_id} ({record.info.principal}): its "
                            f"{grant.role.value} grant on {grant.dataset!r}, made for a "
                            "dataset of that name deleted since (or left out of a rebuild)"
                        )
                if tuple(kept) != record.info.grants or bound != record.incarnations:
                    info = dataclasses.replace(record.info, grants=tuple(kept))
                    changed[token_id] = dataclasses.replace(record, info=info, incarnations=bound)
            if changed:
                self._commit({**self._records, **changed})
            return removed

    def restore_grants(self, removed: Mapping[str, tuple[Grant, ...]]) -> None:
        """Give back grants :meth:`remove_grants_on` removed (to the tokens still held;
        a grant a token holds again meanwhile is not doubled). Raises OSError."""
        with self._lock:
            changed: dict[str, _Record] = {}
            for token_id, grants in removed.items():
                record = self._records.get(token_id)
                if record is not None:
                    merged = tuple(dict.fromkeys((*record.info.grants, *grants)))
                    info = dataclasses.replace(record.info, grants=merged)
                    changed[token_id] = dataclasses.replace(record, info=info)
            if changed:
                self._commit({**self._records, **changed})

    def count_live(self, token_ids: Iterable[str]) -> int:
        """How many of ``token_ids`` name a token that would authenticate now."""
        now = self._clock()
        with self._lock:
            records = [self._records.get(token_id) for token_id in token_ids]
        return sum(1 for record in records if record is not None and record.info.live(now))

    def list(self) -> builtins.list[TokenInfo]:
        """Every token issued, in the order issued: the live ones, and those revoked or
        run out less than :data:`RETENTION_S` ago."""
        # Records keep insertion order (in memory and in the file); the stable sort only
        # matters if the clock went backwards.
        now = self._clock()
        return sorted(
            (record.info for record in self._records.values() if not record.info.forgotten(now)),
            key=lambda i: i.created_at,
        )

    def authenticate(self, token: str) -> Principal:
        """The principal a token stands for, if the token is valid now.

        Raises :class:`~tierstore.errors.Unauthenticated` with the same message for a
        malformed, unknown, wrong, revoked or expired token; its ``reason`` says which.
        The secret is compared in constant time.
        """
        token_id = token_id_of(token) if isinstance(token, str) else None
        if token_id is None:
            raise Unauthenticated(reason=AuthFailure.MALFORMED)
        record = self._records.get(token_id)
        expected = _DUMMY_DIGEST if record is None else record.digest
        matches = hmac.compare_digest(_digest(token), expected)
        if record is None:
            raise Unauthenticated(reason=AuthFailure.UNKNOWN, token_id=token_id)
        if not matches:
            raise Unauthenticated(reason=AuthFailure.MISMATCH, token_id=token_id)
        return self._principal_of(record.info)

    def principal_now(self, principal: Principal) -> Principal:
        """``principal`` as its token stands now, with the grants it holds now (deleting
        a dataset removes those on it): for a call that acts long after it was
        authenticated, such as a put committing at the end of its stream. Raises
        :class:`~tierstore.errors.Unauthenticated` when the token was revoked, ran out
        or is gone. A principal proven by a client certificate is returned as it is."""
        if principal.via != "token":
            return principal
        record = self._records.get(principal.token_id)
        if record is None:
            raise Unauthenticated(reason=AuthFailure.UNKNOWN)
        return self._principal_of(record.info)

    def _principal_of(self, info: TokenInfo) -> Principal:
        """The principal ``info``'s token stands for; Unauthenticated if it was revoked
        or has run out."""
        if info.revoked:
            raise Unauthenticated(reason=AuthFailure.REVOKED, token_id=info.token_id)
        if info.expired(self._clock()):
            raise Unauthenticated(reason=AuthFailure.EXPIRED, token_id=info.token_id)
        return Principal(
            info.principal,
            info.grants,
            via="token",
            token_id=info.token_id,
            expires_at=info.expires_at,
        )

    def ensure_admin_token(self, token_file: Path, *, another: bool = False) -> str | None:
        """On first start, issue an admin token and write it to ``token_file`` (mode 0600).

        Issues a token for principal ``"admin"`` with the admin role on ``"*"`` unless the
        store already holds a live (unrevoked, unexpired) token with that grant; returns it,
        or ``None`` when one existed. Restarting after every admin token was revoked or
        expired thus issues a fresh one: whoever can read the data directory is admin anyway.
        With ``another``, issues one whatever exists (a node restored without its
        ``admin.token``: the live admin token's holder is gone); the file is replaced,
        and a token it held stays live until revoked.
        The file is written before the store, so a crash in between leaves no admin token
        that nobody knows. Raises :class:`OSError` if either file cannot be written.
        """
        with self._lock:
            now = self._clock()
            for record in self._records.values():
                if record.info.live(now) and _ADMIN_ON_ALL in record.info.grants and not another:
                    return None
            info, token = self._new(ADMIN_PRINCIPAL, [_ADMIN_ON_ALL], 0)
            write_private_file(token_file, (token + "\n").encode("ascii"))
            self._commit({**self._records, info.token_id: _Record(info, _digest(token))})
            return token

    def _new(self, principal: str, grants: Iterable[Grant], ttl_s: float) -> tuple[TokenInfo, str]:
        # Called with the lock held (the id must be unique among the records).
        check_principal_name(principal)
        checked = _check_grants(grants)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
            raise InvalidArgument("ttl_s must be a number")
        if ttl_s != 0 and not MIN_TTL_S <= ttl_s <= MAX_TTL_S:  # NaN fails this too
            raise InvalidArgument(
                f"ttl_s must be 0 (never expires) or from {MIN_TTL_S:g} to {MAX_TTL_S:.0f} "
                f"seconds (ten years; the CLI's --ttl), not {ttl_s!r:.40}"
            )
        now = self._clock()
        token_id = secrets.token_hex(_ID_BYTES)
        while token_id in self._records:  # 48 bits: a clash is rare, but would be fatal
            token_id = secrets.token_hex(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        token = f"{TOKEN_PREFIX}{token_id}_{secret}"
        info = TokenInfo(
            token_id=token_id,
            principal=principal,
            grants=checked,
            created_at=now,
            expires_at=now + ttl_s if ttl_s > 0 else 0.0,
        )
        return info, token

    def _commit(self, records: dict[str, _Record]) -> None:
        # Called with the lock held. Disk first: a failed write changes nothing. Tokens
        # revoked or run out long ago go at every change, so the file (rewritten whole)
        # stays as large as the live tokens and the recent past make it.
        records = _remembered(records, self._clock())
        document = {
            "format": _FORMAT,
            "tokens": [_record_to_json(record) for record in records.values()],
        }
        write_private_file(self._path, json.dumps(document, indent=1).encode("utf-8"))
        self._records = records

    def _load(self) -> dict[str, _Record]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            refuse_dangling_link(self._path, "the token store")
            return {}
        restrict_mode(self._path)
        try:
            document = json.loads(raw)
            written_as = document.get("format")
        except (ValueError, AttributeError) as exc:
            raise DataLoss(f"token store {self._path} is corrupt: {exc}") from exc
        if isinstance(written_as, str) and _is_newer_format(written_as):
            raise NewerFormat(
                f"token store {self._path} was written by a newer tierstore release, in "
                f"format {written_as!r}; this release reads {_FORMAT!r}: run a release "
                "that reads it"
            )
        try:
            if written_as != _FORMAT:
                raise ValueError(f"format is {written_as!r}, not {_FORMAT!r}")
            records = [_record_from_json(item) for item in document["tokens"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataLoss(f"token store {self._path} is corrupt: {exc}") from exc
        now = self._clock()
        # A revocation written without its time (by an earlier version) is dated now:
        # kept a full retention from here, never forgotten early.
        dated = [
            dataclasses.replace(record, info=dataclasses.replace(record.info, revoked_at=now))
            if record.info.revoked and not record.info.revoked_at
            else record
            for record in records
        ]
        return _remembered({record.info.token_id: record for record in dated}, now)


def _is_newer_format(written_as: str) -> bool:
    """Whether ``written_as`` names a token store format newer than this release's
    (``tierstore-tokens/v<n>``, ``n`` past ours)."""
    prefix, _, version = _FORMAT.rpartition("/v")
    name, _, theirs = written_as.rpartition("/v")
    return name == prefix and theirs.isdigit() and int(theirs) > int(version)


def _remembered(records: Mapping[str, _Record], now: float) -> dict[str, _Record]:
    """``records`` without the tokens forgotten at ``now`` (TokenInfo.forgotten)."""
    return {
        token_id: record for token_id, record in records.items() if not record.info.forgotten(now)
    }


def _record_to_json(record: _Record) -> dict[str, Any]:
    info = record.info
    return {
        "token_id": info.token_id,
        "principal": info.principal,
        "grants": [_grant_to_json(g, record.incarnations.get(g.dataset)) for g in info.grants],
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
        "revoked_at": info.revoked_at,
        "sha256": record.digest,
    }


def _grant_to_json(grant: Grant, incarnation: int | None) -> dict[str, Any]:
    written: dict[str, Any] = {"dataset": grant.dataset, "role": grant.role.value}
    if incarnation is not None:
        written["incarnation"] = incarnation
    return written


def _record_from_json(item: Mapping[str, Any]) -> _Record:
    digest = item["sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("a token hash is not 64 hex digits")
    grants = tuple(Grant(str(g["dataset"]), Role(g["role"])) for g in item["grants"])
    incarnations = {
        str(g["dataset"]): _incarnation(g["incarnation"])
        for g in item["grants"]
        if "incarnation" in g
    }
    info = TokenInfo(
        token_id=str(item["token_id"]),
        principal=str(item["principal"]),
        grants=grants,
        created_at=float(item["created_at"]),
        expires_at=float(item["expires_at"]),
        revoked=bool(item["revoked"]),
        revoked_at=float(item.get("revoked_at", 0.0)),
    )
    return _Record(info, digest, incarnations)


def _incarnation(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a grant's incarnation is {value!r:.40}, not a generation number")
    return value
