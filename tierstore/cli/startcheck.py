"""A node's start, checked: its store opened and its keys, and a hot tier the start
made, checked against the archive before it serves (``tierstore serve``).

A hot tier this start makes (the node is new, or its hot tier was lost) carries a
durable mark (:data:`UNCHECKED_MARK`) from before LMDB makes it until the check has
passed, so a start killed in between (mid-rebuild, say) leaves the check to the
next start. The embedded archive's weed may exit during the start; its keeper starts
it again, and the start is tried again once it answers
(:func:`through_embedded_restarts`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from tierstore.cli.masterkeys import NodeKeys, check_keys_unwrap, check_node_keys
from tierstore.config import EngineSettings
from tierstore.engine.bootstrap import archive_s3_settings, open_store
from tierstore.engine.rebuild import NOT_OURS
from tierstore.engine.store import Store
from tierstore.errors import ArchiveUnavailable, FailedPrecondition
from tierstore.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from tierstore.tiers.seaweedfs import SeaweedServer

__all__ = [
    "ARCHIVE_PROBE_S",
    "EMBEDDED_START_WAIT_S",
    "UNCHECKED_MARK",
    "archive_silence",
    "check_a_new_hot_tier",
    "open_checked_store",
    "through_embedded_restarts",
]

log = logging.getLogger(__name__)

#: how long a start waits for its embedded archive to answer again when weed exited
#: during the start (its keeper starts it again) before the node refuses to start.
EMBEDDED_START_WAIT_S = 60.0

_T = TypeVar("_T")


#: how long a start with a hot tier of its own waits for the archive to answer one
#: request before it serves that hot tier (the keys are checked once the archive answers).
ARCHIVE_PROBE_S = 10.0

#: In the data directory while a new hot tier has not been checked against the archive.
UNCHECKED_MARK = "hot-tier.unchecked"


def open_checked_store(
    settings: EngineSettings,
    keys: NodeKeys,
    metrics: ServerMetrics,
    out: TextIO,
    unchecked: Path,
    *,
    rebuild_from_archive: bool,
    reseal_archive: bool,
    archive_lost: bool = False,
    accept_partial_rebuild: bool = False,
) -> tuple[Store, ArchiveUnavailable | None]:
    """Open the node's store (its mover not started) and check its keys, and a hot tier
    this start made, against the archive (with ``rebuild_from_archive``,
    ``accept_partial_rebuild``, ``reseal_archive`` and ``archive_lost`` as serve was
    given them); return it and,
    when the archive could not be reached but the node may serve its own hot tier
    meanwhile, why (refused with ``archive_lost``). On any error the store is closed
    again."""
    # A node that may serve its own hot tier without the archive asks it once, briefly,
    # first: one that takes connections and answers nothing held the start for each
    # call's time-outs and retries (minutes) before the node served.
    new_hot_tier = unchecked.exists()
    own_hot_tier = not (keys.created or new_hot_tier)
    archive_down = archive_silence(settings) if own_hot_tier else None
    # The mover starts only once the keys are checked: with the wrong ones it would
    # find every pending encrypted upload failing to unwrap.
    store = open_store(
        settings,
        observe_archive=metrics.observe_archive,
        keyring=keys.keyring,
        start_mover=False,
        prepare_archive=archive_down is None,
    )
    try:
        # Before a rebuild too: a created key believes no archived manifest.
        if archive_down is not None:
            check_keys_unwrap(keys, store, reseal_archive=reseal_archive)
        else:
            try:
                if not new_hot_tier:  # a rebuild takes the archive over (below)
                    # First: --archive-lost drops shards from the catalog on its word.
                    store.check_archive_claim()
                check_node_keys(
                    keys, store, reseal_archive=reseal_archive, archive_lost=archive_lost
                )
            except ArchiveUnavailable as unreachable:
                if not own_hot_tier:
                    raise  # nothing checked here yet: no serving without the archive
                archive_down = unreachable  # the node's own hot tier serves meanwhile
        if archive_down is not None and archive_lost:
            # Whether the archive lost the node's objects cannot be told without it.
            raise FailedPrecondition(
                f"--archive-lost needs the archive to answer, and it does not ({archive_down})"
            )
        if new_hot_tier:
            check_a_new_hot_tier(
                store,
                rebuild_from_archive,
                out,
                lost_keys=reseal_archive,
                accept_partial=accept_partial_rebuild,
            )
        if archive_down is None:
            archive_down = _claim_the_archive(
                store,
                out,
                take_over=new_hot_tier and (rebuild_from_archive or _rebuilt_unclaimed(store)),
                serve_meanwhile=own_hot_tier,
            )
        if new_hot_tier:
            unchecked.unlink()
    except BaseException:
        store.close()
        raise
    return store, archive_down


def _rebuilt_unclaimed(store: Store) -> bool:
    """Whether ``store``, a hot tier a start took for new, was filled by a rebuild that
    stopped before its claim: it holds datasets and has no node id. A node's own hot
    tier that came back (a device mounted again, a link's target restored) after a
    start took it for new has one (it claimed the archive before): it takes nothing
    over, and is refused an archive that another node, rebuilt meanwhile, claimed (a
    review's node took the archive back from the node that replaced it)."""
    return bool(store.list_datasets()) and not store.has_node_id()


def _claim_the_archive(
    store: Store, out: TextIO, *, take_over: bool, serve_meanwhile: bool
) -> ArchiveUnavailable | None:
    """Claim the archive for the node, last in its start, once nothing refused it,
    taking it over from another node with ``take_over`` (and saying so). A new hot
    tier takes it over when it was rebuilt from the archive (by this start, or by one
    stopped before the claim: its catalog then holds datasets), or with
    --rebuild-from-archive over an archive that held nothing to rebuild but a claim (a
    node that had no dataset). When the archive stopped answering meanwhile, a node
    that may serve its own hot tier (``serve_meanwhile``) gets why (it claims the
    archive once that answers: :class:`~tierstore.cli.masterkeys.DeferredKeyCheck`);
    any other start is refused (ArchiveUnavailable)."""
    try:
        taken_from = store.claim_archive(take_over=take_over)
    except ArchiveUnavailable as unreachable:
        if not serve_meanwhile:
            raise
        return unreachable
    if taken_from is not None:
        out.write(f"tierstore: this node took the archive over from {taken_from.describe()}\n")
        out.flush()
    # The archive is this node's: the uploads its killed runs left open go now (before,
    # they might have been another node's, in flight).
    store.mover.abort_left_behind_now()
    return None


def archive_silence(settings: EngineSettings) -> ArchiveUnavailable | None:
    """Why the archive of ``settings`` does not answer one request within
    :data:`ARCHIVE_PROBE_S` (a node's start then serves its hot tier at once), or None
    when it answers (anything: a refusal too, which the start's own calls then meet)."""
    if not settings.archive.endpoint_url:
        return None  # open_store says so
    from tierstore.tiers.s3 import S3Tier  # boto3 is heavy: import on use
    from tierstore.tiers.s3_retry import is_transient

    probe = S3Tier(
        archive_s3_settings(
            settings.archive,
            max_attempts=1,
            connect_timeout_s=ARCHIVE_PROBE_S,
            read_timeout_s=ARCHIVE_PROBE_S,
        )
    )
    try:
        probe.ensure_bucket()
    except ArchiveUnavailable as exc:
        if not is_transient(exc.__cause__ or exc):
            return None  # it answered
        log.warning("the archive is unreachable; serving the hot tier: %s", exc)
        return exc
    finally:
        probe.close()
    return None


def through_embedded_restarts(
    start: Callable[[], _T], embedded: SeaweedServer | None, stopping: threading.Event
) -> _T:
    """``start()``, tried again when it failed with ArchiveUnavailable because the
    embedded archive's weed exited meanwhile (its keeper starts it again): once weed
    answers again, for up to :data:`EMBEDDED_START_WAIT_S` from the first failure. A
    new node refused to start when weed died in its first second. An external archive,
    a weed that kept running, or a node told to stop (its weed stops with it) is
    refused at once."""
    deadline: float | None = None
    launches = embedded.launches if embedded is not None else 0
    while True:
        try:
            return start()
        except ArchiveUnavailable as exc:
            if embedded is None or (embedded.running and embedded.launches == launches):
                raise  # weed ran throughout: the failure is no restart's
            # Once weed was started again, any archive failure is tried again until
            # the deadline: a restarted weed answers S3 before its volume is back,
            # with 500s meanwhile.
            if deadline is None:
                deadline = time.monotonic() + EMBEDDED_START_WAIT_S
            left = deadline - time.monotonic()
            if left <= 0 or not embedded.wait_until_answering(left, until=stopping):
                raise
            log.warning(
                "the embedded archive exited during the start (%s); it answers again: "
                "starting over",
                exc,
            )


def check_a_new_hot_tier(
    store: Store, rebuild: bool, out: TextIO, *, lost_keys: bool, accept_partial: bool = False
) -> None:
    """For a hot tier made by this start (or by one that stopped before this check
    passed). Over an archive that holds objects, the hot tier was lost (or this node was
    given another node's archive): with ``rebuild``, rebuild the catalog from the
    archive (with ``lost_keys``, --reseal-archive, believing metadata the keys given now
    did not seal, for plaintext datasets only); without, refuse to start
    (FailedPrecondition), since writes accepted now would make the archive's shards
    unreachable. A rebuild that would leave out archive objects it does not believe is
    refused (FailedPrecondition, nothing changed) unless ``accept_partial``
    (--accept-partial-rebuild). Raises ArchiveUnavailable when the
    archive cannot be listed (a new node cannot be told apart from a lost hot tier
    then). A hot tier that passed the check is never checked again: a node whose
    datasets were all deleted restarts as it is."""
    if store.list_datasets():
        return  # a rebuild that committed before its start was stopped
    try:
        holds_objects = store.archive_holds_objects()
    except ArchiveUnavailable as exc:
        raise ArchiveUnavailable(
            f"{exc}; a new hot tier is checked against the archive before the node serves "
            "(and rebuilt from it with --rebuild-from-archive): nothing was changed, start "
            "the node again once the archive answers"
        ) from None
    if not holds_objects:
        return  # a new node over an empty archive
    if not rebuild:
        raise FailedPrecondition(
            "the hot tier is new, but the archive holds objects: the hot tier was lost "
            "(or this node was given another node's archive). Start with "
            "--rebuild-from-archive to rebuild the catalog from the archive, or give "
            "this node an archive --bucket/--prefix of its own"
        )
    skipped: dict[str, str] = {}

    def partial(unbelieved: Mapping[str, str], datasets: int) -> None:
        # Objects at keys tierstore never writes are someone else's: warned of, no more.
        ours = {key: why for key, why in unbelieved.items() if why != NOT_OURS}
        skipped.update(ours)
        # Believing nothing is refused below, with its own advice (--reseal-archive).
        if ours and datasets and not accept_partial:
            raise FailedPrecondition(_partial_rebuild_refused(ours))

    recovered = store.rebuild_from_archive(believe_unsealed=lost_keys, on_skipped=partial)
    datasets = len(store.list_datasets())
    if not datasets:
        # An empty catalog served over an archive that holds objects would hide them
        # for good (and hand out their generation numbers again).
        raise FailedPrecondition(
            "the hot tier is new and the archive holds objects, but the rebuild believed "
            "none of them (the warnings above say why: sealed under master keys this node "
            "does not hold, or damaged); give the node the master key file the archive "
            "was written with, or an archive --bucket/--prefix of its own. If that key "
            "file is lost for good and no dataset is encrypted, add --reseal-archive: the "
            "archive's metadata is then believed as it is and sealed under the keys given now"
        )
    out.write(
        f"tierstore: the hot tier was new; rebuilt the catalog from the archive: "
        f"{recovered} shards of {datasets} datasets (read from the archive until promoted)\n"
    )
    if skipped:
        out.write(
            f"tierstore: left out of the rebuild (--accept-partial-rebuild): "
            f"{len(skipped)} archive objects not believed, of datasets "
            f"{_names(_datasets_of(skipped))}; the log names each. Make no dataset of "
            "those names: a later rebuild would take their archived shards for an "
            "earlier namesake's and delete them\n"
        )
    out.flush()


def _partial_rebuild_refused(unbelieved: Mapping[str, str]) -> str:
    return (
        f"the rebuild would leave out {len(unbelieved)} archive objects it does not "
        f"believe, of datasets {_names(_datasets_of(unbelieved))} (the warnings above "
        "name each and why: sealed under master keys this node does not hold, such as "
        "a key file copied before the last rotation, or damaged); nothing was rebuilt. "
        "Give the node the master key file the archive was last written with and start "
        "again; to rebuild without them, add --accept-partial-rebuild (their datasets "
        "or shards are then missing, and a dataset made again under a missing name has "
        "the archived shards of the old one deleted by a later rebuild)"
    )


def _datasets_of(keys: Iterable[str]) -> list[str]:
    """The datasets whose archive objects ``keys`` are (each key is DATASET/OBJECT)."""
    return sorted({key.rpartition("/")[0] for key in keys})


def _names(names: list[str], shown: int = 5) -> str:
    listed = ", ".join(repr(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
