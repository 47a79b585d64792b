"""Issuing, checking and revoking bearer tokens (tierstore/server/tokens.py)."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from tests.engine.stores import StoreFactory
from tierstore.engine.store import Store
from tierstore.errors import (
    ArchiveUnavailable,
    DataLoss,
    DatasetNotFound,
    FailedPrecondition,
    InvalidArgument,
    NewerFormat,
    NotFound,
    Unauthenticated,
)
from tierstore.server.authz import Principal
from tierstore.server.datasets import DatasetServicer
from tierstore.server.rpc import calling_as
from tierstore.server.tokens import MAX_TTL_S, MIN_TTL_S, RETENTION_S, AuthFailure, TokenStore
from tierstore.tiers.memory import MemoryTier
from tierstore.types import ALL_DATASETS, DatasetSettings, Durability, Grant, Role
from tierstore.v1.datasets_pb2 import DeleteDatasetRequest

READ_DS = [Grant("ds", Role.READER)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json", clock=clock)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def refused(store: TokenStore, token: object) -> str:
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(token)  # type: ignore[arg-type]
    assert str(caught.value) == "missing or invalid credentials"  # one message for every case
    return caught.value.reason


def test_create_and_authenticate(store: TokenStore) -> None:
    info, token = store.create("alice", READ_DS)
    assert token.startswith(f"ts_{info.token_id}_")
    principal = store.authenticate(token)
    assert principal.name == "alice"
    assert principal.grants == (Grant("ds", Role.READER),)
    assert principal.via == "token"
    assert principal.token_id == info.token_id
    assert store.list() == [info]


def test_two_roles_on_one_dataset_are_refused(store: TokenStore) -> None:
    # Both were kept, and the token acted as the higher one, whatever was meant.
    grants = [Grant("ds", Role.READER), Grant("ds", Role.ADMIN)]
    with pytest.raises(InvalidArgument, match="two roles on dataset 'ds': reader and admin"):
        store.create("alice", grants)
    assert store.list() == []
    info, _ = store.create("alice", [*READ_DS, *READ_DS, Grant("other", Role.WRITER)])
    assert info.grants == (Grant("ds", Role.READER), Grant("other", Role.WRITER))


def test_tokens_are_unique(store: TokenStore) -> None:
    tokens = {store.create("alice", READ_DS)[1] for _ in range(20)}
    assert len(tokens) == 20


def test_file_is_private_and_never_holds_the_token(store: TokenStore) -> None:
    _, token = store.create("alice", READ_DS)
    text = store.path.read_text()
    assert mode(store.path) == 0o600
    assert token not in text
    assert token[len("ts_") + 13 :] not in text  # the secret part alone
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_tokens_survive_a_restart(tmp_path: Path, store: TokenStore, clock: Clock) -> None:
    info, token = store.create("alice", READ_DS, ttl_s=60)
    reopened = TokenStore(store.path, clock=clock)
    assert reopened.list() == [info]
    assert reopened.authenticate(token).name == "alice"


def test_grants_on_a_deleted_dataset_are_removed_for_good(
    tmp_path: Path, store: TokenStore, clock: Clock
) -> None:
    both, token = store.create("tenant", [Grant("gone", Role.READER), Grant("kept", Role.WRITER)])
    only, _ = store.create("owner", [Grant("gone", Role.ADMIN)])
    everyone, _ = store.create("ops", [Grant(ALL_DATASETS, Role.READER)])
    removed = store.remove_grants_on("gone")
    assert removed == {
        both.token_id: (Grant("gone", Role.READER),),
        only.token_id: (Grant("gone", Role.ADMIN),),
    }
    assert store.remove_grants_on("gone") == {}
    for reloaded in (store, TokenStore(store.path, clock=clock)):
        grants = {info.token_id: info.grants for info in reloaded.list()}
        assert grants == {
            both.token_id: (Grant("kept", Role.WRITER),),
            only.token_id: (),
            everyone.token_id: (Grant(ALL_DATASETS, Role.READER),),
        }
    assert store.authenticate(token).grants == (Grant("kept", Role.WRITER),)
    # A delete that failed gives them back (to the tokens still held).
    store.revoke(only.token_id)
    store.restore_grants(removed)
    restored = {
        info.token_id: set(info.grants) for info in TokenStore(store.path, clock=clock).list()
    }
    assert restored[both.token_id] == {Grant("kept", Role.WRITER), Grant("gone", Role.READER)}
    assert restored[only.token_id] == {Grant("gone", Role.ADMIN)}  # revoked, still revoked


def test_a_grant_made_for_an_earlier_dataset_of_its_name_is_dropped_at_start(
    store: TokenStore, clock: Clock
) -> None:
    # A token file copied before a delete, restored after a namesake was made for
    # someone else, gave the old tenant's token a role on the new dataset (and a
    # write-back delete that a rebuild undid gave the new tenant's token the old data).
    incarnations = {"team": 7, "kept": 3}
    old, old_token = store.create(
        "old-tenant",
        [Grant("team", Role.READER), Grant("kept", Role.WRITER)],
        require_dataset=incarnations.__getitem__,
    )
    ops, _ = store.create("ops", [Grant(ALL_DATASETS, Role.READER)])
    written = json.loads(store.path.read_text())["tokens"]
    grants = next(t["grants"] for t in written if t["token_id"] == old.token_id)
    assert {g["dataset"]: g["incarnation"] for g in grants} == incarnations
    # Now "team" is another dataset (made since, incarnation 9), "kept" the same one.
    now = {"team": 9, "kept": 3}
    reopened = TokenStore(store.path, clock=clock)
    removed = reopened.drop_stale_grants(now.get)
    assert len(removed) == 1 and old.token_id in removed[0] and "'team'" in removed[0]
    for reloaded in (reopened, TokenStore(store.path, clock=clock)):
        held = {info.token_id: info.grants for info in reloaded.list()}
        assert held[old.token_id] == (Grant("kept", Role.WRITER),)
        assert held[ops.token_id] == (Grant(ALL_DATASETS, Role.READER),)
    assert reopened.authenticate(old_token).role_on("team") is None
    assert reopened.drop_stale_grants(now.get) == []  # nothing more to drop
    # A dataset gone altogether takes its grants too.
    assert len(reopened.drop_stale_grants({"team": 9}.get)) == 1
    assert reopened.authenticate(old_token).grants == ()


def test_a_grant_written_without_its_incarnation_is_bound_at_the_next_start(
    store: TokenStore, clock: Clock
) -> None:
    # Token files written by an earlier release hold no incarnations: bound to the
    # dataset of the name at the first start that can, dropped where there is none.
    legacy, token = store.create("tenant", [Grant("ds", Role.READER), Grant("gone", Role.READER)])
    assert "incarnation" not in store.path.read_text()
    assert len(store.drop_stale_grants({"ds": 4}.get)) == 1  # "gone": no such dataset
    assert store.authenticate(token).grants == (Grant("ds", Role.READER),)
    reopened = TokenStore(store.path, clock=clock)
    assert reopened.drop_stale_grants({"ds": 4}.get) == []
    assert len(reopened.drop_stale_grants({"ds": 5}.get)) == 1  # made again since
    assert reopened.authenticate(token).grants == ()
    assert [info.token_id for info in reopened.list()] == [legacy.token_id]


def test_wrong_secret(store: TokenStore) -> None:
    _, token = store.create("alice", READ_DS)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert refused(store, flipped) == AuthFailure.MISMATCH


def test_unknown_id(store: TokenStore) -> None:
    _, token = store.create("alice", READ_DS)
    other = "ts_" + "0" * 12 + token[15:]
    assert refused(store, other) == AuthFailure.UNKNOWN


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ts_",
        "Bearer x",
        "ts_0123456789ab_short",
        "ts_0123456789AB_" + "a" * 43,
        "ts_0123456789ab_" + "a" * 44,
        "ts_0123456789ab_" + "a" * 42 + "=",
        "x" * 10_000,
        None,
        b"ts_",
    ],
)
def test_malformed(store: TokenStore, token: object) -> None:
    store.create("alice", READ_DS)
    assert refused(store, token) == AuthFailure.MALFORMED


def test_malformed_variants_of_a_real_token(store: TokenStore) -> None:
    _, token = store.create("alice", READ_DS)
    for variant in (token + "\n", " " + token, token.upper(), token[:-1]):
        assert refused(store, variant) in (AuthFailure.MALFORMED, AuthFailure.UNKNOWN)


def test_revoke(store: TokenStore, clock: Clock) -> None:
    info, token = store.create("alice", READ_DS)
    kept, other = store.create("bob", READ_DS)
    revoked = store.revoke(info.token_id)
    assert revoked.revoked
    assert refused(store, token) == AuthFailure.REVOKED
    assert store.authenticate(other).name == "bob"
    assert store.revoke(info.token_id) == revoked  # again: no-op
    assert TokenStore(store.path, clock=clock).list() == [revoked, kept]
    assert refused(TokenStore(store.path, clock=clock), token) == AuthFailure.REVOKED
    with pytest.raises(NotFound, match="no token 'abcdef012345'"):
        store.revoke("abcdef012345")  # well formed, never issued
    # Not an id at all: refused as malformed, not looked up (and not echoed whole).
    for malformed in ("nope", "ABCDEF012345", "abcdef01234", "x" * 10_000):
        with pytest.raises(InvalidArgument, match="not a token id") as caught:
            store.revoke(malformed)
        assert len(str(caught.value)) < 200
    # A whole token given as the id: refused without echoing its secret part.
    with pytest.raises(InvalidArgument, match="whole token, not a token id") as caught:
        store.revoke(other)
    secret = other[len("ts_") + 12 + 1 :]  # (the secret's alphabet has "_" in it too)
    assert secret[:8] not in str(caught.value)
    assert store.authenticate(other).name == "bob"  # and not revoked


def test_the_last_live_admin_token_is_revoked_only_with_force(
    store: TokenStore, clock: Clock, tmp_path: Path
) -> None:
    # The guard stood in the CLI alone: a client library's revoke (or two CLIs at
    # once) locked every admin out until the node restarted.
    everything = [Grant(ALL_DATASETS, Role.ADMIN)]
    first, first_token = store.create("root", everything)
    reader, _ = store.create("alice", READ_DS)
    dataset_admin, _ = store.create("dsadmin", [Grant("ds", Role.ADMIN)])
    store.create("old-root", everything, ttl_s=10)
    clock.now += 11  # an admin token run out is no admin to fall back on
    for token_id in (reader.token_id, dataset_admin.token_id):
        assert store.revoke(token_id).revoked  # not admins on "*": no guard
    with pytest.raises(FailedPrecondition, match="is the last live admin token") as caught:
        store.revoke(first.token_id)
    assert "--grant '*=admin'" in str(caught.value) and "force" in str(caught.value)
    assert store.authenticate(first_token).name == "root"  # still works
    assert not TokenStore(store.path, clock=clock).list()[0].revoked  # on disk too
    second, _ = store.create("root2", everything)
    assert store.revoke(first.token_id).revoked  # another admin holds on
    with pytest.raises(FailedPrecondition, match=second.token_id):
        store.revoke(second.token_id)
    assert store.revoke(second.token_id, force=True).revoked
    assert refused(store, first_token) == AuthFailure.REVOKED
    assert store.revoke(second.token_id).revoked  # a revoked one again: still a no-op


def test_two_admins_revoking_each_other_at_once_leave_one(store: TokenStore) -> None:
    everything = [Grant(ALL_DATASETS, Role.ADMIN)]
    ids = [store.create(f"root{i}", everything)[0].token_id for i in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def revoke(token_id: str) -> None:
        start.wait()
        try:
            store.revoke(token_id)
            outcomes.append("revoked")
        except FailedPrecondition:
            outcomes.append("refused")

    threads = [threading.Thread(target=revoke, args=(token_id,)) for token_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "revoked"]
    assert [info.revoked for info in store.list()].count(False) == 1


def test_expiry(store: TokenStore, clock: Clock) -> None:
    info, token = store.create("alice", READ_DS, ttl_s=10)
    forever, token_forever = store.create("bob", READ_DS)
    assert info.expires_at == clock.now + 10
    assert forever.expires_at == 0
    clock.now += 9.9
    store.authenticate(token)
    clock.now += 0.1
    assert refused(store, token) == AuthFailure.EXPIRED
    clock.now += 10**9
    store.authenticate(token_forever)


@pytest.mark.parametrize(
    ("principal", "grants", "ttl_s"),
    [
        ("", READ_DS, 0),
        ("a b", READ_DS, 0),
        ("alice", [Grant("Bad Name", Role.READER)], 0),
        ("alice", [("ds", "reader")], 0),
        ("alice", READ_DS, -1),
        ("alice", READ_DS, float("inf")),
        ("alice", READ_DS, float("nan")),
        ("alice", READ_DS, 1e300),  # finite, but no client can show the date
        ("alice", READ_DS, MAX_TTL_S * (1 + 1e-9)),
        ("alice", READ_DS, 1e-9),  # expired before anyone could use it
        ("alice", READ_DS, MIN_TTL_S / 2),
    ],
)
def test_bad_requests(store: TokenStore, principal: str, grants: list[Grant], ttl_s: float) -> None:
    with pytest.raises(InvalidArgument):
        store.create(principal, grants, ttl_s)
    assert store.list() == []


def test_a_huge_ttl_is_refused_with_a_short_message(store: TokenStore) -> None:
    # 10**400 was printed in full: 401 digits in one error line.
    with pytest.raises(InvalidArgument, match="ten years") as refused:
        store.create("alice", READ_DS, 10**400)
    assert len(str(refused.value)) < 200
    assert store.list() == []


def test_ttl_bounds_are_inclusive(store: TokenStore, clock: Clock) -> None:
    shortest, _ = store.create("alice", READ_DS, MIN_TTL_S)
    longest, _ = store.create("alice", READ_DS, MAX_TTL_S)
    assert shortest.expires_at == clock.now + 1
    assert longest.expires_at == clock.now + 10 * 365.25 * 86_400


def test_grants_are_deduplicated(store: TokenStore) -> None:
    info, _ = store.create("alice", [*READ_DS, *READ_DS, Grant(ALL_DATASETS, Role.WRITER)])
    assert info.grants == (Grant(ALL_DATASETS, Role.WRITER), Grant("ds", Role.READER))


def test_concurrent_creates(store: TokenStore, clock: Clock) -> None:
    issued: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            _, token = store.create("alice", READ_DS)
            with lock:
                issued.append(token)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(issued)) == 80
    reopened = TokenStore(store.path, clock=clock)
    assert len(reopened.list()) == 80
    for token in issued:
        reopened.authenticate(token)


def test_admin_token_on_first_start_only(tmp_path: Path, store: TokenStore, clock: Clock) -> None:
    token_file = tmp_path / "admin.token"
    token = store.ensure_admin_token(token_file)
    assert token is not None
    assert token_file.read_text() == token + "\n"
    assert mode(token_file) == 0o600
    admin = store.authenticate(token)
    assert admin.name == "admin"
    assert admin.grants == (Grant(ALL_DATASETS, Role.ADMIN),)
    # Later starts: nothing new, even after the operator deleted the file.
    token_file.unlink()
    restarted = TokenStore(store.path, clock=clock)
    assert restarted.ensure_admin_token(token_file) is None
    assert not token_file.exists()
    assert len(restarted.list()) == 1


def test_admin_token_reissued_when_every_admin_token_is_revoked(
    tmp_path: Path, store: TokenStore
) -> None:
    first = store.ensure_admin_token(tmp_path / "admin.token")
    assert first is not None
    store.revoke(store.list()[0].token_id, force=True)  # the last one
    second = store.ensure_admin_token(tmp_path / "admin.token")
    assert second is not None and second != first
    assert (tmp_path / "admin.token").read_text() == second + "\n"


def test_nothing_shows_a_token(store: TokenStore, tmp_path: Path) -> None:
    info, token = store.create("alice", READ_DS)
    admin = store.ensure_admin_token(tmp_path / "admin.token")
    assert admin is not None
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(token[:-1] + "#")
    shown = " ".join(
        [
            repr(store),
            repr(info),
            repr(store.list()),
            repr(store.authenticate(token)),
            repr(caught.value),
            str(caught.value),
        ]
    )
    for secret in (token, token[16:], admin, admin[16:]):
        assert secret not in shown
    record = next(iter(store._records.values()))
    assert "sha256" not in repr(record) and record.digest not in repr(record)


def bad_incarnation(tmp_path: Path, value: object) -> str:
    """A token file whose one grant's incarnation is ``value``."""
    made = TokenStore(tmp_path / "made.json")
    made.create("alice", READ_DS, require_dataset=lambda name: 1)
    document = json.loads(made.path.read_text())
    document["tokens"][0]["grants"][0]["incarnation"] = value
    return json.dumps(document)


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    for content in (
        "{",
        "[]",
        json.dumps({"format": "other", "tokens": []}),
        json.dumps({"format": "tierstore-tokens/v0", "tokens": []}),
        json.dumps({"format": "tierstore-tokens/vx", "tokens": []}),
        json.dumps({"format": "tierstore-tokens/v1", "tokens": [{"token_id": "x"}]}),
        bad_incarnation(tmp_path, "7"),
        bad_incarnation(tmp_path, -1),
    ):
        path.write_text(content)
        with pytest.raises(DataLoss):
            TokenStore(path)
    # A newer release's: not damage, and left as it is.
    newer = json.dumps({"format": "tierstore-tokens/v2", "tokens": []})
    path.write_text(newer)
    with pytest.raises(
        NewerFormat, match=r"newer tierstore release, in format 'tierstore-tokens/v2'"
    ):
        TokenStore(path)
    assert path.read_text() == newer


def test_a_token_store_linked_to_nothing_is_refused_not_emptied(
    tmp_path: Path, store: TokenStore, clock: Clock
) -> None:
    # A token store kept elsewhere and linked in: while the link's target is missing, it
    # must not load as empty (and be written over, with a new admin token issued).
    _, token = store.create("alice", READ_DS)
    kept = tmp_path / "kept"
    kept.mkdir()
    (tmp_path / "tokens.json").rename(kept / "tokens.json")
    (tmp_path / "tokens.json").symlink_to(kept / "tokens.json")
    kept.rename(tmp_path / "unmounted")
    with pytest.raises(FailedPrecondition, match=r"tokens\.json.*link to .*which does not exist"):
        TokenStore(tmp_path / "tokens.json", clock=clock)
    assert (tmp_path / "tokens.json").is_symlink()
    (tmp_path / "unmounted").rename(kept)
    assert TokenStore(tmp_path / "tokens.json", clock=clock).authenticate(token).name == "alice"


def test_loose_file_mode_is_tightened(store: TokenStore, clock: Clock) -> None:
    store.create("alice", READ_DS)
    store.path.chmod(0o644)
    TokenStore(store.path, clock=clock)
    assert mode(store.path) == 0o600


class HeldDeletes:
    """A store whose dataset deletes (forced ones only if ``hold_forced``) wait inside
    the engine, once ``inside`` is set, until ``release`` is."""

    def __init__(self, store: Store, *, hold_forced: bool) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self._store, self._hold_forced = store, hold_forced

    def delete_dataset(self, name: str, *, force: bool = False, **options: Any) -> None:
        if self._hold_forced or not force:
            self.inside.set()
            assert self.release.wait(10)
        self._store.delete_dataset(name, force=force, **options)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._store, attribute)


class _CallerWaiting:
    """The one method of a ServicerContext a delete reads: its caller still waits."""

    def is_active(self) -> bool:
        return True


WAITING = _CallerWaiting()


def test_a_delete_refused_for_the_shards_it_holds_leaves_every_grant_in_place(
    tmp_path: Path,
) -> None:
    # The grants went first and came back after the engine refused: meanwhile every
    # call of a token with a grant on the dataset was told it did not exist, and its
    # readers, writers and DataLoaders failed, for a delete that changed nothing.
    factory = StoreFactory(tmp_path / "stores")
    store = factory(MemoryTier(), datasets={"plain": DatasetSettings()})
    store.put("plain", "s", b"tenant one")
    tokens = TokenStore(tmp_path / "tokens.json")
    _, token = tokens.create("tenant", [Grant("plain", Role.READER)])
    taken: list[str] = []
    take = tokens.remove_grants_on
    tokens.remove_grants_on = lambda name: taken.append(name) or take(name)  # type: ignore[method-assign]
    calling_as(Principal("admin", (Grant(ALL_DATASETS, Role.ADMIN),), via="token"))
    servicer = DatasetServicer(store, tokens)
    delete = DatasetServicer.DeleteDataset.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(FailedPrecondition, match="'plain' holds 1 shard; delete them"):
        delete(servicer, DeleteDatasetRequest(name="plain"), WAITING)
    assert taken == []  # never taken, so never missing
    assert tokens.authenticate(token).grants == (Grant("plain", Role.READER),)
    with pytest.raises(DatasetNotFound):
        delete(servicer, DeleteDatasetRequest(name="nothing"), WAITING)
    assert store.get("plain", "s").to_bytes() == b"tenant one"
    factory.close_all()


def test_two_deletes_of_one_dataset_leave_no_grant_on_it(tmp_path: Path) -> None:
    # One delete is refused (a shard was put after its first check), another lands
    # meanwhile: the grants the first removed must not come back onto a dataset that
    # is gone.
    factory = StoreFactory(tmp_path / "stores")
    store = factory(MemoryTier(), datasets={"plain": DatasetSettings()})
    tokens = TokenStore(tmp_path / "tokens.json")
    _, token = tokens.create("tenant", [Grant("plain", Role.READER)])
    calling_as(Principal("admin", (Grant(ALL_DATASETS, Role.ADMIN),), via="token"))
    held = HeldDeletes(store, hold_forced=False)
    servicer = DatasetServicer(cast(Store, held), tokens)
    delete = DatasetServicer.DeleteDataset.__wrapped__  # type: ignore[attr-defined]
    outcomes: list[object] = []

    def run(force: bool) -> None:
        calling_as(Principal("admin", (Grant(ALL_DATASETS, Role.ADMIN),), via="token"))
        try:
            outcomes.append(
                delete(servicer, DeleteDatasetRequest(name="plain", force=force), WAITING)
            )
        except Exception as exc:
            outcomes.append(exc)

    refused = threading.Thread(target=run, args=(False,))
    refused.start()
    assert held.inside.wait(10)
    store.put("plain", "s", b"tenant one")  # lands after the service's check
    forced = threading.Thread(target=run, args=(True,))
    forced.start()
    held.release.set()
    refused.join(10)
    forced.join(10)
    assert any(isinstance(outcome, FailedPrecondition | DatasetNotFound) for outcome in outcomes)
    with pytest.raises(DatasetNotFound):
        store.get_dataset("plain")
    store.create_dataset("plain")  # someone else's, under the name
    assert Grant("plain", Role.READER) not in tokens.authenticate(token).grants
    factory.close_all()


def test_a_grant_needs_its_dataset_to_exist(store: TokenStore) -> None:
    existing = {"made"}

    def require(name: str) -> None:
        if name not in existing:
            raise DatasetNotFound(f"no dataset {name!r}")

    with pytest.raises(DatasetNotFound, match="'typo'"):
        store.create(
            "t", [Grant("made", Role.READER), Grant("typo", Role.READER)], require_dataset=require
        )
    assert store.list() == []  # nothing half-made
    info, _ = store.create(
        "t", [Grant("made", Role.READER), Grant(ALL_DATASETS, Role.READER)], require_dataset=require
    )
    assert set(info.grants) == {Grant("made", Role.READER), Grant(ALL_DATASETS, Role.READER)}


def test_a_token_made_while_its_dataset_is_deleted_keeps_no_grant_on_it(tmp_path: Path) -> None:
    # The token is made (its dataset still there) after the delete took the grants, before
    # the engine's delete lands: the grant must not outlive the dataset.
    factory = StoreFactory(tmp_path / "stores")
    store = factory(MemoryTier(), datasets={"plain": DatasetSettings()})
    tokens = TokenStore(tmp_path / "tokens.json")
    held = HeldDeletes(store, hold_forced=True)
    servicer = DatasetServicer(cast(Store, held), tokens)
    delete = DatasetServicer.DeleteDataset.__wrapped__  # type: ignore[attr-defined]

    def run() -> None:
        calling_as(Principal("admin", (Grant(ALL_DATASETS, Role.ADMIN),), via="token"))
        delete(servicer, DeleteDatasetRequest(name="plain"), WAITING)

    deleting = threading.Thread(target=run)
    deleting.start()
    assert held.inside.wait(10)

    def require_dataset(name: str) -> int:
        store.get_dataset(name)  # DatasetNotFound
        incarnation = store.dataset_incarnation(name)
        assert incarnation is not None
        return incarnation

    _, token = tokens.create("late", [Grant("plain", Role.READER)], require_dataset=require_dataset)
    held.release.set()
    deleting.join(10)
    assert not deleting.is_alive()
    store.create_dataset("plain")  # someone else's, under the name
    assert tokens.authenticate(token).grants == ()
    factory.close_all()


def test_a_write_through_delete_the_archive_has_not_done_gives_no_grant_to_the_names_next_owner(
    tmp_path: Path,
) -> None:
    # The delete is done here and waits for the archive, which fails; meanwhile someone
    # makes a dataset of the name. The grants the delete took went back to the old
    # tokens, onto the new dataset, because the name existed again.
    factory = StoreFactory(tmp_path / "stores")

    class RemadeMidDelete(MemoryTier):
        def delete(self, key: str) -> None:
            if not store.has_dataset("plain"):
                store.create_dataset("plain")  # someone else's, under the name
            raise ArchiveUnavailable(f"DELETE {key}: the archive is down (test)")

    archive = RemadeMidDelete()
    settings = DatasetSettings(durability=Durability.WRITE_THROUGH)
    store = factory(archive, datasets={"plain": settings}, start_mover=False)
    tokens = TokenStore(tmp_path / "tokens.json")
    _, token = tokens.create("tenant", [Grant("plain", Role.READER)])
    calling_as(Principal("admin", (Grant(ALL_DATASETS, Role.ADMIN),), via="token"))
    servicer = DatasetServicer(store, tokens)
    delete = DatasetServicer.DeleteDataset.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(ArchiveUnavailable):
        delete(servicer, DeleteDatasetRequest(name="plain", force=True), WAITING)
    assert store.has_dataset("plain")  # the new one
    assert tokens.authenticate(token).grants == ()
    factory.close_all()


def stored_ids(store: TokenStore) -> set[str]:
    """The ids the store's file holds."""
    return {item["token_id"] for item in json.loads(store.path.read_bytes())["tokens"]}


def test_tokens_revoked_or_expired_long_ago_are_forgotten(store: TokenStore, clock: Clock) -> None:
    revoked, _ = store.create("alice", READ_DS)
    expiring, expiring_token = store.create("bob", READ_DS, ttl_s=3600)
    forever, forever_token = store.create("carol", READ_DS)
    long_lived, long_lived_token = store.create("dave", READ_DS, ttl_s=MAX_TTL_S)
    store.revoke(revoked.token_id)
    clock.now += 3600  # bob's token runs out now
    assert refused(store, expiring_token) == AuthFailure.EXPIRED
    # Within the retention, both are kept, listed and known.
    clock.now += RETENTION_S - 3600 - 1
    store.create("erin", READ_DS)
    assert {revoked.token_id, expiring.token_id} <= stored_ids(store)
    assert {revoked.token_id, expiring.token_id} <= {i.token_id for i in store.list()}
    assert store.revoke(revoked.token_id).revoked  # again: still a no-op
    clock.now += 3600 + 1  # bob's token ran out RETENTION_S ago, alice's was revoked then
    # Not listed once past it, and gone from the file at the next change...
    assert {i.token_id for i in store.list()} & {revoked.token_id, expiring.token_id} == set()
    store.create("frank", READ_DS)
    assert revoked.token_id not in stored_ids(store)
    assert expiring.token_id not in stored_ids(store)
    # ...and the answer for such an id says why it is not known.
    with pytest.raises(NotFound, match="revoked or expired more than 30 days ago"):
        store.revoke(revoked.token_id)
    assert refused(store, expiring_token) == AuthFailure.UNKNOWN
    # Live tokens are never dropped, however old.
    clock.now += 20 * 365 * 86400 - MAX_TTL_S
    store.create("grace", READ_DS)
    assert store.authenticate(forever_token).name == "carol"
    assert forever.token_id in stored_ids(store)
    assert long_lived.token_id in stored_ids(store)  # ran out, but within the retention
    assert refused(store, long_lived_token) == AuthFailure.EXPIRED


def test_a_restart_forgets_tokens_revoked_long_ago(
    tmp_path: Path, store: TokenStore, clock: Clock
) -> None:
    old, old_token = store.create("alice", READ_DS)
    live, live_token = store.create("bob", READ_DS)
    store.revoke(old.token_id)
    clock.now += RETENTION_S + 1
    again = TokenStore(store.path, clock=clock)
    assert [info.token_id for info in again.list()] == [live.token_id]
    assert refused(again, old_token) == AuthFailure.UNKNOWN
    assert again.authenticate(live_token).name == "bob"
    again.create("carol", READ_DS)
    assert old.token_id not in stored_ids(again)


def test_a_token_revoked_before_revocations_were_dated_is_kept_a_full_retention(
    store: TokenStore, clock: Clock
) -> None:
    # A file written before the time of a revocation was recorded: the retention runs
    # from the first start that reads it, never from the token's creation.
    info, _ = store.create("alice", READ_DS)
    store.revoke(info.token_id)
    document = json.loads(store.path.read_bytes())
    for item in document["tokens"]:
        del item["revoked_at"]
    store.path.write_text(json.dumps(document))
    clock.now += 10 * RETENTION_S
    again = TokenStore(store.path, clock=clock)
    again.create("bob", READ_DS)
    assert info.token_id in stored_ids(again)
    clock.now += RETENTION_S
    again.create("carol", READ_DS)
    assert info.token_id not in stored_ids(again)
