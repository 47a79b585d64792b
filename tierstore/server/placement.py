"""PlacementService: pin, unpin, prefetch, evict, and tier statistics."""

from __future__ import annotations

import grpc

from tierstore.engine.store import Store
from tierstore.errors import InvalidArgument
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.server.authz import authorize, visible
from tierstore.server.rpc import caller, handler
from tierstore.v1 import placement_pb2, placement_pb2_grpc

__all__ = ["PlacementServicer"]

_SERVICE = "/tierstore.v1.PlacementService/"
_MAX_PREFETCH = 100_000


class PlacementServicer(placement_pb2_grpc.PlacementServiceServicer):
    """Steering shards between the tiers."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _check_shard(self, method: str, request: placement_pb2.ShardRef) -> None:
        validate_dataset_name(request.dataset)
        validate_shard_name(request.shard)
        authorize(caller(), _SERVICE + method, request.dataset)

    @handler
    def Pin(
        self, request: placement_pb2.ShardRef, context: grpc.ServicerContext
    ) -> placement_pb2.PlacementResponse:
        self._check_shard("Pin", request)
        return placement_pb2.PlacementResponse(
            bytes=self._store.pin(request.dataset, request.shard)
        )

    @handler
    def Unpin(
        self, request: placement_pb2.ShardRef, context: grpc.ServicerContext
    ) -> placement_pb2.PlacementResponse:
        self._check_shard("Unpin", request)
        self._store.unpin(request.dataset, request.shard)
        return placement_pb2.PlacementResponse()

    @handler
    def Evict(
        self, request: placement_pb2.ShardRef, context: grpc.ServicerContext
    ) -> placement_pb2.PlacementResponse:
        self._check_shard("Evict", request)
        freed = self._store.evict(request.dataset, request.shard)
        return placement_pb2.PlacementResponse(bytes=freed)

    @handler
    def Prefetch(
        self, request: placement_pb2.PrefetchRequest, context: grpc.ServicerContext
    ) -> placement_pb2.PrefetchResponse:
        validate_dataset_name(request.dataset)
        authorize(caller(), _SERVICE + "Prefetch", request.dataset)
        if len(request.shards) > _MAX_PREFETCH:
            raise InvalidArgument(f"at most {_MAX_PREFETCH} shards per prefetch")
        for name in request.shards:
            validate_shard_name(name)
        queued = self._store.prefetch(request.dataset, list(request.shards))
        return placement_pb2.PrefetchResponse(queued=queued)

    @handler
    def GetTierStats(
        self, request: placement_pb2.GetTierStatsRequest, context: grpc.ServicerContext
    ) -> placement_pb2.TierStats:
        principal = caller()
        if request.dataset:
            validate_dataset_name(request.dataset)
        authorize(principal, _SERVICE + "GetTierStats", request.dataset or None)
        stats = self._store.stats()
        names = (
            [request.dataset]
            if request.dataset
            else [name for name, _ in self._store.list_datasets() if visible(principal, name)]
        )
        return placement_pb2.TierStats(
            hot_bytes=stats.hot_bytes,
            hot_capacity_bytes=stats.hot_capacity_bytes,
            backlog_bytes=stats.backlog_bytes,
            journal_entries=stats.journal_entries,
            datasets=[
                placement_pb2.DatasetStats(
                    dataset=name,
                    shards=usage.shards,
                    bytes=usage.bytes,
                    hot_shards=usage.hot_shards,
                    hot_bytes=usage.hot_bytes,
                    hits=usage.hits,
                    misses=usage.misses,
                )
                for name in names
                for usage in (self._store.dataset_usage(name),)
            ],
        )
