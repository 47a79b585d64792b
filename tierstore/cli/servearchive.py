"""The archive ``tierstore serve`` uses: the one its settings and flags name, or the
embedded SeaweedFS it starts under ``<data-dir>/archive`` when none is named."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tierstore.cli.startcheck import through_embedded_restarts
from tierstore.config import ArchiveSettings

if TYPE_CHECKING:
    from tierstore.cli.serve import ServeOptions
    from tierstore.tiers.seaweedfs import SeaweedServer

__all__ = ["archive_with_flags", "node_archive", "warn_of_an_open_prefix"]

log = logging.getLogger(__name__)


def node_archive(
    options: ServeOptions,
    configured: ArchiveSettings,
    data_dir: Path,
    cleanup: ExitStack,
    stopping: threading.Event,
) -> tuple[ArchiveSettings, SeaweedServer | None]:
    """The archive this node uses: :func:`archive_with_flags`. With no endpoint named
    anywhere, the embedded archive, started here (under ``<data-dir>/archive``, stopped
    by ``cleanup``), on the bucket and prefix asked for, and started again should it
    exit before ``stopping`` is set; returned too (None for an external archive)."""
    archive = archive_with_flags(options, configured)
    if archive.endpoint_url:
        return archive, None
    # Only for the embedded archive.
    from tierstore.tiers.seaweedfs import SeaweedServer
    from tierstore.tiers.seaweedkeeper import SeaweedKeeper

    embedded = cleanup.enter_context(SeaweedServer(data_dir / "archive"))
    # Said at every start (a review found nothing said it where an operator looks):
    # SeaweedFS checks credentials on its S3 port only.
    log.warning(
        "the embedded archive answers any process of this host on its master, volume "
        "and filer ports (127.0.0.1, without credentials; only its S3 port checks the "
        "node's key): another user of the host could read the archived frames of "
        "plaintext datasets, and change or delete archive objects. On a host shared "
        "with other users, give the node an external archive (--s3-endpoint); README, "
        "Security model"
    )
    # Stopped before the server is (the stack unwinds in reverse).
    cleanup.callback(SeaweedKeeper(embedded, until=stopping).start().stop)
    # (Its settings name its port, which it answers on only while it runs.)
    s3 = through_embedded_restarts(
        lambda: embedded.s3_settings(archive.bucket, archive.prefix), embedded, stopping
    )
    return ArchiveSettings(
        endpoint_url=s3.endpoint_url,
        bucket=s3.bucket,
        prefix=s3.prefix,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
    ), embedded


def archive_with_flags(options: ServeOptions, configured: ArchiveSettings) -> ArchiveSettings:
    """``configured`` (the settings file's ``[archive]``, then ``TIERSTORE_ARCHIVE_*``
    variables), then the flags given (README "Configuration")."""
    flags = {
        "endpoint_url": options.s3_endpoint,
        "bucket": options.bucket,
        "access_key_id": options.s3_access_key,
        "secret_access_key": options.s3_secret_key,
    }
    given = {name: value for name, value in flags.items() if value}
    if options.prefix is not None:  # "" too: it clears the settings file's prefix
        given["prefix"] = options.prefix
    return replace(configured, **given)


def warn_of_an_open_prefix(prefix: str) -> None:
    """Warn of an archive prefix that does not end in "/": keys are the prefix and the
    dataset's name joined as they are, so "p1" stores dataset "wb" under "p1wb/", and
    nodes on prefixes "node" and "node1" share the keys of datasets "1x" and "x". Not
    refused, nor changed: a node's archive already under such a prefix stays there."""
    if prefix and not prefix.endswith("/"):
        log.warning(
            "archive prefix %r does not end in '/': objects are stored as %r + the dataset's "
            "name (%r for dataset 'ds'), so another node on a prefix that starts the same "
            "may share keys with it; a new node should take %r",
            prefix,
            prefix,
            f"{prefix}ds/",
            f"{prefix}/",
        )
