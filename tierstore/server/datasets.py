"""DatasetService: thin handlers that check the caller, call the engine, and pack results."""

from __future__ import annotations

import logging
import sys
import threading

import grpc

from tierstore.engine.store import Store
from tierstore.errors import InvalidArgument
from tierstore.naming import validate_dataset_name
from tierstore.server.archivecalls import ArchiveCalls
from tierstore.server.authz import authorize, visible
from tierstore.server.rpc import caller, handler, note_change, refuse_if_caller_gone
from tierstore.server.tokens import TokenStore
from tierstore.types import DatasetSettings
from tierstore.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc
from tierstore.wire.convert import (
    dataset_settings_from_pb,
    dataset_settings_to_pb,
    durability_from_pb,
)
from tierstore.wire.limits import (
    ENTRY_OVERHEAD,
    MAX_MESSAGE_BYTES,
    MAX_PAGE_ENTRIES,
    answer_budget,
)

__all__ = ["DatasetServicer"]

_SERVICE = "/tierstore.v1.DatasetService/"

log = logging.getLogger(__name__)


def _dataset(name: str, settings: DatasetSettings) -> common_pb2.Dataset:
    return common_pb2.Dataset(name=name, settings=dataset_settings_to_pb(settings))


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    """Create, read, list, update and delete datasets. Deleting one removes every
    token's grant on it from ``tokens`` (when given). A page of datasets is kept to
    :func:`answer_budget` of ``message_bytes``."""

    def __init__(
        self,
        store: Store,
        tokens: TokenStore | None = None,
        archive_calls: ArchiveCalls | None = None,
        message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._store = store
        self._page_bytes = answer_budget(message_bytes)
        self._tokens = tokens
        self._deleting = threading.Lock()
        #: bounds the calls that may wait on the archive (see ShardServicer)
        self._archive_calls = archive_calls or ArchiveCalls.for_workers(32)

    def _check(self, method: str, name: str) -> str:
        validate_dataset_name(name)
        authorize(caller(), _SERVICE + method, name)
        return name

    @handler
    def CreateDataset(
        self, request: datasets_pb2.CreateDatasetRequest, context: grpc.ServicerContext
    ) -> common_pb2.Dataset:
        name = self._check("CreateDataset", request.name)
        settings = dataset_settings_from_pb(request.settings)
        self._store.create_dataset(name, settings)
        return _dataset(name, settings)

    @handler
    def GetDataset(
        self, request: datasets_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> common_pb2.Dataset:
        name = self._check("GetDataset", request.name)
        return _dataset(name, self._store.get_dataset(name))

    @handler
    def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.ListDatasetsResponse:
        principal = caller()
        authorize(principal, _SERVICE + "ListDatasets", None)
        if request.start_after:
            validate_dataset_name(request.start_after)
        start_after = request.start_after or None

        def shown(name: str) -> bool:
            return visible(principal, name)

        if not request.limit:
            # As a client before pages asks (and takes the one answer for all): every
            # dataset at once, not silently its first page.
            everything, _ = self._store.dataset_page(start_after, sys.maxsize, shown=shown)
            return datasets_pb2.ListDatasetsResponse(
                datasets=[_dataset(name, settings) for name, settings in everything]
            )
        entries: list[common_pb2.Dataset] = []

        def size_of(entry: tuple[str, DatasetSettings]) -> int:
            message = _dataset(*entry)
            entries.append(message)
            return int(message.ByteSize()) + ENTRY_OVERHEAD

        # Paged by bytes as well: each entry holds its dataset's Arrow schema.
        page, next_start = self._store.dataset_page(
            start_after,
            min(request.limit, MAX_PAGE_ENTRIES),
            shown=shown,
            max_bytes=self._page_bytes,
            size_of=size_of,
        )
        return datasets_pb2.ListDatasetsResponse(
            datasets=entries[: len(page)], next_start_after=next_start or ""
        )

    @handler
    def UpdateDataset(
        self, request: datasets_pb2.UpdateDatasetRequest, context: grpc.ServicerContext
    ) -> common_pb2.Dataset:
        name = self._check("UpdateDataset", request.name)
        durability = None
        if request.HasField("durability"):
            # Unspecified means the default where a dataset is made; set here, it would
            # turn a write-through dataset write-back, a client that fills every optional
            # field with its zero value weakening durability unasked.
            if request.durability == common_pb2.DURABILITY_UNSPECIFIED:
                raise InvalidArgument(
                    "durability is set but unspecified: give DURABILITY_WRITE_BACK or "
                    "DURABILITY_WRITE_THROUGH to change it, or leave the field unset"
                )
            durability = durability_from_pb(request.durability)
        quota = request.hot_quota_bytes if request.HasField("hot_quota_bytes") else None
        policy = request.policy if request.HasField("policy") else None
        backlog_quota = (
            request.backlog_quota_bytes if request.HasField("backlog_quota_bytes") else None
        )

        def still_allowed() -> None:
            # Again once the update has the store's lock (it waits for another's policy
            # change): a token revoked meanwhile, or a grant gone with a dataset of the
            # name deleted meanwhile (perhaps made again for someone else), changes
            # nothing.
            self._check("UpdateDataset", name)

        settings = self._store.update_dataset(
            name,
            durability,
            quota,
            policy,
            backlog_quota_bytes=backlog_quota,
            still_allowed=still_allowed,
        )
        asked = {
            "durability": None if durability is None else settings.durability.value,
            "hot_quota_bytes": quota,
            "policy": None if policy is None else settings.policy,
            "backlog_quota_bytes": backlog_quota,
        }
        note_change(" ".join(f"{key}={value}" for key, value in asked.items() if value is not None))
        return _dataset(name, settings)

    @handler
    def DeleteDataset(
        self, request: datasets_pb2.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.DeleteDatasetResponse:
        name = self._check("DeleteDataset", request.name)
        # Grants go first, and come back only if the delete did not happen (it holds
        # shards, say): should either step fail, no token is left with a grant on a
        # dataset that is gone, for a later one of the name to honour. Deletes run one
        # at a time, so another delete cannot land between a failure and the restore.
        # Every delete takes an archive slot: a write-through one waits on the archive,
        # and the others wait behind it for the lock.
        with self._archive_calls.slot(f"a delete of dataset {name}", caller().name), self._deleting:
            # Again, after the wait: a token revoked meanwhile, or a grant gone with a
            # dataset of the name deleted meanwhile (and perhaps made again for someone
            # else), deletes nothing.
            self._check("DeleteDataset", name)
            if not request.force:
                # Refused before the grants go: meanwhile every call of a token with a
                # grant on it was told the dataset did not exist, and its readers,
                # writers and DataLoaders failed, for a delete that changed nothing.
                self._store.check_deletable(name)
            removed = self._tokens.remove_grants_on(name) if self._tokens is not None else {}
            deleted = False

            def after_commit() -> None:
                nonlocal deleted
                deleted = True
                if self._tokens is not None:  # made while the delete ran: it found it
                    removed.update(self._tokens.remove_grants_on(name))

            try:
                self._store.delete_dataset(
                    name,
                    force=request.force,
                    committed=after_commit,
                    admit=lambda _: refuse_if_caller_gone(context, f"the delete of {name}"),
                )
            except BaseException:
                # Only a delete that did not happen gives the grants back: one the archive
                # has not done yet (write-through) is done here, and a dataset of the
                # name made since is someone else's.
                if self._tokens is not None and not deleted:
                    self._tokens.restore_grants(removed)
                raise
        note_change(
            ("deleted with force" if request.force else "deleted")
            + (f"; grants on it removed from tokens {','.join(sorted(removed))}" if removed else "")
        )
        if removed:
            log.info(
                "dataset %s deleted: grants on it removed from tokens %s", name, sorted(removed)
            )
        # Revoked and run-out tokens lose their grants too (they are listed), but only
        # the live ones are news to the caller.
        live = self._tokens.count_live(removed) if self._tokens is not None else 0
        return datasets_pb2.DeleteDatasetResponse(grants_removed=live)
