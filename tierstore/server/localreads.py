"""Local reads, server side: who may map the hot tier, and what they are told.

A reader on this host may read hot frames in place from the LMDB environment
(docs/local-reads.md). After the rule table allowed the call (reader role on the
dataset), :meth:`LocalReadService.open_local` grants the environment's location for
``grant_ttl_s`` seconds — never past the caller's token expiry — and refuses with
:class:`FailedPrecondition` when local reads are turned off here, when the caller
did not come over loopback or a unix socket, or when this server cannot tell its
host identity. The grant is a convenience, not the security boundary for plaintext
data: whoever may open the file reads it. What it bounds is a well-behaved client
(a revoked token stops its local reads within one lifetime) — and encrypted data,
whose keys come one generation at a time from :meth:`LocalReadService.data_key`,
each after authorization.

Grants keep back half of LMDB's reader table, which the server shares with every
local reader on this host: while more than half of its slots are taken, a grant is
refused (:class:`ResourceExhausted`) and the reader goes through the service, so the
server's own reads always find a slot.

Reads served in place reach the engine through :meth:`LocalReadService.record`, so
statistics, hit counts and placement policies see them like any other read — from
callers who could have been granted local reads only
(:meth:`LocalReadService.check_local_caller`).

Thread safety: safe to share between threads.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import time
import urllib.parse

from tierstore.engine.localreads import DataKey, LocalReadCount
from tierstore.engine.store import Store
from tierstore.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tierstore.server.authz import Principal
from tierstore.wire.local import HostIdentity, LocalGrant, this_host

__all__ = ["DEFAULT_GRANT_TTL_S", "LocalReadService", "check_grant_ttl", "peer_is_local"]

log = logging.getLogger(__name__)

#: How long a local-read grant holds before the client asks again.
DEFAULT_GRANT_TTL_S = 60.0


def peer_is_local(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``,
    ``unix:/run/ts.sock``) is this host: a loopback address or a unix socket."""
    # gRPC writes peers as URIs: recent versions percent-encode an IPv6 address's
    # brackets (``ipv6:%5B::1%5D:5000``).
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme in ("unix", "unix-abstract"):
        return True
    if scheme not in ("ipv4", "ipv6"):
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return address.is_loopback


def check_grant_ttl(seconds: float, name: str = "grant_ttl_s") -> None:
    """InvalidArgument, naming ``name`` (the setting or flag), unless ``seconds`` is a
    grant's lifetime this node accepts: more than 0, at most a day."""
    if not (math.isfinite(seconds) and 0 < seconds <= 86400):
        raise InvalidArgument(
            f"{name} must be more than 0 and at most 86400 seconds, not {seconds}"
        )


class LocalReadService:
    """Grants, data keys and read reports for the local readers of one store."""

    def __init__(
        self,
        store: Store,
        *,
        enabled: bool = True,
        grant_ttl_s: float = DEFAULT_GRANT_TTL_S,
        host: HostIdentity | None = None,
    ) -> None:
        check_grant_ttl(grant_ttl_s)
        self._store = store
        self.enabled = enabled
        self.grant_ttl_s = grant_ttl_s
        self._host = host or this_host()

    def open_local(self, principal: Principal, peer: str, dataset: str) -> LocalGrant:
        """The grant for ``principal`` (already authorized) to read ``dataset`` in place.

        Raises DatasetNotFound; FailedPrecondition when local reads are off here, the
        peer is not on this host, or this host's identity is unknown; ResourceExhausted
        while more than half of the reader table is taken (the reader then goes through
        the service, and asks again later).
        """
        self.check_local_caller(peer, dataset)
        if not self._host.known:
            raise FailedPrecondition("this server cannot tell its host identity (no /proc)")
        ttl_s = self.grant_ttl_s
        if principal.expires_at:
            # Never past the credential: an expired token ends local reads with it.
            ttl_s = min(ttl_s, max(principal.expires_at - time.time(), 0.001))
        self._keep_reader_reserve()
        location = self._store.local_reads.location()
        return LocalGrant(
            path=location.path,
            map_size=location.map_size,
            device=location.device,
            inode=location.inode,
            host=self._host,
            server_pid=os.getpid(),
            ttl_s=ttl_s,
        )

    def data_key(self, dataset: str, shard: str, generation: int) -> DataKey:
        """See :meth:`tierstore.engine.localreads.LocalReadSupport.data_key`; also
        FailedPrecondition when local reads are off here (GetShard still hands keys out)."""
        if not self.enabled:
            raise FailedPrecondition("local reads are turned off on this server")
        return self._store.local_reads.data_key(dataset, shard, generation)

    def record(self, dataset: str, reads: list[LocalReadCount]) -> int:
        """See :meth:`tierstore.engine.localreads.LocalReadSupport.record`; the reporter
        was checked first (:meth:`check_local_caller`)."""
        return self._store.local_reads.record(dataset, reads)

    def check_local_caller(self, peer: str, dataset: str) -> None:
        """Refuse a caller no grant could be made for: :meth:`open_local` checks it, and
        a read report is checked with it before it is unpacked, so such a report costs
        nothing more. Raises DatasetNotFound, and FailedPrecondition when local reads
        are off here or the peer is not on this host."""
        self._store.get_dataset(dataset)  # a missing dataset answers as missing
        if not self.enabled:
            raise FailedPrecondition("local reads are turned off on this server")
        if not peer_is_local(peer):
            raise FailedPrecondition("local reads are only for callers on the server's host")

    def _keep_reader_reserve(self) -> None:
        """Refuse a grant (ResourceExhausted) while more than half of the reader table
        is taken.

        Slots of dead processes are freed first: at most every few seconds, and always
        before refusing, so the slots of DataLoader workers that ended never cost a
        grant. The table is looked at when a grant is made: readers granted earlier may
        take more slots until their grants run out (one grant lifetime)."""
        support = self._store.local_reads
        cleared = support.clear_stale_readers()
        table = support.reader_table()
        if table.used * 2 > table.size:
            cleared += support.clear_stale_readers(force=True)
            table = support.reader_table()
        if cleared:
            log.info("freed %d LMDB reader slots of dead local readers", cleared)
        if table.used * 2 > table.size:
            raise ResourceExhausted(
                f"{table.used} of the hot tier's {table.size} reader slots are taken: local "
                "reads are granted while at most half are, the rest is kept for the server; "
                "read through the service meanwhile"
            )
