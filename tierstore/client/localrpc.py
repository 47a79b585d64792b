"""The local read path's three calls, made over a client's channel (token, deadline,
retries and error mapping as every other call of the client)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tierstore.engine.localreads import DataKey, LocalReadCount
from tierstore.v1 import shards_pb2, shards_pb2_grpc
from tierstore.wire.local import LocalGrant, grant_from_pb, read_counts_to_pb

__all__ = ["GrpcLocalReadRpc"]

#: ``call(method, request, idempotent=..., timeout_s=None, retry_unsent=False)``: the
#: client's call plumbing.
Call = Callable[..., Any]
#: A grant's or a data key's deadline (at most the client's own ``timeout_s``): a short
#: call on the way to a read that the service makes if it fails.
_GRANT_TIMEOUT_S = 5.0
#: A report's deadline (at most the client's own ``timeout_s``): it is best effort.
_REPORT_TIMEOUT_S = 5.0
#: The last report's, at close: a node that stopped answering held a close() for 5 s.
_CLOSING_REPORT_TIMEOUT_S = 1.0


class GrpcLocalReadRpc:
    """:class:`~tierstore.client.local.LocalReadRpc` over gRPC. Thread-safe."""

    def __init__(
        self,
        stub: Callable[[], shards_pb2_grpc.ShardServiceStub],
        call: Call,
        timeout_s: Callable[[], float],
    ) -> None:
        """``timeout_s``: the client's own deadline for a call, now."""
        self._stub = stub
        self._call = call
        self._timeout_s = timeout_s

    # These two are asked once, not retried, under a short deadline: a read whose grant
    # or key fails is the service's to make, and that read retries an unreachable server
    # itself (retried here first, it waited twice as long before its Unavailable; with
    # the client's own deadline, a node that stopped answering held a get for timeout_s
    # before the service read's stream_timeout_s).

    def open_local(self, dataset: str) -> LocalGrant:
        reply = self._call(
            self._stub().OpenLocal,
            shards_pb2.OpenLocalRequest(dataset=dataset),
            idempotent=False,
            timeout_s=self._grant_timeout_s(),
            retry_unsent=False,
        )
        return grant_from_pb(reply)

    def grant_data_key(self, dataset: str, shard: str, generation: int) -> DataKey:
        request = shards_pb2.GrantDataKeyRequest(
            dataset=dataset, shard=shard, generation=generation
        )
        reply = self._call(
            self._stub().GrantDataKey,
            request,
            idempotent=False,
            timeout_s=self._grant_timeout_s(),
            retry_unsent=False,
        )
        return DataKey(reply.data_key, reply.nonce_prefix)

    def _grant_timeout_s(self) -> float:
        return min(_GRANT_TIMEOUT_S, self._timeout_s())

    def report(self, dataset: str, counts: list[LocalReadCount], wait_for_ready: bool) -> None:
        # Not idempotent: a retried report that had arrived would count reads twice; but
        # one that could not leave the client (its channel still connecting) is tried
        # again, as long as an idempotent call would be (not gRPC's wait_for_ready: with
        # the node down that held a stat() up for the whole deadline, then its own
        # retries, 6.5 s). A short deadline, never past the client's own: a report is
        # best effort, and the calls that flush first (stat, the plan calls) and
        # close() wait for it. The last one, at close (no wait_for_ready), has less.
        limit = _REPORT_TIMEOUT_S if wait_for_ready else _CLOSING_REPORT_TIMEOUT_S
        self._call(
            self._stub().ReportLocalReads,
            read_counts_to_pb(dataset, counts),
            idempotent=False,
            timeout_s=min(limit, self._timeout_s()),
            retry_unsent=wait_for_ready,
        )
