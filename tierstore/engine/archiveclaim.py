"""Which node an archive prefix belongs to: ``_node.json``, beside the datasets' objects.

Two nodes on one archive prefix each delete the generations the other overwrote (its
shards then fail ``DATA_LOSS``), and each uploads what the other's catalog never
learns of. The way into that is an operator's slip, not an attack: a node thought
lost starting again after its hot tier was rebuilt elsewhere from the archive, or a
second node given the first one's archive settings. So a node's start claims the
archive for its hot tier (a random id kept in the hot tier's catalog, made at its
first claim: a copy of the hot tier is the same node, a rebuilt one a new node) and
refuses an archive another hot tier claimed. A new hot tier started with ``tierstore
serve --rebuild-from-archive`` takes it over: it replaces the node that had it.
Nothing else does (``--archive-lost`` neither: an archive lost for good lost its
claim too): a hot tier whose catalog is behind the archive's would number new
generations at keys the other node wrote.

The claim is checked as a node starts (once its archive answers), and read again
while it serves (:mod:`tierstore.cli.claimwatch`): a node still running when another
takes its archive over holds its journal once it sees that. Two first starts at the
same moment can both claim it. It is not sealed: it guards against a slip, and
whoever can write the bucket can delete the archive anyway.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tierstore.errors import FailedPrecondition
from tierstore.tiers.base import Tier

__all__ = ["CLAIM_KEY", "UNREADABLE", "ArchiveClaim", "check_claim", "claim_archive", "read_claim"]

#: The claim's key under the archive prefix (no dataset name starts with "_").
CLAIM_KEY = "_node.json"


@dataclass(frozen=True, slots=True)
class ArchiveClaim:
    """A hot tier's claim on an archive prefix: its ``node`` id, and where and when it
    was made (``host``, ``data_dir``, ``claimed_at`` in seconds since the epoch), for
    the operator a refusal names them to."""

    node: str
    host: str
    data_dir: str
    claimed_at: float

    @classmethod
    def for_this_host(cls, node: str, data_dir: Path) -> ArchiveClaim:
        return cls(node, socket.gethostname(), str(data_dir.resolve()), time.time())

    def encode(self) -> bytes:
        return json.dumps({"format": 1, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> ArchiveClaim | None:
        """The claim in ``raw``, or None when it is not one this release reads (another
        format, or damaged): a node that takes the archive over replaces such a claim,
        and any other is refused it."""
        try:
            fields = json.loads(bytes(raw))
            if not isinstance(fields, dict) or fields.get("format") != 1:
                return None
            node, claimed_at = fields["node"], float(fields.get("claimed_at", 0.0))
        except (ValueError, TypeError, KeyError, OverflowError):
            return None
        if not isinstance(node, str) or not node:
            return None
        if not 0 <= claimed_at < 1e11:  # within time.gmtime's reach
            claimed_at = 0.0
        # Fields a later release adds are passed over: only the node id decides.
        return cls(node, str(fields.get("host", "?")), str(fields.get("data_dir", "?")), claimed_at)

    def describe(self) -> str:
        if self is UNREADABLE:
            return "a claim this release cannot read"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.claimed_at))
        return (
            f"node {self.node} (data directory {self.data_dir} on host {self.host}, since {when})"
        )


#: Stands for a claim this release cannot read (no node's id is empty).
UNREADABLE = ArchiveClaim("", "?", "?", 0.0)


def read_claim(archive: Tier) -> ArchiveClaim | None:
    """The claim on ``archive`` (:data:`UNREADABLE` for one this release cannot read),
    None when there is none. Raises ArchiveUnavailable when the archive cannot be read."""
    raw = archive.get(CLAIM_KEY)
    if raw is None:
        return None
    return ArchiveClaim.decode(raw) or UNREADABLE


def check_claim(archive: Tier, mine: ArchiveClaim, *, take_over: bool) -> ArchiveClaim | None:
    """The claim another node holds on ``archive`` that this one (``mine``: its node id,
    host and data directory) may take over (``take_over``); None when it is unclaimed
    or this node's.

    Raises FailedPrecondition, naming the other node, when another node's claim (or
    one this release cannot read) is there and ``take_over`` is false; ArchiveUnavailable
    when the archive cannot be read."""
    theirs = read_claim(archive)
    if theirs is None or theirs.node == mine.node:
        return None
    if not take_over:
        raise FailedPrecondition(_refusal(theirs, mine))
    return theirs


def _refusal(theirs: ArchiveClaim, mine: ArchiveClaim) -> str:
    nothing_changed = f"Nothing was changed (the claim is {CLAIM_KEY} under the archive prefix)"
    if (theirs.host, theirs.data_dir) == (mine.host, mine.data_dir):
        # Most likely not another node: this data directory's hot tier is not the one
        # that claimed the archive (a review's hot/, linked into a tmpfs, was gone after
        # a reboot, and it was told of "another node" and "a new data directory"). But
        # a host name and a path are not unique (a pod of the same name in another
        # cluster, say), so the way out is given with its condition.
        return (
            f"the archive was claimed by a hot tier at this data directory's path on a "
            f"host of this name ({theirs.describe()}), and the hot tier here is not that "
            f"one. Not starting: this one's catalog does not hold what that one wrote. If "
            f"the hot tier of {mine.data_dir} was lost (or replaced), and no other node of "
            "this host name and path (a pod of another cluster, say) serves this "
            "archive, start again with --rebuild-from-archive on this data directory: "
            "the hot tier it rebuilds takes the archive over. Otherwise give this node an "
            "archive prefix of its own: two nodes on one archive prefix delete each "
            "other's overwritten generations. " + nothing_changed
        )
    return (
        f"the archive belongs to another node's hot tier: {theirs.describe()}. Not "
        "starting: two nodes on one archive prefix delete each other's overwritten "
        "generations (their shards then fail DATA_LOSS). Give this node an archive "
        "prefix of its own; or, if that node is stopped for good and this one is to "
        "carry on its archive, start this one on a new, empty data directory (with "
        "this one's backup files) with --rebuild-from-archive: this hot tier's "
        "catalog does not hold what that node wrote. " + nothing_changed
    )


def claim_archive(archive: Tier, mine: ArchiveClaim, *, take_over: bool) -> ArchiveClaim | None:
    """:func:`check_claim`, then make ``archive`` this node's (``mine``, written again
    at each start: the claim names where and when the node last started). Returns
    the claim of the node it was taken over from, or None."""
    theirs = check_claim(archive, mine, take_over=take_over)
    archive.put(CLAIM_KEY, mine.encode())
    return theirs
