"""Whether the archive answers: the last request of any kind that failed for want of it.

The mover reports its own failures (:meth:`Mover.archive_failure
<tierstore.engine.mover.Mover.archive_failure>`), but with nothing to upload it makes no
request, and an archive gone away showed nowhere while cold reads and promotions failed
against it. Every archive request of a store goes through a :class:`WatchedTier`, which
tells its :class:`ArchiveWatch` of each that raised :class:`ArchiveUnavailable` (the
archive unreachable, answering 5xx through its retries, timing out, refusing the keys)
and of each that returned. Stats and /metrics show the last failure, with when it
happened, until a later request of any kind returns: the archive answers again.

A missing object or a damaged one is an answer (the tier returns None, or bytes the
caller finds wrong: DataLoss of one shard), not an outage. A request costs a clock read
and an uncontended lock. An idle node makes one of its own (:class:`ArchiveProbe`):
with no request begun for ``archive_probe_s``, it asks for one dataset's settings
object. An observability review froze the archive of an idle node for a minute with
nothing shown, and once it answered again, a failure stayed shown until the next cold
read.

An archived shard's frames object found missing (:func:`report_missing`) is kept apart,
for good (until the store is opened again): an archive that lost objects it
acknowledged (its disk wiped, the bucket made again empty) may have lost the only copy
of other shards the catalog takes for archived, so eviction, which drops the hot copy
of archived shards, is held from then on (:meth:`ArchiveWatch.missing_objects`). A
review wiped a running node's archive: cold reads failed DataLoss, stats said nothing,
and an eviction dropped a hot shard whose only copy it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tierstore.engine.records import ShardRecord
from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.base import Tier
from tierstore.tiers.forwarding import ForwardingTier

__all__ = ["ArchiveProbe", "ArchiveWatch", "WatchedTier", "report_missing"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)


#: how many missing generations are told apart; beyond, "or more"
_MISSING_COUNTED = 10_000


class ArchiveWatch:
    """The last archive request that failed for want of the archive, until one that
    began after it answers. Thread-safe.

    Requests are ordered by when they began, not when they ended: one that began
    before an outage and answers after a failure was recorded does not clear it (the
    archive may have failed since it was sent), and one that hung through an outage
    and fails after newer requests have answered is not recorded (the archive answers
    again; on an idle node it stayed shown until the next request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: the failure's message, when it was recorded (``time.time()``) and when its
        #: request began (``time.monotonic()``); None while the archive answers.
        self._failure: tuple[str, float, float] | None = None
        #: when the latest-begun request that answered began (``time.monotonic()``)
        self._answered_began = float("-inf")
        #: when the latest request of any outcome began (``time.monotonic()``); made
        #: counts as one, so a probe waits its interval after a store opens
        self._last_began = time.monotonic()
        #: why the first archived shard's object found missing was, and the generations
        #: (dataset, generation) found so (a shard read again is counted once)
        self._missing: str | None = None
        self._missing_generations: set[tuple[str, int]] = set()
        #: whether a record is its shard's current generation, archived (set by the
        #: store): an older generation's object deleted after an overwrite is no loss
        self.still_archived: Callable[[ShardRecord], bool] = lambda record: True

    def began(self, began: float) -> None:
        """A request began at ``began`` (``time.monotonic()``)."""
        with self._lock:
            self._last_began = max(self._last_began, began)

    def quiet_for(self) -> float:
        """Seconds since the latest archive request began (or the watch was made)."""
        with self._lock:
            return time.monotonic() - self._last_began

    def failed(self, error: ArchiveUnavailable, began: float) -> None:
        """A request begun at ``began`` (``time.monotonic()``) raised ``error``: shown
        until a request begun later answers; not if one begun later has answered."""
        with self._lock:
            if began < self._answered_began:
                return
            self._failure = (str(error), time.time(), began)

    def answered(self, began: float) -> None:
        """A request begun at ``began`` returned: the archive answers, and a failure of
        a request begun before it is over."""
        with self._lock:
            if began > self._answered_began:
                self._answered_began = began
            if self._failure is not None and began > self._failure[2]:
                self._failure = None

    def object_missing(self, record: ShardRecord, message: str) -> None:
        """The frames object of ``record``'s generation was found missing (``message``
        says which): unless the generation is no longer its shard's current archived
        one (overwritten or deleted meanwhile, its objects deleted after it), eviction
        is held from now on (:meth:`missing_objects`)."""
        if not self.still_archived(record):
            return
        with self._lock:
            self._missing = self._missing or message
            if len(self._missing_generations) < _MISSING_COUNTED:
                self._missing_generations.add((record.dataset, record.generation))

    def missing_objects(self) -> str | None:
        """Why eviction is held (archived shards' objects found missing), or None."""
        with self._lock:
            first, count = self._missing, len(self._missing_generations)
        if first is None:
            return None
        counted = f"{count:,}" if count < _MISSING_COUNTED else f"{count:,} or more"
        return (
            f"{counted} archived shard object(s) found missing in the archive ({first}): it "
            "may have lost others the catalog takes for archived, so no hot shard is "
            "evicted until the node starts again (a start checks the archive; "
            "--archive-lost archives the hot tier again if it lost them for good)"
        )

    def failure(self) -> str | None:
        """The last failure with when it happened, or None when the archive answered
        since (or never failed). May name a shard's archive object: for callers with a
        role on every dataset only."""
        with self._lock:
            failure = self._failure
        if failure is None:
            return None
        message, at, _ = failure
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        ago = max(time.time() - at, 0.0)
        return f"{message} (last archive request failed at {when}, {ago:.0f} s ago)"


class WatchedTier(ForwardingTier):
    """Delegates to ``inner``, telling ``watch`` of each request's outcome (composition,
    no I/O of its own)."""

    def __init__(self, inner: Tier, watch: ArchiveWatch) -> None:
        super().__init__(inner)
        self._watch = watch

    def _request(self, operation: str, call: Callable[[], _T]) -> _T:
        began = time.monotonic()
        self._watch.began(began)
        try:
            result = call()
        except ArchiveUnavailable as exc:
            self._watch.failed(exc, began)
            raise
        self._watch.answered(began)
        return result


def report_missing(archive: Tier, record: ShardRecord, message: str) -> None:
    """Tell the watch of ``archive``, if it is a :class:`WatchedTier`, that the frames
    object of ``record``'s generation is missing (``message``): see
    :meth:`ArchiveWatch.object_missing`."""
    if isinstance(archive, WatchedTier):
        archive._watch.object_missing(record, message)


class ArchiveProbe:
    """A daemon thread that, whenever no archive request has begun for ``interval_s``,
    makes one through the watched tier: the ``stat`` of an object the node wrote
    (``key()``, a dataset's settings object; None: no dataset, nothing to ask). The
    node's own object, not the bucket: credentials allowed only the node's prefix
    answer it, and a missing one is an answer too. What it raises is the watch's to
    show (ArchiveUnavailable) or ignored: it is only a question."""

    def __init__(
        self,
        archive: WatchedTier,
        watch: ArchiveWatch,
        key: Callable[[], str | None],
        interval_s: float,
    ) -> None:
        self._archive, self._watch, self._key = archive, watch, key
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tierstore-archive-probe", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop asking; returns without waiting for a question under way (its answer
        goes to the watch, which outlives it)."""
        self._stop.set()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            quiet = self._watch.quiet_for()
            if quiet < self._interval_s:  # a request began since: it answers for it
                delay = self._interval_s - quiet
                continue
            delay = self._interval_s
            try:
                key = self._key()
                if key is not None:
                    self._archive.stat(key)
            except Exception:  # the watch has what matters; the next round asks again
                log.debug("the archive probe failed", exc_info=True)
