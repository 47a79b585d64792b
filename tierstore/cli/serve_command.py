"""``tierstore serve``: a node's options, checked, handed to :mod:`tierstore.cli.serve`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from tierstore import errors
from tierstore.cli.output import fail, run_or_fail
from tierstore.server.places import CALLER_SHARE

__all__ = ["serve"]

log = logging.getLogger(__name__)


_LOG_LEVELS = ("debug", "info", "warning", "error")


def serve(
    context: typer.Context,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="where the node keeps everything [default: data_dir of the settings "
            "file or TIERSTORE_DATA_DIR, else ./tierstore-data]",
            show_default=False,
        ),
    ] = None,
    listen: Annotated[str, typer.Option(help="API address HOST:PORT")] = "127.0.0.1:7443",
    health_listen: Annotated[str, typer.Option(help="plaintext health port ('' = off)")] = (
        "127.0.0.1:7444"
    ),
    metrics_listen: Annotated[str, typer.Option(help="Prometheus /metrics ('' = off)")] = (
        "127.0.0.1:7445"
    ),
    metrics_dataset_labels: Annotated[
        bool,
        typer.Option(
            "--metrics-dataset-labels",
            help="label hits and misses by dataset (names visible to scrapers)",
        ),
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="plaintext API (loopback only, on a host of its own)")
    ] = False,
    require_client_cert: Annotated[
        bool, typer.Option("--require-client-cert", help="mutual TLS")
    ] = False,
    hostname: Annotated[list[str] | None, typer.Option(help="extra certificate names")] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(help="external S3 archive URL (none: the embedded archive)"),
    ] = None,
    bucket: Annotated[
        str | None, typer.Option(help="archive bucket (default: tierstore)", show_default=False)
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help='archive key prefix ("" for none, over a settings file)')
    ] = None,
    s3_access_key: Annotated[str, typer.Option(envvar="TIERSTORE_S3_ACCESS_KEY")] = "",
    s3_secret_key: Annotated[str, typer.Option(envvar="TIERSTORE_S3_SECRET_KEY")] = "",
    # (str: a Path would make "" the current directory)
    master_key_file: Annotated[
        str | None, typer.Option(metavar="PATH", help="master key file")
    ] = None,
    config: Annotated[
        str | None, typer.Option(metavar="PATH", help="engine settings TOML file")
    ] = None,
    hot_capacity: Annotated[int | None, typer.Option(help="hot tier bytes")] = None,
    no_local_reads: Annotated[
        bool,
        typer.Option("--no-local-reads", help="no reader on this host reads the hot tier in place"),
    ] = False,
    local_grant_ttl: Annotated[
        float, typer.Option(help="seconds a local-read grant holds (revocation delay)")
    ] = 60.0,
    max_connections: Annotated[
        int,
        typer.Option(
            min=0,
            max=1 << 20,
            help="connections open at once; past it new ones are refused "
            "(0: half the open-file limit, from 16 to 4096)",
        ),
    ] = 0,
    caller_share: Annotated[
        float,
        typer.Option(
            help="the share of the node's workers, shard streams and archive calls one "
            "caller (principal) may hold, above 0 and at most 1 (1: none, for a node of one user)"
        ),
    ] = CALLER_SHARE,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    reseal_archive: Annotated[
        bool,
        typer.Option(
            "--reseal-archive",
            help="the master key file was lost for good and no dataset is encrypted: seal "
            "the archive's metadata under the keys given now (refused while the node holds "
            "encrypted shards); in a rebuild from the archive, the rebuild believes the "
            "archive's metadata without its seals (refused if any of it is encrypted)",
        ),
    ] = False,
    archive_lost: Annotated[
        bool,
        typer.Option(
            "--archive-lost",
            help="the archive is lost for good (or replaced by an empty one): start anyway, "
            "archive again what the hot tier holds and drop the shards only the lost archive "
            "held (each named in the log); ignored, with a warning, where the archive holds "
            "the node's datasets",
        ),
    ] = False,
    rebuild_from_archive: Annotated[
        bool,
        typer.Option(
            "--rebuild-from-archive",
            help="if this start makes a new hot tier while the archive holds objects (a "
            "lost hot tier), rebuild the catalog from the archive instead of refusing to start",
        ),
    ] = False,
    new_admin_token: Annotated[
        bool,
        typer.Option(
            "--new-admin-token",
            help="write another admin token to admin.token in the data directory, replacing it, "
            "even though a live one exists (a node restored without its admin.token); the "
            "token the file held stays live until revoked; give it for one start only: each "
            "start with it makes one more",
        ),
    ] = False,
    accept_partial_rebuild: Annotated[
        bool,
        typer.Option(
            "--accept-partial-rebuild",
            help="in a rebuild from the archive: rebuild even when some archive objects are "
            "not believed (damaged, or sealed under keys not given), leaving their datasets "
            "or shards out; without it such a rebuild is refused, with nothing changed",
        ),
    ] = False,
) -> None:
    """Run a node: hot tier, archive (embedded SeaweedFS by default), TLS, tokens."""
    from tierstore.cli.logs import configure_logging, errors_as_json
    from tierstore.cli.serve import ServeOptions
    from tierstore.cli.serve import serve as run

    if data_dir is not None and not data_dir.strip():  # an unset variable in a script
        raise fail(errors.InvalidArgument("--data-dir is empty; give a directory"))
    for option, given in (("--config", config), ("--master-key-file", master_key_file)):
        if given == "":  # likewise: not the working directory
            raise fail(errors.InvalidArgument(f"{option} is empty; give a file, or leave it out"))
    if s3_endpoint is not None and not s3_endpoint.strip():  # not "no archive named"
        raise fail(
            errors.InvalidArgument(
                "--s3-endpoint is empty; give the archive's URL, or leave the flag out for "
                "the embedded archive"
            )
        )
    if bucket is not None and not bucket.strip():  # "$BUCKET" unset: not the default one
        raise fail(
            errors.InvalidArgument(
                "--bucket is empty; name the archive's bucket, or leave the flag out for "
                "the default (tierstore)"
            )
        )
    _refuse_empty_archive_keys(context)
    if log_level.lower() not in _LOG_LEVELS:
        raise fail(
            errors.InvalidArgument(
                f"--log-level must be one of {', '.join(_LOG_LEVELS)}, not {log_level!r}"
            )
        )
    configure_logging(log_level)
    if _source_of(context, "s3_secret_key") == "COMMANDLINE":
        log.warning(
            "the archive's secret key was given on the command line, where every user of "
            "this host reads it (ps, /proc/PID/cmdline) for as long as the node runs: give "
            "it in TIERSTORE_S3_SECRET_KEY or a settings file's [archive] secret_access_key"
        )
    options = ServeOptions(
        data_dir=Path(data_dir) if data_dir is not None else None,
        listen=listen,
        health_listen=health_listen,
        metrics_listen=metrics_listen,
        metrics_dataset_labels=metrics_dataset_labels,
        insecure=insecure,
        require_client_cert=require_client_cert,
        hostnames=tuple(hostname or ()),
        s3_endpoint=s3_endpoint or "",
        bucket=bucket or "",
        prefix=prefix,
        s3_access_key=s3_access_key,
        s3_secret_key=s3_secret_key,
        master_key_file=None if master_key_file is None else Path(master_key_file),
        config_file=None if config is None else Path(config),
        hot_capacity_bytes=hot_capacity,
        local_reads=not no_local_reads,
        local_grant_ttl_s=local_grant_ttl,
        max_connections=max_connections,
        caller_share=caller_share,
        rebuild_from_archive=rebuild_from_archive,
        accept_partial_rebuild=accept_partial_rebuild,
        new_admin_token=new_admin_token,
        reseal_archive=reseal_archive,
        archive_lost=archive_lost,
    )
    with errors_as_json():
        code = run_or_fail(lambda: run(options, sys.stdout))
    raise typer.Exit(code)


def _source_of(context: typer.Context, parameter: str) -> str:
    """Where serve's ``parameter`` came from: COMMANDLINE, ENVIRONMENT or DEFAULT."""
    source = context.get_parameter_source(parameter)
    return "DEFAULT" if source is None else source.name


def _refuse_empty_archive_keys(context: typer.Context) -> None:
    """Refuse an archive key given empty (an unset variable in a script): the node
    signed with empty keys, or the settings file's were taken without a word."""
    for parameter, flag in (
        ("s3_access_key", "--s3-access-key"),
        ("s3_secret_key", "--s3-secret-key"),
    ):
        given = _source_of(context, parameter) in ("COMMANDLINE", "ENVIRONMENT")
        if given and not str(context.params[parameter]).strip():
            raise fail(errors.InvalidArgument(f"{flag} is empty; give the key"))
