"""A call's authority is checked again after each wait, before what it was waited for.

A handler authorized as it begins, then waited (for a lock held by a long delete or
key rotation, for a data key's unwrap, for a frame from the archive) and then acted or
sent on that first check: a token revoked meanwhile, or a grant gone with its dataset,
still deleted a dataset of the name made since for someone else, rotated the master key,
or received a data key or a frame. Each test makes the wait happen at that point and
changes the caller's authority during it: the delete and the update wait on the real
lock (a write-through delete held on the archive, the store's lock held by the test);
the rotation's wait is made inside its first check, so its test tells only that a
second check comes later. A rotation whose caller gave up while it was queued rotates
nothing either (its caller may have rotated again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.engine.stores import payload, wait_until
from tests.server.servers import (
    RunningServer,
    invoke,
    once_the_server_sees_the_caller_gone,
    serving,
)
from tierstore.engine.sealedpath import SealedRead
from tierstore.server import admin as admin_service
from tierstore.server import datasets as dataset_service
from tierstore.server.localreads import LocalReadService
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import admin_pb2, datasets_pb2, shards_pb2

DATASETS = "/tierstore.v1.DatasetService/"
ADMIN = "/tierstore.v1.AdminService/"
SHARDS = "/tierstore.v1.ShardService/"
WAIT_S = 30.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningServer]:
    settings = {"alpha": DatasetSettings(), "vault": DatasetSettings(encrypted=True)}
    with serving(tmp_path, datasets=settings) as running:
        yield running


def revoke(node: RunningServer, token: str) -> None:
    node.tokens.revoke(token.split("_")[1], force=True)  # the last admin token too


def held_after_first_check(
    monkeypatch: pytest.MonkeyPatch, module: Any, method: str
) -> tuple[threading.Event, threading.Event]:
    """Make the first check of ``method`` in ``module`` that passes wait, as a call
    queued behind a lock does: returns (passed, go), set once it passed, and to let it
    go on."""
    real = module.authorize
    passed, go = threading.Event(), threading.Event()

    def authorize(principal: Any, full_method: str, dataset: str | None) -> Any:
        result = real(principal, full_method, dataset)
        if full_method.endswith("/" + method) and not passed.is_set():
            passed.set()
            assert go.wait(WAIT_S), "the test did not let the call go on"
        return result

    monkeypatch.setattr(module, "authorize", authorize)
    return passed, go


def in_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``call`` in a thread; the function returned waits for it and gives its result,
    or the grpc.RpcError it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except grpc.RpcError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def result() -> Any:
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the call did not end"
        return outcome[0]

    return result


def revoked_while_queued(
    node: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    service: str,
    method: str,
    request: Any,
    token: str,
) -> None:
    """Call ``method`` of ``service`` (handled in ``module``) with ``token``, revoke the
    token while the call waits after its first check, and see it refused."""
    passed, go = held_after_first_check(monkeypatch, module, method)
    queued = in_thread(lambda: invoke(node.channel(), service + method, request, token))
    assert passed.wait(WAIT_S)
    revoke(node, token)
    go.set()
    outcome = queued()
    assert isinstance(outcome, grpc.RpcError), outcome
    assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED


class _ArchiveHoldingDeletes(MemoryTier):
    """A memory archive whose deletes wait until ``go`` is set (``waiting`` set meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting, self.go = threading.Event(), threading.Event()

    def delete(self, key: str) -> None:
        self.waiting.set()
        assert self.go.wait(WAIT_S), "the test did not let the archive delete go on"
        super().delete(key)


def test_a_dataset_delete_queued_while_the_name_changed_hands_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Team A's delete was authorized, then queued behind the operator's delete of a
    # write-through dataset (which waits on the archive); meanwhile alpha was deleted
    # (team A's grant went with it) and made again for team B, who wrote to it. Team
    # A's delete then deleted team B's dataset.
    archive = _ArchiveHoldingDeletes()
    settings = {"alpha": DatasetSettings(), "slow": DatasetSettings(durability="write-through")}
    with serving(tmp_path, datasets=settings, archive=archive) as node:
        node.store.put("slow", "s", payload(200))
        operator = node.token("ops", ("*", Role.ADMIN))
        team_a = node.token("team-a", ("alpha", Role.ADMIN))
        slow = datasets_pb2.DeleteDatasetRequest(name="slow", force=True)
        first = in_thread(
            lambda: invoke(node.channel(), DATASETS + "DeleteDataset", slow, operator)
        )
        assert archive.waiting.wait(WAIT_S)  # the operator's delete holds the lock
        passed = checks_of(monkeypatch, dataset_service, "team-a")
        request = datasets_pb2.DeleteDatasetRequest(name="alpha", force=True)
        queued = in_thread(
            lambda: invoke(node.channel(), DATASETS + "DeleteDataset", request, team_a)
        )
        assert passed.wait(WAIT_S)  # team A's delete was authorized; it waits for the lock
        node.tokens.remove_grants_on("alpha")  # as a delete of alpha does first
        node.store.delete_dataset("alpha", force=True)
        node.store.create_dataset("alpha", DatasetSettings())
        node.token("team-b", ("alpha", Role.WRITER))
        node.store.put("alpha", "team-b.bin", payload(500))
        archive.go.set()
        assert not isinstance(first(), grpc.RpcError)
        outcome = queued()
        assert isinstance(outcome, grpc.RpcError), outcome
        assert outcome.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
        assert node.store.get("alpha", "team-b.bin").to_bytes() == payload(500)


def checks_of(monkeypatch: pytest.MonkeyPatch, module: Any, principal: str) -> threading.Event:
    """An event set once a check ``module`` makes for ``principal`` passed."""
    real = module.authorize
    passed = threading.Event()

    def authorize(who: Any, full_method: str, dataset: str | None) -> Any:
        result = real(who, full_method, dataset)
        if getattr(who, "name", None) == principal:
            passed.set()
        return result

    monkeypatch.setattr(module, "authorize", authorize)
    return passed


def test_a_dataset_update_queued_behind_another_while_its_token_was_revoked_changes_nothing(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An update waits on the store's lock while another changes a policy (a scan of
    # the dataset's hot shards): it changed the settings on the check made before.
    owner = node.token("owner", ("alpha", Role.ADMIN))
    checked = checks_of(monkeypatch, dataset_service, "owner")
    request = datasets_pb2.UpdateDatasetRequest(name="alpha", hot_quota_bytes=4096)
    with node.store._access.flush_lock:  # the other update's
        queued = in_thread(
            lambda: invoke(node.channel(), DATASETS + "UpdateDataset", request, owner)
        )
        assert checked.wait(WAIT_S)
        revoke(node, owner)
    outcome = queued()
    assert isinstance(outcome, grpc.RpcError), outcome
    assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED
    assert node.store.get_dataset("alpha").hot_quota_bytes == 0


def test_a_key_rotation_queued_while_its_token_was_revoked_rotates_nothing(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = node.token("ops", ("*", Role.ADMIN))
    before = node.store.master_key_id
    request = admin_pb2.RotateKeysRequest()
    revoked_while_queued(node, monkeypatch, admin_service, ADMIN, "RotateKeys", request, admin)
    assert node.store.master_key_id == before


def test_a_key_rotation_whose_caller_gave_up_while_it_was_queued_rotates_nothing(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queued behind a long rotation past its deadline, the caller was told
    # DEADLINE_EXCEEDED (and may rotate again): the queued call rotated all the same.
    admin = node.token("ops", ("*", Role.ADMIN))
    rotations: list[object] = []
    monkeypatch.setattr(node.store, "rotate_master_key", lambda *_: rotations.append(1) or 0)
    once_the_server_sees_the_caller_gone(monkeypatch, admin_service)
    passed, go = held_after_first_check(monkeypatch, admin_service, "RotateKeys")
    request = admin_pb2.RotateKeysRequest()
    queued = in_thread(
        lambda: invoke(node.channel(), ADMIN + "RotateKeys", request, admin, timeout=1.0)
    )
    assert passed.wait(WAIT_S)
    outcome = queued()  # the caller gives up while its call waits
    assert (
        isinstance(outcome, grpc.RpcError) and outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    )
    registry = node.server.metrics.registry

    def ended(code: str) -> float:
        labels = {"method": ADMIN + "RotateKeys", "code": code}
        return registry.get_sample_value("tierstore_requests_total", labels) or 0.0

    go.set()
    codes = grpc.StatusCode.__members__
    wait_until(lambda: sum(map(ended, codes)) == 1, "the queued rotation's handler to end")
    assert rotations == []
    assert ended("FAILED_PRECONDITION") == 1


def revoked_during(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, node: RunningServer, token: str
) -> None:
    """Revoke ``token`` while ``owner.name`` (a method) runs, once it has done its work."""
    real = getattr(owner, name)

    def revoking(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        revoke(node, token)
        return result

    monkeypatch.setattr(owner, name, revoking)


def test_a_read_whose_token_was_revoked_while_its_shard_was_opened_gets_no_data_key(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opening unwraps the data key (a KMS's network call, say); the header carrying it
    # was sent on the check made before.
    node.store.put("vault", "v", payload(9000))
    reader = node.token("reader", ("vault", Role.READER))
    revoked_during(monkeypatch, node.store, "open_sealed", node, reader)
    received: list[Any] = []
    request = shards_pb2.GetShardRequest(dataset="vault", shard="v")
    with pytest.raises(grpc.RpcError) as refused:
        invoke(node.channel(), SHARDS + "GetShard", request, reader, received=received)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert received == []


def test_a_read_whose_token_was_revoked_while_a_frame_was_fetched_gets_no_frame(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.store.put("vault", "v", payload(9000))
    reader = node.token("reader", ("vault", Role.READER))
    frames = SealedRead.frames

    def revoking(self: SealedRead, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in frames(self, *args, **kwargs):
            revoke(node, reader)  # while the frame was fetched (from the archive, say)
            yield item

    monkeypatch.setattr(SealedRead, "frames", revoking)
    received: list[Any] = []
    request = shards_pb2.GetShardRequest(dataset="vault", shard="v")
    with pytest.raises(grpc.RpcError) as refused:
        invoke(node.channel(), SHARDS + "GetShard", request, reader, received=received)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [message.WhichOneof("item") for message in received] == ["header"]


def test_a_data_key_grant_whose_token_was_revoked_during_the_unwrap_is_refused(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.store.put("vault", "v", payload(9000))
    reader = node.token("reader", ("vault", Role.READER))
    generation = node.store.stat("vault", "v").generation
    revoked_during(monkeypatch, LocalReadService, "data_key", node, reader)
    request = shards_pb2.GrantDataKeyRequest(dataset="vault", shard="v", generation=generation)
    with pytest.raises(grpc.RpcError) as refused:
        invoke(node.channel(), SHARDS + "GrantDataKey", request, reader)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
