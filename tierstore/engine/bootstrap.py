"""Building a :class:`Store` from :class:`EngineSettings`: its archive tier and its keyring."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from tierstore.config import ArchiveSettings, EngineSettings
from tierstore.crypto import LocalKeyring, MasterKeyProvider
from tierstore.engine.allocator import tune_allocator
from tierstore.engine.claim import StoreClaim
from tierstore.engine.records import is_generation_object_key
from tierstore.engine.store import Store, hot_tier_dir
from tierstore.errors import ArchiveUnavailable, InvalidArgument
from tierstore.tiers.base import Tier
from tierstore.tiers.timed import Observer, TimedTier

if TYPE_CHECKING:
    from tierstore.tiers.s3 import S3Tier
    from tierstore.tiers.s3_connection import S3Settings

__all__ = ["archive_s3_settings", "keyring_from_settings", "open_store"]

log = logging.getLogger(__name__)


def keyring_from_settings(settings: EngineSettings) -> MasterKeyProvider | None:
    """The master keys named by the settings (key file, else base64 key), or ``None``."""
    if settings.master_key_file is not None:
        return LocalKeyring.from_file(settings.master_key_file)
    if settings.master_key_b64:
        return LocalKeyring.from_base64(settings.master_key_b64)
    return None


def open_store(
    settings: EngineSettings,
    archive: Tier | None = None,
    observe_archive: Observer | None = None,
    *,
    keyring: MasterKeyProvider | None = None,
    start_mover: bool = True,
    prepare_archive: bool = True,
) -> Store:
    """Open the store of ``settings``; the archive is S3 at ``settings.archive`` unless given.

    ``observe_archive`` is called with (operation, seconds, failed) after every archive
    request (for metrics). ``keyring``, given, is used instead of the master keys the
    settings name. Without ``start_mover`` the caller starts the background work
    (:meth:`Store.start_background`), and the uploads an earlier run left in the
    archive are aborted by :meth:`Mover.abort_left_behind_now
    <tierstore.engine.mover.Mover.abort_left_behind_now>`, or once the mover runs.
    Without ``prepare_archive`` the S3 archive is not called at all (its bucket made,
    uploads left behind aborted): for a caller that found it unreachable already. Also
    tunes the process's allocator for multi-MiB frames (:mod:`.allocator`).
    Raises InvalidArgument when no archive endpoint is configured, ArchiveUnavailable
    when the archive cannot be reached and there is no hot tier yet (with one, the
    store opens and its mover retries the archive).
    """
    # First: an open_store on a directory whose store is open (a running node's) must
    # not touch its archive either (the start-up below aborts uploads in flight).
    claim = StoreClaim(settings.data_dir)
    try:
        return _open_claimed(
            settings, archive, observe_archive, keyring, start_mover, prepare_archive, claim
        )
    except BaseException:
        claim.release()
        raise


def _open_claimed(
    settings: EngineSettings,
    archive: Tier | None,
    observe_archive: Observer | None,
    keyring: MasterKeyProvider | None,
    start_mover: bool,
    prepare_archive: bool,
    claim: StoreClaim,
) -> Store:
    if archive is None:
        # boto3 is heavy: import on use
        from tierstore.tiers.s3 import S3Tier
        from tierstore.tiers.s3_connection import DEFAULT_POOL_CONNECTIONS

        if not settings.archive.endpoint_url:
            raise InvalidArgument("no archive endpoint configured (archive.endpoint_url)")
        tier = S3Tier(
            archive_s3_settings(
                settings.archive,
                upload_parallelism=settings.mover_threads,
                read_timeout_s=settings.archive_read_timeout_s,
                retry_budget_s=settings.archive_retry_budget_s,
                # Room for a cold read's ranged GETs and an upload's parts at once.
                max_pool_connections=max(
                    DEFAULT_POOL_CONNECTIONS,
                    settings.cold_read_parallelism + settings.mover_threads + 4,
                ),
            )
        )
        try:
            # Not asked at all when the caller found it unreachable: the mover aborts
            # what an earlier run left once it answers.
            left_behind = (
                _prepare_archive(tier, settings, abort_now=start_mover) if prepare_archive else True
            )
            store = _store_over(settings, tier, observe_archive, keyring, start_mover, claim)
        except BaseException:
            tier.close()  # its connection pool: a start may be tried again
            raise
        if left_behind:
            # Once the archive answers (no upload of this store is in flight then).
            store.mover.abort_left_behind_later(partial(_abort_uploads_left_behind, tier))
        return store
    return _store_over(settings, archive, observe_archive, keyring, start_mover, claim)


def archive_s3_settings(config: ArchiveSettings, **tuning: Any) -> S3Settings:
    """The S3 settings of archive ``config``, with ``tuning`` (S3Settings' other
    fields)."""
    from tierstore.tiers.s3_connection import S3Settings

    return S3Settings(
        endpoint_url=config.endpoint_url,
        bucket=config.bucket,
        prefix=config.prefix,
        access_key_id=config.access_key_id,
        secret_access_key=config.secret_access_key,
        region=config.region,
        **tuning,
    )


def _prepare_archive(tier: S3Tier, settings: EngineSettings, *, abort_now: bool) -> bool:
    """Make sure the bucket is there, and (``abort_now``) abort the uploads an earlier
    run left behind; returns whether those are left for the mover, which aborts them
    once it runs and the archive answers (not ``abort_now``: a caller that checks the
    archive first, as ``tierstore serve`` checks its claim, for an archive claimed by
    another node holds uploads in flight of that node's; or the archive failed).
    Raises ArchiveUnavailable when the archive cannot be reached and there is no hot
    tier yet (a new node has nothing to serve without it)."""
    try:
        tier.ensure_bucket()
    except ArchiveUnavailable as exc:
        if not (hot_tier_dir(settings.data_dir) / "data.mdb").exists():
            raise
        # A node's own hot tier serves without the archive; its mover retries.
        log.warning("the archive is unreachable; serving the hot tier: %s", exc)
        return True
    if not abort_now:
        return True
    try:
        _abort_uploads_left_behind(tier)
    except ArchiveUnavailable as exc:
        log.warning("could not abort the archive's incomplete uploads yet: %s", exc)
        return True
    return False


def _store_over(
    settings: EngineSettings,
    archive: Tier,
    observe_archive: Observer | None,
    keyring: MasterKeyProvider | None,
    start_mover: bool,
    claim: StoreClaim,
) -> Store:
    if observe_archive is not None:
        archive = TimedTier(archive, observe_archive)
    tune_allocator(settings.max_frame_bytes)
    if keyring is None:
        keyring = keyring_from_settings(settings)
    return Store(settings, archive, keyring, start_mover=start_mover, claim=claim)


def _abort_uploads_left_behind(tier: S3Tier) -> None:
    """Abort the multipart uploads a killed node left under its prefix (call it while no
    upload of this store is in flight). Raises ArchiveUnavailable."""
    aborted = tier.abort_incomplete_uploads(is_generation_object_key)
    if aborted:
        log.info("aborted %d incomplete uploads left in the archive by an earlier run", aborted)
